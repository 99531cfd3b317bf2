"""Dead letters: steps that ran out of attempts, listable and re-drivable (a retry of the run from that step)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from baton.api import queries
from baton.api.dependencies import ApiResources, Tenant, get_resources
from baton.api.runner_commands import COMMAND_RESPONSES, CommandResult, run_command
from baton.events.commands import RetryRun

router = APIRouter(prefix="/v1/tenants/{tenant}/dead-letters", tags=["dead letters"])


class DeadLetter(BaseModel):
    """A step out of attempts: where, why, and whether it was re-driven."""

    dead_letter_id: str = Field(description="'<run_id>:<step>:<attempts>'.")
    run_id: str
    pipeline: str
    step: str
    reason: str
    last_error: str
    attempts: int
    dead_lettered_at: datetime
    redriven_at: datetime | None = None
    redriven_by: str | None = None
    redrive_reason: str | None = None


class DeadLetterList(BaseModel):
    """Dead letters, newest first."""

    dead_letters: list[DeadLetter]


class RedriveRequest(BaseModel):
    """Why the dead letter is re-driven (recorded on the run's run_retried event)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000, examples=["endpoint fixed"])
    actor: str | None = Field(default=None, max_length=200, description="Who asks (default: 'api').")


@router.get("", response_model=DeadLetterList)
async def list_dead_letters(
    tenant: Tenant,
    include: Annotated[
        Literal["open", "all"], Query(description="'open' (default): not yet re-driven; 'all': re-driven too.")
    ] = "open",
    pipeline: str | None = None,
    run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    resources: ApiResources = Depends(get_resources),
) -> DeadLetterList:
    """The tenant's dead letters, newest first."""
    rows = await queries.list_dead_letters(resources.engine, tenant, include == "all", pipeline, run_id, limit)
    return DeadLetterList(dead_letters=[DeadLetter.model_validate(row) for row in rows])


@router.get("/{dead_letter_id}", response_model=DeadLetter, responses={404: {"description": "Unknown here."}})
async def get_dead_letter(
    tenant: Tenant, dead_letter_id: str, resources: ApiResources = Depends(get_resources)
) -> DeadLetter:
    """One dead letter."""
    row = await queries.get_dead_letter(resources.engine, tenant, dead_letter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dead letter {dead_letter_id!r} not found")
    return DeadLetter.model_validate(row)


@router.post("/{dead_letter_id}/redrive", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def redrive_dead_letter(
    tenant: Tenant,
    dead_letter_id: str,
    body: RedriveRequest | None = None,
    resources: ApiResources = Depends(get_resources),
) -> CommandResult:
    """Retry the dead letter's run from the step that ran out of attempts (a 409 once re-driven)."""
    body = body or RedriveRequest()
    row = await queries.get_dead_letter(resources.engine, tenant, dead_letter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dead letter {dead_letter_id!r} not found")
    if row.get("redriven_at") is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"dead letter {dead_letter_id!r} was already re-driven at {row['redriven_at']}"
            f" by {row.get('redriven_by') or 'someone'}",
        )
    command = RetryRun(
        run_id=row["run_id"], reason=body.reason, actor=body.actor or "api", dead_letter_id=dead_letter_id
    )
    return await run_command(resources, tenant, command)
