"""Monitors in the API: read-model queries, and carrying definitions to the monitor service's KV bucket.

Like pipelines, the event store is the source of truth and the bucket a cache of each
monitor's newest version; a deleted monitor's key is removed, and the start-up heal puts
back what a crash between append and put left out (and removes what it left in).
"""

from __future__ import annotations

import logging
from typing import Any

from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.api.definitions import publish_definition, stored_number
from baton.events.catalogue import upcast
from baton.events.postgres_store import COLUMNS, row_to_event
from baton.events.schema import events, monitor_ticks, monitors
from baton.events.subjects import Subjects

log = logging.getLogger(__name__)


async def publish_monitor(
    kv: KeyValue, subjects: Subjects, tenant: str, name: str, version: int, definition: dict[str, Any],
    created_at: str,
) -> bool:
    """Put a monitor version under ``monitor.<tenant>.<name>`` (never over a newer one)."""
    return await publish_definition(
        kv, subjects, tenant, name, version, definition, kind="monitor", extra={"created_at": created_at}
    )


async def unpublish_monitor(kv: KeyValue, subjects: Subjects, tenant: str, name: str, version: int) -> bool:
    """Delete the monitor's key unless it holds a version newer than the deleted one; True if deleted."""
    key = subjects.definition_key("monitor", tenant, name)
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, NotFoundError):
        return False
    if stored_number(entry.value, "version") > version:
        return False
    await kv.delete(key)
    return True


async def republish_all_monitors(engine: AsyncEngine, kv: KeyValue, subjects: Subjects) -> int:
    """Make the bucket match the store for every monitor; returns how many entries changed."""
    query = (
        select(*COLUMNS)
        .where(events.c.stream_type == "monitor", events.c.type.in_(("monitor_version_created", "monitor_deleted")))
        .order_by(events.c.stream_id, events.c.stream_version.desc())
        .ext(distinct_on(events.c.stream_id))
    )
    async with engine.connect() as conn:
        latest = [row_to_event(row) for row in await conn.execute(query)]
    changed = 0
    for event in latest:
        data = upcast(event.type, event.schema_version, dict(event.data))
        if event.type == "monitor_deleted":
            changed += await unpublish_monitor(kv, subjects, data["tenant"], data["name"], data["version"])
        elif await publish_monitor(kv, subjects, data["tenant"], data["name"], data["version"], data["definition"],
                                   event.recorded_at.isoformat()):
            changed += 1
    return changed


async def get_monitor(engine: AsyncEngine, tenant: str, name: str) -> dict[str, Any] | None:
    """The monitor document (definition, versions, cursor, last tick, counters), or None (also when deleted)."""
    query = select(monitors.c.doc).where(
        monitors.c.tenant == tenant, monitors.c.name == name, monitors.c.deleted.is_(False)
    )
    async with engine.connect() as conn:
        doc: dict[str, Any] | None = (await conn.execute(query)).scalar()
    return doc


async def list_monitors(engine: AsyncEngine, tenant: str) -> list[dict[str, Any]]:
    """The tenant's monitors (not deleted), by name."""
    query = (
        select(monitors.c.doc)
        .where(monitors.c.tenant == tenant, monitors.c.deleted.is_(False))
        .order_by(monitors.c.name)
    )
    async with engine.connect() as conn:
        return [row.doc for row in await conn.execute(query)]


async def list_ticks(
    engine: AsyncEngine, tenant: str, name: str, limit: int, before: int | None
) -> list[dict[str, Any]]:
    """A monitor's ticks newest first, strictly before sequence ``before``; at most ``limit``."""
    query = select(monitor_ticks.c.doc).where(monitor_ticks.c.tenant == tenant, monitor_ticks.c.name == name)
    if before is not None:
        query = query.where(monitor_ticks.c.seq < before)
    query = query.order_by(monitor_ticks.c.seq.desc()).limit(limit)
    async with engine.connect() as conn:
        return [row.doc for row in await conn.execute(query)]
