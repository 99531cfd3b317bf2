"""Writes the monitor read models (``proj.monitors``, ``proj.monitor_ticks``) inside the projector's transaction.

The folding itself is the pure reducer in ``baton.events.projections.monitors``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from baton.events.envelope import StoredEvent
from baton.events.projections import monitors as monitor_projection
from baton.events.schema import monitor_ticks, monitors
from baton.events.stream_ids import monitor_of


async def project_monitors(conn: AsyncConnection, streams: list[list[StoredEvent]]) -> None:
    """Fold a batch's monitor and monitor-ticks events into their monitors' rows and the tick history."""
    by_monitor: dict[tuple[str, str], list[StoredEvent]] = {}
    for stream_events in streams:
        for event in stream_events:
            by_monitor.setdefault(monitor_of(event.stream_id), []).append(event)
    if not by_monitor:
        return
    keys = list(by_monitor)
    existing = {
        (row.tenant, row.name): row.doc
        for row in await conn.execute(
            select(monitors.c.tenant, monitors.c.name, monitors.c.doc).where(
                tuple_(monitors.c.tenant, monitors.c.name).in_(keys)
            )
        )
    }
    rows: list[dict[str, Any]] = []
    tick_rows: list[dict[str, Any]] = []
    for (tenant, name), events in by_monitor.items():
        doc = existing.get((tenant, name)) or monitor_projection.initial(tenant, name)
        for event in sorted(events, key=lambda e: e.position):
            doc = monitor_projection.apply_monitor(doc, event)
            if event.type == "monitor_ticked":
                entry = monitor_projection.tick_summary(dict(event.data), event.stream_version)
                tick_rows.append({"tenant": tenant, "name": name, "seq": event.stream_version,
                                  "at": datetime.fromisoformat(entry["at"]), "decision": entry["decision"],
                                  "doc": entry})
        rows.append({
            "tenant": tenant, "name": name, "version": doc["version"], "type": doc["type"],
            "pipeline": doc["pipeline"], "enabled": doc["enabled"], "deleted": doc["deleted"],
            "updated_at": datetime.fromisoformat(doc["updated_at"] or events[-1].recorded_at.isoformat()),
            "doc": doc,
        })
    stmt = pg_insert(monitors)
    updates = {c.name: stmt.excluded[c.name] for c in monitors.columns if c.name not in ("tenant", "name")}
    await conn.execute(stmt.on_conflict_do_update(index_elements=["tenant", "name"], set_=updates), rows)
    if tick_rows:
        await conn.execute(pg_insert(monitor_ticks).on_conflict_do_nothing(), tick_rows)
