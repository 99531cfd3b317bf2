"""Schedules: list them with their next fire times and last outcome, read their history, and backfill.

Backfill publishes its triggers from the API itself, like a webhook does: it needs only
the pipeline's definition (in the event store) and the pure cron code, every trigger is
idempotent by slot, and a partial failure is repaired by repeating the request. Asking
the scheduler over NATS would add a round trip and state there without adding safety.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.api.dependencies import ApiResources, Tenant, get_resources
from baton.events.backfill import BackfillTooLarge, backfill_slots, backfill_triggers, publish_paced
from baton.events.catalogue import PipelineVersionCreated, ScheduleBackfilled, upcast
from baton.events.cron import slot_key
from baton.events.envelope import EventMetadata, utcnow
from baton.events.pipeline import NAME_PATTERN, PipelineDefinition
from baton.events.schema import pipelines, schedule_history, schedules
from baton.events.store import ANY_VERSION, append
from baton.events.stream_ids import pipeline_stream, schedule_stream

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/tenants/{tenant}", tags=["schedules"])

PipelineName = Annotated[str, Path(pattern=NAME_PATTERN, description="Pipeline name.", examples=["nightly"])]
NEXT_FIRES = 3


class BackfillRequest(BaseModel):
    """The time range to backfill (both ends inclusive, with a timezone) and the publish rate."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_time: datetime = Field(alias="from", description="First instant, e.g. '2025-01-01T00:00:00Z'.")
    to_time: datetime = Field(alias="to", description="Last instant (inclusive).")
    rate: float = Field(default=100.0, gt=0, le=2_000, description="Triggers published per second at most.")


class BackfillSlot(BaseModel):
    """One slot of a backfill and the trigger it publishes."""

    slot: datetime
    slice_key: str
    trigger_id: str


class BackfillResult(BaseModel):
    """What the backfill published: ``duplicates`` were already published by an earlier, identical backfill."""

    pipeline: str
    count: int
    published: int
    duplicates: int
    slots: list[BackfillSlot]


async def _latest_definition(resources: ApiResources, tenant: str, name: str) -> tuple[int, PipelineDefinition]:
    history = await resources.store.read_stream(pipeline_stream(tenant, name))
    latest = next((e for e in reversed(history) if e.type == PipelineVersionCreated.event_type), None)
    if latest is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"pipeline {name!r} not found")
    data = upcast(latest.type, latest.schema_version, dict(latest.data))
    return data["version"], PipelineDefinition.model_validate(data["definition"])


@router.post(
    "/pipelines/{name}/backfill",
    response_model=BackfillResult,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "No such pipeline."}, 409: {"description": "The pipeline has no schedule."},
               503: {"description": "NATS unavailable; repeat the request (it is idempotent)."}},
)
async def backfill(
    tenant: Tenant, name: PipelineName, body: BackfillRequest, resources: ApiResources = Depends(get_resources)
) -> BackfillResult:
    """Publish one trigger per schedule slot in ``[from, to]``, each with its slot time as slice key."""
    _, definition = await _latest_definition(resources, tenant, name)
    if definition.schedule is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"pipeline {name!r} has no schedule to backfill")
    try:
        slots = backfill_slots(definition.schedule, body.from_time, body.to_time)
    except (ValueError, BackfillTooLarge) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    triggers = backfill_triggers(
        resources.subjects, tenant, name, definition.trigger.type, definition.schedule, slots
    )
    try:
        outcome = await publish_paced(resources.js, triggers, body.rate)
    except (NatsError, TimeoutError) as exc:
        log.warning("backfill of %s/%s interrupted: %s", tenant, name, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "publishing the backfill failed part-way; repeat the request"
        ) from exc
    event = ScheduleBackfilled(
        tenant=tenant, pipeline=name, from_time=body.from_time, to_time=body.to_time, count=len(slots),
        first_slot=slots[0] if slots else None, last_slot=slots[-1] if slots else None, actor="api",
    ).to_event(EventMetadata(actor="api"))
    await append(resources.store, schedule_stream(tenant, name), tenant, [event], ANY_VERSION)
    return BackfillResult(
        pipeline=name,
        count=len(slots),
        published=outcome.published,
        duplicates=outcome.duplicates,
        slots=[
            BackfillSlot(slot=slot, slice_key=slot_key(slot), trigger_id=t.trigger_id)
            for slot, t in zip(slots, triggers, strict=True)
        ],
    )


async def _scheduled_pipelines(engine: AsyncEngine, tenant: str) -> list[dict[str, Any]]:
    query = (
        select(pipelines.c.name, pipelines.c.doc, schedules.c.doc.label("schedule_doc"))
        .select_from(
            pipelines.outerjoin(
                schedules, (schedules.c.tenant == pipelines.c.tenant) & (schedules.c.pipeline == pipelines.c.name)
            )
        )
        .where(pipelines.c.tenant == tenant)
        .order_by(pipelines.c.name)
    )
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(query)]


def _schedule_summary(
    name: str, doc: dict[str, Any], projected: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """One schedule's row: its spec, the next fire times computed from the cron, and projected outcomes."""
    definition = doc["definition"]
    spec_doc = definition["schedule"]
    projected = projected or {}
    summary: dict[str, Any] = {
        "pipeline": name,
        "pipeline_version": doc["version"],
        "cron": spec_doc["cron"] if isinstance(spec_doc["cron"], list) else [spec_doc["cron"]],
        "timezone": spec_doc.get("timezone", "UTC"),
        "missed": spec_doc.get("missed", "skip"),
        "enabled": bool(definition.get("enabled", True) and spec_doc.get("enabled", True)),
        "next_fires": [],
        "last_outcome": projected.get("last_outcome"),
        "last_fired_slot": projected.get("last_fired_slot"),
        "fires": projected.get("fires", 0),
        "skipped": projected.get("skipped", 0),
    }
    if summary["enabled"]:
        try:
            spec = PipelineDefinition.model_validate(definition).schedule
        except ValidationError:
            spec = None
        if spec is not None:
            cron = spec.cron_schedule()
            fires: list[datetime] = []
            after = now
            while len(fires) < NEXT_FIRES and (nxt := cron.next_fire(after)) is not None:
                fires.append(nxt)
                after = nxt
            summary["next_fires"] = [slot_key(f) for f in fires]
    return summary


@router.get("/schedules")
async def list_schedules(tenant: Tenant, resources: ApiResources = Depends(get_resources)) -> dict[str, Any]:
    """Every pipeline with a schedule: its cron, next fire times (UTC) and last outcome (fired or skipped)."""
    now = utcnow()
    rows = await _scheduled_pipelines(resources.engine, tenant)
    return {
        "schedules": [
            _schedule_summary(row["name"], row["doc"], row["schedule_doc"], now)
            for row in rows
            if row["doc"].get("definition", {}).get("schedule")
        ]
    }


@router.get("/schedules/{pipeline}/history", responses={404: {"description": "No such schedule."}})
async def schedule_history_of(
    tenant: Tenant,
    pipeline: PipelineName,
    limit: int = Query(100, ge=1, le=1000, description="How many entries (newest first)."),
    before: int | None = Query(None, ge=1, description="Only entries older than this cursor (a position)."),
    resources: ApiResources = Depends(get_resources),
) -> dict[str, Any]:
    """The schedule's fires, skips, backfills and (de)activations, newest first."""
    query = (
        select(schedule_history.c.position, schedule_history.c.doc)
        .where(schedule_history.c.tenant == tenant, schedule_history.c.pipeline == pipeline)
        .order_by(schedule_history.c.position.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(schedule_history.c.position < before)
    async with resources.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    if not rows and before is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"schedule of pipeline {pipeline!r} has no history")
    entries = [{"position": row.position, **row.doc} for row in rows]
    return {
        "pipeline": pipeline,
        "entries": entries,
        "next_cursor": entries[-1]["position"] if len(entries) == limit else None,
    }
