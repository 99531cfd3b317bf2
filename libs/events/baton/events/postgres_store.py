"""The PostgreSQL event store (SQLAlchemy Core + psycopg 3).

Commit order equals position order. Identity values are handed out before commit,
so two concurrent writers could commit positions 11 then 10, and a reader tailing
``position > 10`` would skip 10 forever. Every append therefore takes
``LOCK TABLE events IN EXCLUSIVE MODE`` first: writers queue on the lock, a writer
draws its positions and commits before the next one draws, and plain readers
(ACCESS SHARE) are never blocked. Group commit keeps that serialisation cheap:
one transaction carries many streams' events, written with COPY.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from baton.events.envelope import EventMetadata, StoredEvent, stream_type_of
from baton.events.schema import events
from baton.events.store import (
    AppendRequest,
    EventStoreError,
    StoreUnavailable,
    UnitResult,
    plan_units,
)

COPY_EVENTS = (
    "COPY events (event_id, stream_id, stream_type, stream_version, tenant, type,"
    " schema_version, data, metadata, recorded_at) FROM STDIN"
)
CURRENT_VERSIONS = text(
    "SELECT stream_id, max(stream_version) FROM events WHERE stream_id = ANY(:ids) GROUP BY stream_id"
)
COLUMNS = (
    events.c.position,
    events.c.event_id,
    events.c.stream_id,
    events.c.stream_type,
    events.c.stream_version,
    events.c.tenant,
    events.c.type,
    events.c.schema_version,
    events.c.data,
    events.c.metadata,
    events.c.recorded_at,
)


class PostgresEventStore:
    """Event store on one PostgreSQL database; ``notify_channel`` wakes tailing readers."""

    def __init__(self, engine: AsyncEngine, notify_channel: str | None = None) -> None:
        self._engine = engine
        self._notify_channel = notify_channel

    @property
    def engine(self) -> AsyncEngine:
        """The engine the store writes through (shared with projectors and checkpoints)."""
        return self._engine

    async def append_units(self, units: Sequence[Sequence[AppendRequest]]) -> list[UnitResult]:
        """Append several all-or-nothing units in one transaction (see ``EventStore.append_units``)."""
        if not units:
            return []
        try:
            async with self._engine.begin() as conn:
                return await self._append_locked(conn, units)
        except IntegrityError as exc:
            raise EventStoreError(f"append violated a constraint: {exc.orig}") from exc
        except (OperationalError, InterfaceError) as exc:
            raise StoreUnavailable(f"event store unavailable: {exc.orig}") from exc

    async def _append_locked(
        self, conn: AsyncConnection, units: Sequence[Sequence[AppendRequest]]
    ) -> list[UnitResult]:
        await conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))
        ids = list({r.stream_id for unit in units for r in unit})
        versions: dict[str, int] = {
            row[0]: row[1] for row in await conn.execute(CURRENT_VERSIONS, {"ids": ids})
        }
        outcomes, accepted = plan_units(units, versions)
        rows: list[tuple[Any, ...]] = []
        for request, base in accepted:
            stream_type = stream_type_of(request.stream_id)
            for offset, event in enumerate(request.events, start=1):
                rows.append(
                    (
                        event.event_id,
                        request.stream_id,
                        stream_type,
                        base + offset,
                        request.tenant,
                        event.type,
                        event.schema_version,
                        json.dumps(event.data, separators=(",", ":")),
                        event.metadata.model_dump_json(exclude_none=True),
                        event.recorded_at,
                    )
                )
        if rows:
            raw = await conn.get_raw_connection()
            driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
            async with driver.cursor() as cursor, cursor.copy(COPY_EVENTS) as copy:
                for row in rows:
                    await copy.write_row(row)
            if self._notify_channel:
                await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": self._notify_channel})
        return outcomes

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        """Events of one stream in version order."""
        query = (
            select(*COLUMNS)
            .where(events.c.stream_id == stream_id, events.c.stream_version >= from_version)
            .order_by(events.c.stream_version)
        )
        return await self._fetch(query)

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Committed events after a position, in commit (= position) order."""
        query = (
            select(*COLUMNS)
            .where(events.c.position > after_position)
            .order_by(events.c.position)
            .limit(limit)
        )
        return await self._fetch(query)

    async def head_position(self) -> int:
        """Highest committed position (0 when empty)."""
        try:
            async with self._engine.connect() as conn:
                value = (await conn.execute(text("SELECT coalesce(max(position), 0) FROM events"))).scalar()
        except DBAPIError as exc:
            raise StoreUnavailable(f"event store unavailable: {exc.orig}") from exc
        return int(value or 0)

    async def _fetch(self, query: Any) -> list[StoredEvent]:
        try:
            async with self._engine.connect() as conn:
                result = await conn.execute(query)
                return [row_to_event(row) for row in result]
        except DBAPIError as exc:
            raise StoreUnavailable(f"event store unavailable: {exc.orig}") from exc


def row_to_event(row: Any) -> StoredEvent:
    """Build a StoredEvent from a trusted row without re-validating it (reads are hot)."""
    return StoredEvent.model_construct(
        position=row[0],
        event_id=row[1] if isinstance(row[1], uuid.UUID) else uuid.UUID(str(row[1])),
        stream_id=row[2],
        stream_type=row[3],
        stream_version=row[4],
        tenant=row[5],
        type=row[6],
        schema_version=row[7],
        data=row[8],
        metadata=EventMetadata.model_construct(**(row[9] or {})),
        recorded_at=row[10],
    )
