"""Bulk replay: re-process every original trigger whose runs match a filter, one replay command each."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from baton.api import queries
from baton.api.dependencies import ApiResources, Tenant, get_resources, wait_for_read_models
from baton.api.runner_commands import RunnerUnavailable, request_command
from baton.events.commands import ReplayTrigger

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/tenants/{tenant}/replays", tags=["replay"])
# Replay ids of a named bulk replay derive from (batch id, trigger id): repeating the request repeats nothing.
BATCH_NAMESPACE = uuid.UUID("4f6b8f2e-2c55-4d1c-9a4e-6f1f0b7a9c31")


class BulkReplayRequest(BaseModel):
    """Which original triggers to replay (by their runs), and how."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    pipeline: str | None = Field(default=None, description="Runs of this pipeline; only it is re-run.")
    from_: Annotated[
        AwareDatetime | None, Field(alias="from", description="Runs created at or after this time (with offset).")
    ] = None
    to: AwareDatetime | None = Field(default=None, description="Runs created before this time (with offset).")
    status: str | None = Field(default=None, description="Runs in this status, e.g. 'failed'.")
    dry_run: bool = Field(default=False, description="Skip every action and record what would have run.")
    limit: int = Field(default=100, ge=1, le=1000, description="At most this many triggers, oldest first.")
    batch_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Names this bulk replay: the same id again replays nothing twice (default: a fresh one).",
    )
    actor: str | None = Field(default=None, max_length=200)


class ReplayOutcome(BaseModel):
    """What happened to one selected trigger."""

    trigger_id: str
    replay_id: str
    status: int = Field(description="The runner's verdict (200 replayed), or 503 when it was not sent.")
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class BulkReplaySummary(BaseModel):
    """Counts and per-trigger outcomes of a bulk replay."""

    batch_id: str
    dry_run: bool
    selected: int
    replayed: int
    failed: int
    not_sent: int
    results: list[ReplayOutcome]


@router.post(
    "",
    response_model=BulkReplaySummary,
    responses={503: {"description": "No runner answered the first replay; nothing was replayed."}},
)
async def bulk_replay(
    tenant: Tenant, body: BulkReplayRequest, resources: ApiResources = Depends(get_resources)
) -> BulkReplaySummary:
    """Replay every original trigger (replays excluded) whose runs match the filters, oldest first.

    Triggers are sent one by one; if the runner stops answering, the rest are reported as not sent
    and the request can be repeated with the same ``batch_id``.
    """
    if body.from_ and body.to and body.from_ >= body.to:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "'from' must be before 'to'")
    batch_id = body.batch_id or uuid.uuid4().hex
    selected = await queries.original_triggers(
        resources.engine, tenant, body.pipeline, body.from_, body.to, body.status, body.limit
    )
    results: list[ReplayOutcome] = []
    unavailable: str | None = None
    for trigger_id in selected:
        replay_id = str(uuid.uuid5(BATCH_NAMESPACE, f"{batch_id}:{trigger_id}"))
        if unavailable is not None:
            results.append(ReplayOutcome(trigger_id=trigger_id, replay_id=replay_id, status=503, message=unavailable))
            continue
        command = ReplayTrigger(
            trigger_id=trigger_id, replay_id=replay_id, dry_run=body.dry_run, actor=body.actor or "api",
            pipeline=body.pipeline,
        )
        try:
            reply = await request_command(resources, tenant, command)
        except RunnerUnavailable as exc:
            log.warning("bulk replay %s stopped at trigger %s: %s", batch_id, trigger_id, exc)
            unavailable = f"not sent: {exc}"
            if not results:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
            results.append(ReplayOutcome(trigger_id=trigger_id, replay_id=replay_id, status=503, message=unavailable))
            continue
        results.append(
            ReplayOutcome(trigger_id=trigger_id, replay_id=replay_id, status=reply.status, message=reply.message,
                          data=reply.data)
        )
    replayed = sum(1 for r in results if 200 <= r.status < 300)
    if replayed:
        await wait_for_read_models(resources, await resources.store.head_position())
    not_sent = sum(1 for r in results if r.message.startswith("not sent"))
    return BulkReplaySummary(
        batch_id=batch_id, dry_run=body.dry_run, selected=len(selected), replayed=replayed,
        failed=len(results) - replayed - not_sent, not_sent=not_sent, results=results,
    )
