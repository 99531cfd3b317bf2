"""The timer table (``scheduler_timers``, migration 4) as named queries over one connection.

States: armed (``fired_at IS NULL AND NOT canceled``), fired, canceled. Every write is
idempotent, and a set and a cancel for one timer commute: whichever order they arrive in
(two replicas may process them out of order), the timer ends canceled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from baton.events.timers import TimerCancel, TimerRequest

# A duplicate set is a no-op, and so is a set after a cancel (the tombstone stays).
ARM = text(
    "INSERT INTO scheduler_timers (timer_id, tenant, due_at, payload)"
    " VALUES (:timer_id, :tenant, :due_at, CAST(:payload AS jsonb))"
    " ON CONFLICT (timer_id) DO NOTHING"
)
# A cancel before its set leaves a tombstone; a cancel after the fire changes nothing.
CANCEL = text(
    "INSERT INTO scheduler_timers (timer_id, canceled) VALUES (:timer_id, true)"
    " ON CONFLICT (timer_id) DO UPDATE SET canceled = true"
    " WHERE scheduler_timers.fired_at IS NULL AND NOT scheduler_timers.canceled"
)
# Claim and mark in one statement. SKIP LOCKED: rows another replica is firing right now are
# left to it. The mark commits only after the caller published the fires (same transaction),
# so no two replicas publish one timer, and a crash before the commit leaves the rows armed
# (the fire then repeats with the same msg id).
CLAIM_DUE = text(
    "UPDATE scheduler_timers SET fired_at = :fired_at WHERE timer_id IN ("
    "  SELECT timer_id FROM scheduler_timers"
    "  WHERE fired_at IS NULL AND NOT canceled AND due_at <= :now"
    "  ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED)"
    " RETURNING timer_id, tenant, due_at, payload"
)
NEAREST_DUE = text(
    "SELECT timer_id, due_at FROM scheduler_timers"
    " WHERE fired_at IS NULL AND NOT canceled AND due_at <= :until"
    " ORDER BY due_at LIMIT :limit"
)
PURGE_DONE = text(
    "DELETE FROM scheduler_timers"
    " WHERE (fired_at IS NOT NULL OR canceled) AND coalesce(fired_at, created_at) < :cutoff"
)
COUNT_ARMED = text("SELECT count(*) FROM scheduler_timers WHERE fired_at IS NULL AND NOT canceled")


@dataclass(frozen=True)
class DueTimer:
    """A claimed timer, ready to be fired."""

    timer_id: str
    tenant: str
    due_at: datetime
    payload: dict[str, Any]


async def store_requests(conn: AsyncConnection, requests: Sequence[TimerRequest | TimerCancel]) -> None:
    """Record sets and cancels (in any order: the outcome does not depend on it)."""
    sets = [
        {"timer_id": r.timer_id, "tenant": r.tenant, "due_at": r.due_at, "payload": json.dumps(r.payload)}
        for r in requests
        if isinstance(r, TimerRequest)
    ]
    cancels = [{"timer_id": r.timer_id} for r in requests if isinstance(r, TimerCancel)]
    if sets:
        await conn.execute(ARM, sets)
    if cancels:
        await conn.execute(CANCEL, cancels)


async def claim_due(conn: AsyncConnection, now: datetime, fired_at: datetime, limit: int) -> list[DueTimer]:
    """Mark up to ``limit`` armed timers due at or before ``now`` as fired, earliest first.

    The rows stay locked until the transaction ends: commit once the fires are published,
    roll back to leave them armed. Fired rows are kept, so a late duplicate set stays a no-op.
    """
    rows = (await conn.execute(CLAIM_DUE, {"now": now, "fired_at": fired_at, "limit": limit})).all()
    timers = [DueTimer(r.timer_id, r.tenant, r.due_at, r.payload or {}) for r in rows]
    return sorted(timers, key=lambda t: t.due_at)


async def nearest_due(conn: AsyncConnection, until: datetime, limit: int) -> list[tuple[str, datetime]]:
    """The armed timers due before ``until``, earliest first: what the in-memory plan needs."""
    rows = (await conn.execute(NEAREST_DUE, {"until": until, "limit": limit})).all()
    return [(r.timer_id, r.due_at) for r in rows]


async def purge_done(conn: AsyncConnection, cutoff: datetime) -> int:
    """Delete fired timers and tombstones older than ``cutoff``; returns how many."""
    result = await conn.execute(PURGE_DONE, {"cutoff": cutoff})
    return int(getattr(result, "rowcount", 0) or 0)


async def count_armed(conn: AsyncConnection) -> int:
    """How many timers wait to fire."""
    return int((await conn.execute(COUNT_ARMED)).scalar_one())
