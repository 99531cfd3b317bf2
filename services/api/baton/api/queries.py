"""Read-model queries behind the API (SQLAlchemy Core). Every query is scoped to one tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent
from baton.events.postgres_store import COLUMNS, row_to_event
from baton.events.projections.pipelines import OPERATOR_STATES
from baton.events.projector import CHECKPOINT_NAME
from baton.events.schema import (
    dead_letters,
    events,
    pipelines,
    projection_checkpoint,
    runs,
    step_runs,
    timeline,
    triggers,
)

RunCursor = tuple[datetime, str]

RUN_SUMMARY_COLUMNS = (
    runs.c.run_id,
    runs.c.pipeline,
    runs.c.pipeline_version,
    runs.c.status,
    runs.c.trigger_id,
    runs.c.created_at,
    runs.c.updated_at,
    runs.c.finished_at,
    runs.c.slice_key,
    runs.c.is_replay,
)


async def ping(engine: AsyncEngine) -> None:
    """Round-trip ``SELECT 1``; raises when PostgreSQL cannot answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def projected_checkpoint(engine: AsyncEngine) -> int:
    """Highest event position the read models include (0 before the projector's first batch)."""
    query = select(projection_checkpoint.c.position).where(projection_checkpoint.c.name == CHECKPOINT_NAME)
    async with engine.connect() as conn:
        value = (await conn.execute(query)).scalar()
    return int(value or 0)


async def list_pipelines(engine: AsyncEngine, tenant: str) -> list[dict[str, Any]]:
    """The tenant's pipelines with their current version, by name."""
    query = (
        select(
            pipelines.c.name,
            pipelines.c.version,
            pipelines.c.enabled,
            pipelines.c.trigger_type,
            pipelines.c.updated_at,
            pipelines.c.state,
        )
        .where(pipelines.c.tenant == tenant)
        .order_by(pipelines.c.name)
    )
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(query)]


async def get_pipeline(engine: AsyncEngine, tenant: str, name: str) -> dict[str, Any] | None:
    """The pipeline document (current definition and version history), or None."""
    query = select(pipelines.c.doc).where(pipelines.c.tenant == tenant, pipelines.c.name == name)
    async with engine.connect() as conn:
        doc: dict[str, Any] | None = (await conn.execute(query)).scalar()
    return doc


async def latest_pipeline_events(engine: AsyncEngine) -> list[dict[str, Any]]:
    """The newest ``pipeline_version_created`` payload of every pipeline, read from the event store.

    The store, not the projection, so a definition appended just before a crash is
    found even when the projector had not applied it yet.
    """
    query = (
        select(*COLUMNS)
        .where(events.c.stream_type == "pipeline", events.c.type == "pipeline_version_created")
        .order_by(events.c.stream_id, events.c.stream_version.desc())
        .ext(distinct_on(events.c.stream_id))
    )
    async with engine.connect() as conn:
        stored = [row_to_event(row) for row in await conn.execute(query)]
    return [upcast(event.type, event.schema_version, dict(event.data)) for event in stored]


async def latest_operator_events(engine: AsyncEngine) -> list[StoredEvent]:
    """The newest pause / resume / drain event of every pipeline that has one, from the event store."""
    query = (
        select(*COLUMNS)
        .where(events.c.stream_type == "pipeline", events.c.type.in_(OPERATOR_STATES))
        .order_by(events.c.stream_id, events.c.stream_version.desc())
        .ext(distinct_on(events.c.stream_id))
    )
    async with engine.connect() as conn:
        return [row_to_event(row) for row in await conn.execute(query)]


async def get_trigger(engine: AsyncEngine, tenant: str, trigger_id: str) -> dict[str, Any] | None:
    """The trigger document plus the runs it started (from the runs table), or None."""
    async with engine.connect() as conn:
        doc: dict[str, Any] | None = (
            await conn.execute(
                select(triggers.c.doc).where(triggers.c.trigger_id == trigger_id, triggers.c.tenant == tenant)
            )
        ).scalar()
        if doc is None:
            return None
        started = await conn.execute(
            select(runs.c.run_id, runs.c.pipeline, runs.c.status)
            .where(runs.c.trigger_id == trigger_id, runs.c.tenant == tenant)
            .order_by(runs.c.created_at, runs.c.run_id)
        )
        return {**doc, "runs": [dict(row._mapping) for row in started]}


async def list_runs(
    engine: AsyncEngine,
    tenant: str,
    pipeline: str | None,
    status: str | None,
    limit: int,
    before: RunCursor | None,
    slice_key: str | None = None,
    is_replay: bool | None = None,
) -> list[dict[str, Any]]:
    """Run summaries newest first, strictly after ``before`` in that order; at most ``limit`` rows."""
    query = select(*RUN_SUMMARY_COLUMNS).where(runs.c.tenant == tenant)
    if pipeline is not None:
        query = query.where(runs.c.pipeline == pipeline)
    if status is not None:
        query = query.where(runs.c.status == status)
    if slice_key is not None:
        query = query.where(runs.c.slice_key == slice_key)
    if is_replay is not None:
        query = query.where(runs.c.is_replay == is_replay)
    if before is not None:
        # Row comparison matches the (tenant, created_at DESC, run_id DESC) indexes.
        query = query.where(tuple_(runs.c.created_at, runs.c.run_id) < tuple_(*before))
    query = query.order_by(runs.c.created_at.desc(), runs.c.run_id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(query)]


async def get_run(engine: AsyncEngine, tenant: str, run_id: str) -> dict[str, Any] | None:
    """The run document with ``steps`` as step-run rows in pipeline order, or None."""
    async with engine.connect() as conn:
        doc: dict[str, Any] | None = (
            await conn.execute(select(runs.c.doc).where(runs.c.run_id == run_id, runs.c.tenant == tenant))
        ).scalar()
        if doc is None:
            return None
        steps = await conn.execute(
            select(step_runs.c.doc)
            .where(step_runs.c.run_id == run_id, step_runs.c.tenant == tenant)
            .order_by(step_runs.c.position_in_run, step_runs.c.step)
        )
        return {**doc, "steps": [row.doc for row in steps]}


async def run_timeline(engine: AsyncEngine, tenant: str, run_id: str) -> list[dict[str, Any]]:
    """The run's timeline entries ordered by sequence (empty when the run is unknown to ``tenant``)."""
    query = (
        select(timeline.c.doc)
        .where(timeline.c.run_id == run_id, timeline.c.tenant == tenant)
        .order_by(timeline.c.seq)
    )
    async with engine.connect() as conn:
        return [row.doc for row in await conn.execute(query)]


async def run_status(engine: AsyncEngine, tenant: str, run_id: str) -> str | None:
    """The run's projected status, or None when ``tenant`` has no such run."""
    query = select(runs.c.status).where(runs.c.run_id == run_id, runs.c.tenant == tenant)
    async with engine.connect() as conn:
        value: str | None = (await conn.execute(query)).scalar()
    return value


async def list_dead_letters(
    engine: AsyncEngine,
    tenant: str,
    include_redriven: bool,
    pipeline: str | None,
    run_id: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The tenant's dead letters, newest first: open ones only unless ``include_redriven``."""
    query = select(dead_letters.c.doc).where(dead_letters.c.tenant == tenant)
    if not include_redriven:
        query = query.where(dead_letters.c.redriven_at.is_(None))
    if pipeline is not None:
        query = query.where(dead_letters.c.pipeline == pipeline)
    if run_id is not None:
        query = query.where(dead_letters.c.run_id == run_id)
    query = query.order_by(dead_letters.c.dead_lettered_at.desc(), dead_letters.c.dead_letter_id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [row.doc for row in await conn.execute(query)]


async def get_dead_letter(engine: AsyncEngine, tenant: str, letter_id: str) -> dict[str, Any] | None:
    """One dead letter of ``tenant``, or None."""
    query = select(dead_letters.c.doc).where(
        dead_letters.c.dead_letter_id == letter_id, dead_letters.c.tenant == tenant
    )
    async with engine.connect() as conn:
        doc: dict[str, Any] | None = (await conn.execute(query)).scalar()
    return doc


async def original_triggers(
    engine: AsyncEngine,
    tenant: str,
    pipeline: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
    status: str | None,
    limit: int,
) -> list[str]:
    """Ids of original (not replayed) triggers whose runs match the filters, oldest run first."""
    first_run = func.min(runs.c.created_at)
    query = (
        select(runs.c.trigger_id, first_run)
        .where(runs.c.tenant == tenant, runs.c.is_replay.is_(False), runs.c.trigger_id != "")
        .group_by(runs.c.trigger_id)
        .order_by(first_run, runs.c.trigger_id)
        .limit(limit)
    )
    if pipeline is not None:
        query = query.where(runs.c.pipeline == pipeline)
    if created_from is not None:
        query = query.where(runs.c.created_at >= created_from)
    if created_to is not None:
        query = query.where(runs.c.created_at < created_to)
    if status is not None:
        query = query.where(runs.c.status == status)
    async with engine.connect() as conn:
        return [row[0] for row in await conn.execute(query)]
