"""The projector: applies the pure reducers to the read-model tables, in position order.

Each batch runs in one transaction that first locks the projector's checkpoint row
(``FOR UPDATE``): two projector replicas queue instead of double-applying, and the
rows and the checkpoint commit together, so every event is applied exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from baton.events.catalogue import upcast
from baton.events.checkpoints import read_checkpoint, write_checkpoint
from baton.events.envelope import StoredEvent
from baton.events.monitor_read_models import project_monitors
from baton.events.postgres_store import COLUMNS, row_to_event
from baton.events.projections import pipelines as pipeline_projection
from baton.events.projections import run_summary, timeline
from baton.events.projections import schedules as schedule_projection
from baton.events.projections import triggers as trigger_projection
from baton.events.schema import PROJECTION_SCHEMA, PROJECTION_TABLES, events
from baton.events.schema import dead_letters as dead_letters_table
from baton.events.schema import pipelines as pipelines_table
from baton.events.schema import projection_checkpoint as checkpoint_table
from baton.events.schema import runs as runs_table
from baton.events.schema import schedule_history as schedule_history_table
from baton.events.schema import schedules as schedules_table
from baton.events.schema import step_runs as step_runs_table
from baton.events.schema import timeline as timeline_table
from baton.events.schema import triggers as triggers_table
from baton.events.stream_ids import run_id_of
from baton.events.waiting import run_when_woken

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "read-models"


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def projected_position(conn: AsyncConnection, lock: bool = False) -> int:
    """The checkpoint of the projection tables reachable through ``conn``'s schema map."""
    return await read_checkpoint(conn, checkpoint_table, CHECKPOINT_NAME, lock)


async def apply_batch(conn: AsyncConnection, batch_size: int = 1000) -> int:
    """Apply the next batch of events inside the caller's transaction; returns how many."""
    position = await projected_position(conn, lock=True)
    rows = await conn.execute(
        select(*COLUMNS).where(events.c.position > position).order_by(events.c.position).limit(batch_size)
    )
    batch = [row_to_event(row) for row in rows]
    if not batch:
        return 0
    by_kind: dict[str, dict[str, list[StoredEvent]]] = defaultdict(lambda: defaultdict(list))
    for event in batch:
        by_kind[event.stream_type][event.stream_id].append(event)
    await _project_runs(conn, by_kind.get("run", {}))
    await _project_triggers(conn, by_kind.get("trigger", {}))
    await _project_pipelines(conn, by_kind.get("pipeline", {}))
    await project_monitors(conn, [*by_kind.get("monitor", {}).values(), *by_kind.get("monitor_ticks", {}).values()])
    await _project_schedules(conn, by_kind.get("schedule", {}))
    await write_checkpoint(conn, checkpoint_table, CHECKPOINT_NAME, batch[-1].position)
    return len(batch)


async def _project_runs(conn: AsyncConnection, streams: dict[str, list[StoredEvent]]) -> None:
    if not streams:
        return
    run_ids = [run_id_of(stream_id) for stream_id in streams]
    docs = {
        row.run_id: row.doc
        for row in await conn.execute(
            select(runs_table.c.run_id, runs_table.c.doc).where(runs_table.c.run_id.in_(run_ids))
        )
    }
    seqs = {
        row[0]: row[1]
        for row in await conn.execute(
            select(timeline_table.c.run_id, func.max(timeline_table.c.seq))
            .where(timeline_table.c.run_id.in_(run_ids))
            .group_by(timeline_table.c.run_id)
        )
    }
    run_rows: list[dict[str, Any]] = []
    step_rows: list[dict[str, Any]] = []
    letter_rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for stream_id, stream_events in streams.items():
        run_id = run_id_of(stream_id)
        doc = docs.get(run_id) or run_summary.initial(run_id)
        seq = seqs.get(run_id, 0)
        for event in stream_events:
            doc = run_summary.apply(doc, event)
            seq += 1
            entry = timeline.entry_for(event, seq)
            entries.append(
                {"run_id": run_id, "seq": seq, "tenant": event.tenant, "at": event.recorded_at,
                 "kind": event.type, "doc": entry}
            )
        if "pipeline" not in doc:  # a stream without its run_created: nothing to show yet
            continue
        run_rows.append(
            {
                "run_id": run_id,
                "tenant": doc["tenant"],
                "pipeline": doc["pipeline"],
                "pipeline_version": doc["pipeline_version"],
                "status": doc["status"],
                "trigger_id": doc.get("trigger_id") or "",
                "created_at": _ts(doc["created_at"]),
                "updated_at": _ts(doc["updated_at"]),
                "finished_at": _ts(doc.get("finished_at")),
                "last_position": stream_events[-1].position,
                "doc": doc,
                "slice_key": doc.get("slice_key"),
                "is_replay": bool(doc.get("is_replay", False)),
            }
        )
        for step in run_summary.step_rows(doc):
            step_rows.append(
                {"run_id": run_id, "step": step["step"], "tenant": doc["tenant"],
                 "position_in_run": step.get("index", 0), "status": step["status"],
                 "attempt": step.get("attempt", 0), "doc": step}
            )
        for letter in run_summary.dead_letter_rows(doc):
            letter_rows.append(
                {"dead_letter_id": letter["dead_letter_id"], "tenant": letter["tenant"],
                 "pipeline": letter["pipeline"], "run_id": run_id, "step": letter["step"],
                 "reason": letter["reason"], "last_error": letter["last_error"], "attempts": letter["attempts"],
                 "dead_lettered_at": _ts(letter["dead_lettered_at"]), "redriven_at": _ts(letter["redriven_at"]),
                 "redriven_by": letter["redriven_by"], "doc": letter}
            )
    await _upsert(conn, runs_table, run_rows, ["run_id"])
    await _upsert(conn, step_runs_table, step_rows, ["run_id", "step"])
    await _upsert(conn, dead_letters_table, letter_rows, ["dead_letter_id"])
    if entries:
        await conn.execute(pg_insert(timeline_table).on_conflict_do_nothing(), entries)


async def _project_triggers(conn: AsyncConnection, streams: dict[str, list[StoredEvent]]) -> None:
    rows = []
    for stream_events in streams.values():
        doc: dict[str, Any] | None = None
        for event in stream_events:
            doc = trigger_projection.apply_trigger(doc, event)
        if doc is not None:
            rows.append(
                {"trigger_id": doc["trigger_id"], "tenant": doc.get("tenant"), "type": doc.get("type"),
                 "status": doc["status"], "received_at": _ts(doc["received_at"]), "doc": doc}
            )
    await _upsert(conn, triggers_table, rows, ["trigger_id"])


async def _project_pipelines(conn: AsyncConnection, streams: dict[str, list[StoredEvent]]) -> None:
    if not streams:
        return
    rows = []
    for stream_events in streams.values():
        first = stream_events[0]
        name = upcast(first.type, first.schema_version, dict(first.data)).get("name")
        existing = (
            await conn.execute(
                select(pipelines_table.c.doc).where(
                    pipelines_table.c.tenant == first.tenant, pipelines_table.c.name == name
                )
            )
        ).scalar()
        doc: dict[str, Any] | None = existing
        for event in stream_events:
            doc = pipeline_projection.apply_pipeline(doc, event)
        if doc is not None:
            rows.append(
                {"tenant": doc["tenant"], "name": doc["name"], "version": doc["version"],
                 "enabled": doc["enabled"], "trigger_type": doc["trigger_type"],
                 "updated_at": _ts(doc["updated_at"]), "doc": doc, "state": doc.get("state", "active")}
            )
    await _upsert(conn, pipelines_table, rows, ["tenant", "name"])


async def _project_schedules(conn: AsyncConnection, streams: dict[str, list[StoredEvent]]) -> None:
    if not streams:
        return
    rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for stream_id, stream_events in streams.items():
        tenant, _, pipeline = stream_id.removeprefix("schedule-").partition(".")
        existing = (
            await conn.execute(
                select(schedules_table.c.doc).where(
                    schedules_table.c.tenant == tenant, schedules_table.c.pipeline == pipeline
                )
            )
        ).scalar()
        doc: dict[str, Any] = existing or schedule_projection.initial(tenant, pipeline)
        for event in stream_events:
            doc = schedule_projection.apply_schedule(doc, event)
            if event.type in schedule_projection.HISTORY_TYPES:
                entries.append(
                    {"tenant": tenant, "pipeline": pipeline, "position": event.position, "at": event.recorded_at,
                     "kind": event.type, "doc": schedule_projection.history_entry(event)}
                )
        rows.append({"tenant": tenant, "pipeline": pipeline, "updated_at": stream_events[-1].recorded_at, "doc": doc})
    await _upsert(conn, schedules_table, rows, ["tenant", "pipeline"])
    if entries:
        await conn.execute(pg_insert(schedule_history_table).on_conflict_do_nothing(), entries)


async def _upsert(conn: AsyncConnection, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    stmt = pg_insert(table)
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    await conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates), rows)


class Projector:
    """Keeps the read models up to date: applies batches until caught up, then waits for a wake-up."""

    def __init__(self, engine: AsyncEngine, batch_size: int = 1000, schema: str = PROJECTION_SCHEMA) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._schema = schema

    async def catch_up(self) -> int:
        """Apply batches until no event is left; returns how many events were applied."""
        total = 0
        while True:
            async with self._engine.connect() as raw:
                conn = await raw.execution_options(schema_translate_map={PROJECTION_SCHEMA: self._schema})
                async with conn.begin():
                    applied = await apply_batch(conn, self._batch_size)
            total += applied
            if applied < self._batch_size:
                return total

    async def run(self, stop: asyncio.Event, wakeup: asyncio.Event, idle_seconds: float = 1.0) -> None:
        """Catch up whenever woken (or every ``idle_seconds``) until ``stop`` is set."""
        await run_when_woken("projector batch", self.catch_up, stop, wakeup, idle_seconds)


async def rebuild(engine: AsyncEngine, batch_size: int = 2000) -> int:
    """Rebuild every read model from position 0 beside the live tables, then swap them in.

    The twin schema is filled while the live projector keeps serving; the final
    catch-up and the swap happen under an exclusive lock on the live checkpoint, so
    no event is missed or applied twice across the switch.
    """
    twin = f"{PROJECTION_SCHEMA}_rebuild"
    live_tables = [table.name for table in PROJECTION_TABLES]
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {twin} CASCADE"))
        await conn.execute(text(f"CREATE SCHEMA {twin}"))
        for table in live_tables:
            await conn.execute(
                text(f"CREATE TABLE {twin}.{table} (LIKE {PROJECTION_SCHEMA}.{table} INCLUDING ALL)")
            )
    total = await Projector(engine, batch_size, schema=twin).catch_up()
    async with engine.connect() as raw, raw.begin():
        await raw.execute(
            text(f"LOCK TABLE {PROJECTION_SCHEMA}.projection_checkpoint IN ACCESS EXCLUSIVE MODE")
        )
        twin_conn = await raw.execution_options(schema_translate_map={PROJECTION_SCHEMA: twin})
        while (applied := await apply_batch(twin_conn, batch_size)) > 0:
            total += applied
        await raw.execute(text(f"ALTER SCHEMA {PROJECTION_SCHEMA} RENAME TO {PROJECTION_SCHEMA}_old"))
        await raw.execute(text(f"ALTER SCHEMA {twin} RENAME TO {PROJECTION_SCHEMA}"))
        await raw.execute(text(f"DROP SCHEMA {PROJECTION_SCHEMA}_old CASCADE"))
    log.info("rebuilt read models from %d events", total)
    return total
