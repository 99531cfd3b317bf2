"""Webhook triggers: publish to the trigger subject (the runner takes it from there), look one up, replay one."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field

from baton.api import queries
from baton.api.dependencies import ApiResources, Tenant, get_resources
from baton.api.runner_commands import COMMAND_RESPONSES, CommandResult, run_command
from baton.events.bus import headers_for
from baton.events.commands import ReplayTrigger
from baton.events.subjects import TRIGGER_TYPE_RE
from baton.events.trigger import MAX_TRIGGER_BYTES, TriggerMessage, trigger_id_for

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/tenants/{tenant}/triggers", tags=["triggers"])


class TriggerRequest(BaseModel):
    """A trigger sent over HTTP: the NATS trigger message, with ``type`` required."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(max_length=200, pattern=TRIGGER_TYPE_RE.pattern, examples=["orders.ready"])
    source: str = Field(default="webhook", min_length=1, max_length=200)
    resource_type: str | None = Field(default=None, max_length=200)
    resource_id: str | None = Field(default=None, max_length=500)
    environment: str | None = Field(default=None, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, description="Same key, same trigger; default: a fresh one."
    )


class TriggerAccepted(BaseModel):
    """The trigger was durably published; the runner will record and match it."""

    trigger_id: str
    idempotency_key: str


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TriggerAccepted,
    responses={413: {"description": "Body too large."}, 503: {"description": "NATS unavailable."}},
)
async def post_trigger(
    tenant: Tenant, body: TriggerRequest, resources: ApiResources = Depends(get_resources)
) -> TriggerAccepted:
    """Publish the trigger to ``<prefix>.trigger.<tenant>.<type>`` with JetStream de-duplication on its key."""
    key = body.idempotency_key or uuid.uuid4().hex
    message = TriggerMessage(
        source=body.source,
        type=body.type,
        tenant=tenant,
        resource_type=body.resource_type,
        resource_id=body.resource_id,
        environment=body.environment,
        payload=body.payload,
        idempotency_key=key,
        triggered_by="webhook",
    )
    data = message.model_dump_json(exclude_none=True).encode()
    if len(data) > MAX_TRIGGER_BYTES:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"trigger is {len(data)} bytes; the limit is {MAX_TRIGGER_BYTES}"
        )
    try:
        await resources.js.publish(resources.subjects.trigger(tenant, body.type), data, headers=headers_for(key))
    except (NatsError, TimeoutError) as exc:
        log.warning("trigger publish failed: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "could not publish the trigger; retry") from exc
    return TriggerAccepted(trigger_id=trigger_id_for(tenant, key), idempotency_key=key)


@router.get("/{trigger_id}", responses={404: {"description": "No such trigger in this tenant."}})
async def get_trigger(
    tenant: Tenant, trigger_id: str, resources: ApiResources = Depends(get_resources)
) -> dict[str, Any]:
    """The recorded trigger (accepted or rejected) and the runs it started."""
    doc = await queries.get_trigger(resources.engine, tenant, trigger_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"trigger {trigger_id!r} not found")
    return doc


class ReplayRequest(BaseModel):
    """How to replay a stored trigger."""

    model_config = ConfigDict(extra="forbid")
    dry_run: bool = Field(default=False, description="Skip every action and record what would have run.")
    replay_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Names the replay: send the same id again to retry without a second set of runs "
        "(default: a fresh one, returned in the answer).",
    )
    pipeline: str | None = Field(default=None, description="Re-run only this pipeline.")
    actor: str | None = Field(default=None, max_length=200, description="Who asks (default: 'api').")


class ReplayResult(CommandResult):
    """The runner's verdict on a replay; ``data`` holds the new trigger id and run ids."""

    replay_id: str


@router.post("/{trigger_id}/replay", response_model=ReplayResult, responses=COMMAND_RESPONSES)
async def replay_trigger(
    tenant: Tenant,
    trigger_id: str,
    body: ReplayRequest | None = None,
    resources: ApiResources = Depends(get_resources),
) -> ReplayResult:
    """Re-process a stored trigger through matching into new runs marked as replays of it.

    Actions registered ``replay_safe: false`` are skipped; ``dry_run`` skips every action.
    """
    body = body or ReplayRequest()
    doc = await queries.get_trigger(resources.engine, tenant, trigger_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"trigger {trigger_id!r} not found")
    if doc.get("status") != "accepted":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"trigger {trigger_id!r} was rejected ({doc.get('reason')}); only accepted triggers can be replayed",
        )
    replay_id = body.replay_id or uuid.uuid4().hex
    command = ReplayTrigger(
        trigger_id=trigger_id, replay_id=replay_id, dry_run=body.dry_run, actor=body.actor or "api",
        pipeline=body.pipeline,
    )
    result = await run_command(resources, tenant, command)
    return ReplayResult(**result.model_dump(), replay_id=replay_id)
