"""Runs: a paginated list, one run with its steps, its timeline, and its raw events."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from baton.api import queries
from baton.api.dependencies import ApiResources, Tenant, get_resources
from baton.api.runner_commands import COMMAND_RESPONSES, CommandResult, run_command
from baton.events.commands import CancelRun, RetryRun
from baton.events.stream_ids import run_stream

router = APIRouter(prefix="/v1/tenants/{tenant}/runs", tags=["runs"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such run in this tenant."}}


class RunSummary(BaseModel):
    """One row of the run list."""

    run_id: str
    pipeline: str
    pipeline_version: int
    status: str
    trigger_id: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    slice_key: str | None = None
    is_replay: bool = False


class RunPage(BaseModel):
    """A page of runs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""

    runs: list[RunSummary]
    next_cursor: str | None


def encode_cursor(created_at: datetime, run_id: str) -> str:
    """Opaque cursor naming the last run of a page."""
    raw = json.dumps([created_at.isoformat(), run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> queries.RunCursor:
    """Inverse of ``encode_cursor``; raises ValueError on anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, run_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("malformed cursor") from exc
    if not isinstance(run_id, str) or moment.tzinfo is None:
        raise ValueError("malformed cursor")
    return moment, run_id


@router.get("", response_model=RunPage)
async def list_runs(
    tenant: Tenant,
    pipeline: str | None = None,
    status_: Annotated[
        str | None,
        Query(alias="status", description="pending (queued), running, waiting, completed, failed or canceled."),
    ] = None,
    slice_key: Annotated[str | None, Query(description="Only runs of this slice (partition key).")] = None,
    is_replay: Annotated[bool | None, Query(description="true: only replays; false: only original runs.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    resources: ApiResources = Depends(get_resources),
) -> RunPage:
    """Runs newest first, optionally filtered by pipeline, status, slice and replay mark, with keyset pagination."""
    before = None
    if cursor:
        try:
            before = decode_cursor(cursor)
        except ValueError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}],
            ) from exc
    rows = await queries.list_runs(
        resources.engine, tenant, pipeline, status_, limit + 1, before, slice_key=slice_key, is_replay=is_replay
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["run_id"]) if len(rows) > limit else None
    return RunPage(runs=[RunSummary.model_validate(row) for row in page], next_cursor=next_cursor)


@router.get("/{run_id}", responses=NOT_FOUND)
async def get_run(tenant: Tenant, run_id: str, resources: ApiResources = Depends(get_resources)) -> dict[str, Any]:
    """The run document (status, trigger, context, error) with ``steps`` in pipeline order."""
    doc = await queries.get_run(resources.engine, tenant, run_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} not found")
    return doc


@router.get("/{run_id}/timeline", responses=NOT_FOUND)
async def get_timeline(
    tenant: Tenant, run_id: str, resources: ApiResources = Depends(get_resources)
) -> dict[str, Any]:
    """The run's timeline entries in order."""
    entries = await queries.run_timeline(resources.engine, tenant, run_id)
    if not entries:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} not found")
    return {"run_id": run_id, "entries": entries}


@router.get("/{run_id}/events", responses=NOT_FOUND)
async def get_events(
    tenant: Tenant, run_id: str, resources: ApiResources = Depends(get_resources)
) -> dict[str, Any]:
    """The raw events of the run's stream, as stored (JSON envelopes, version order)."""
    stored = [e for e in await resources.store.read_stream(run_stream(run_id)) if e.tenant == tenant]
    if not stored:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} not found")
    return {"run_id": run_id, "events": [event.to_json_dict() for event in stored]}


class RunCommandRequest(BaseModel):
    """Why an operator cancels or retries a run (recorded in the run's events)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000, examples=["wrong input file"])
    actor: str | None = Field(default=None, max_length=200, description="Who asks (default: 'api').")


async def _require_run(resources: ApiResources, tenant: str, run_id: str) -> None:
    if await queries.run_status(resources.engine, tenant, run_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} not found")


@router.post("/{run_id}/cancel", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def cancel_run(
    tenant: Tenant,
    run_id: str,
    body: RunCommandRequest | None = None,
    resources: ApiResources = Depends(get_resources),
) -> CommandResult:
    """Cancel a run that has not finished: pending and scheduled steps are skipped, timers canceled.

    A terminal run (completed, failed, canceled by someone else) is a 409 with the runner's reason.
    """
    body = body or RunCommandRequest()
    await _require_run(resources, tenant, run_id)
    command = CancelRun(run_id=run_id, reason=body.reason, actor=body.actor or "api")
    return await run_command(resources, tenant, command)


@router.post("/{run_id}/retry", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def retry_run(
    tenant: Tenant,
    run_id: str,
    body: RunCommandRequest | None = None,
    resources: ApiResources = Depends(get_resources),
) -> CommandResult:
    """Run a failed run again from its first failed step; completed steps keep their results.

    Only a failed (or dead-lettered) run can be retried; anything else is a 409.
    """
    body = body or RunCommandRequest()
    await _require_run(resources, tenant, run_id)
    command = RetryRun(run_id=run_id, reason=body.reason, actor=body.actor or "api")
    return await run_command(resources, tenant, command)
