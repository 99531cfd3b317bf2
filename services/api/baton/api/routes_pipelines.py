"""Pipeline definitions: apply a version (PUT), list, read one with its history; pause, resume, drain."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field

from baton.api import queries
from baton.api.definitions import DefinitionPublishConflict, publish_definition
from baton.api.dependencies import ApiResources, Tenant, get_resources, wait_for_read_models
from baton.api.pipeline_control import control_of, publish_control
from baton.events.catalogue import (
    PipelineDraining,
    PipelinePaused,
    PipelineResumed,
    PipelineVersionCreated,
    upcast,
)
from baton.events.control import OperatorState, PipelineControl
from baton.events.envelope import EventMetadata
from baton.events.pipeline import NAME_PATTERN, PipelineDefinition
from baton.events.projections.pipelines import OPERATOR_STATES
from baton.events.store import NO_STREAM, WrongExpectedVersion, append
from baton.events.stream_ids import pipeline_stream

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/tenants/{tenant}/pipelines", tags=["pipelines"])

PipelineName = Annotated[str, Path(pattern=NAME_PATTERN, description="Pipeline name.", examples=["orders"])]


class PipelineRequest(PipelineDefinition):
    """A pipeline definition as PUT: the JSON form of the YAML; ``name`` defaults to the path's."""

    name: str | None = Field(  # type: ignore[assignment]
        default=None, pattern=NAME_PATTERN, description="Optional; must equal the name in the path."
    )


class PipelineApplied(BaseModel):
    """Outcome of a PUT: the current version, and whether this request created it."""

    name: str
    version: int
    changed: bool


class PipelineSummary(BaseModel):
    """One row of the pipeline list."""

    name: str
    version: int
    enabled: bool
    trigger_type: str
    updated_at: datetime
    state: str = Field(default="active", description="Operator state: active, paused or draining.")


class PipelineList(BaseModel):
    """The tenant's pipelines, by name."""

    pipelines: list[PipelineSummary]


async def _publish_or_503(
    resources: ApiResources, tenant: str, name: str, version: int, document: dict[str, Any]
) -> None:
    """Put the version in the definitions bucket; a failure asks the client to repeat the PUT (idempotent)."""
    try:
        await publish_definition(resources.definitions, resources.subjects, tenant, name, version, document)
    except (NatsError, DefinitionPublishConflict, TimeoutError) as exc:
        log.warning("could not publish %s/%s v%d to the definitions bucket: %s", tenant, name, version, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"pipeline {name!r} version {version} is stored but not yet published to NATS; repeat the request",
        ) from exc


@router.put(
    "/{name}",
    response_model=PipelineApplied,
    responses={
        200: {"description": "Unchanged: the current version already has this definition."},
        201: {"description": "A new version was stored."},
        409: {"description": "Concurrent writers kept changing the pipeline."},
    },
)
async def put_pipeline(
    tenant: Tenant,
    name: PipelineName,
    body: PipelineRequest,
    response: Response,
    resources: ApiResources = Depends(get_resources),
) -> PipelineApplied:
    """Store a new version of the pipeline when its definition differs from the current one."""
    if body.name is not None and body.name != name:
        raise RequestValidationError(
            [{"loc": ("body", "name"), "msg": f"must equal the path name {name!r}", "type": "value_error"}]
        )
    document = PipelineDefinition.model_validate({**body.to_document(), "name": name}).to_document()
    stream_id = pipeline_stream(tenant, name)
    for attempt in (1, 2):
        history = await resources.store.read_stream(stream_id)
        expected = history[-1].stream_version if history else NO_STREAM
        latest = next(
            (
                upcast(e.type, e.schema_version, dict(e.data))
                for e in reversed(history)
                if e.type == PipelineVersionCreated.event_type
            ),
            None,
        )
        if latest is not None and latest["definition"] == document:
            # Re-put: heals a bucket write lost to a crash after an earlier append.
            await _publish_or_503(resources, tenant, name, latest["version"], document)
            response.status_code = status.HTTP_200_OK
            return PipelineApplied(name=name, version=latest["version"], changed=False)
        version = (latest["version"] if latest else 0) + 1
        event = PipelineVersionCreated(tenant=tenant, name=name, version=version, definition=document).to_event(
            metadata=EventMetadata(actor="api")
        )
        try:
            new_stream_version = await append(resources.store, stream_id, tenant, [event], expected)
        except WrongExpectedVersion:
            log.info("pipeline %s/%s changed concurrently (attempt %d)", tenant, name, attempt)
            continue
        break
    else:
        raise HTTPException(status.HTTP_409_CONFLICT, f"pipeline {name!r} is being changed concurrently; retry")
    await _publish_or_503(resources, tenant, name, version, document)
    appended = await resources.store.read_stream(stream_id, from_version=new_stream_version)
    if appended and not await wait_for_read_models(resources, appended[0].position):
        log.warning("read models did not reach position %d in time", appended[0].position)
    response.status_code = status.HTTP_201_CREATED
    return PipelineApplied(name=name, version=version, changed=True)


@router.get("", response_model=PipelineList)
async def list_pipelines(tenant: Tenant, resources: ApiResources = Depends(get_resources)) -> PipelineList:
    """The tenant's pipelines with their current version, enabled flag and trigger type."""
    rows = await queries.list_pipelines(resources.engine, tenant)
    return PipelineList(pipelines=[PipelineSummary.model_validate(row) for row in rows])


@router.get("/{name}", responses={404: {"description": "No such pipeline in this tenant."}})
async def get_pipeline(
    tenant: Tenant, name: PipelineName, resources: ApiResources = Depends(get_resources)
) -> dict[str, Any]:
    """The current definition with its version history."""
    doc = await queries.get_pipeline(resources.engine, tenant, name)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"pipeline {name!r} not found")
    return doc


class OperatorRequest(BaseModel):
    """Why an operator pauses, resumes or drains a pipeline (recorded on the event)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000, examples=["warehouse maintenance"])
    actor: str | None = Field(default=None, max_length=200, description="Who asks (default: 'api').")


class OperatorStateChange(BaseModel):
    """The pipeline's operator state after the request, and whether this request changed it."""

    name: str
    state: OperatorState
    changed: bool
    changed_at: datetime | None
    reason: str
    actor: str | None
    position: int = Field(description="Event-store position of the event that set this state (0: never changed).")


OPERATOR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such pipeline in this tenant."},
    409: {"description": "Concurrent writers kept changing the pipeline."},
    503: {"description": "Stored, but not yet published to NATS; repeat the request (idempotent)."},
}


async def _set_operator_state(
    resources: ApiResources, tenant: str, name: str, kind: type[PipelinePaused | PipelineResumed | PipelineDraining],
    body: OperatorRequest | None,
) -> OperatorStateChange:
    """Append the operator event unless the pipeline is already in that state, then publish the state."""
    body = body or OperatorRequest()
    target = OPERATOR_STATES[kind.event_type]
    stream_id = pipeline_stream(tenant, name)
    for attempt in (1, 2, 3):
        history = await resources.store.read_stream(stream_id)
        if not any(e.type == PipelineVersionCreated.event_type for e in history):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"pipeline {name!r} not found")
        latest = next((e for e in reversed(history) if e.type in OPERATOR_STATES), None)
        control = control_of(latest) if latest is not None else PipelineControl()
        if control.state == target:
            changed = False
            break
        actor = body.actor or "api"
        event = kind(tenant=tenant, name=name, reason=body.reason, actor=actor).to_event(
            metadata=EventMetadata(actor=actor)
        )
        try:
            version = await append(resources.store, stream_id, tenant, [event], history[-1].stream_version)
        except WrongExpectedVersion:
            log.info("pipeline %s/%s changed concurrently (attempt %d)", tenant, name, attempt)
            continue
        (stored,) = await resources.store.read_stream(stream_id, from_version=version)
        control = control_of(stored)
        changed = True
        break
    else:
        raise HTTPException(status.HTTP_409_CONFLICT, f"pipeline {name!r} is being changed concurrently; retry")
    try:
        # Also on "unchanged": re-putting heals a bucket write lost to a crash after the append.
        await publish_control(resources.definitions, resources.subjects, tenant, name, control)
    except (NatsError, DefinitionPublishConflict, TimeoutError) as exc:
        log.warning("could not publish the state of %s/%s to the bucket: %s", tenant, name, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"pipeline {name!r} is {target} in the event store but not yet published to NATS; repeat the request",
        ) from exc
    if changed and not await wait_for_read_models(resources, control.position):
        log.warning("read models did not reach position %d in time", control.position)
    return OperatorStateChange(
        name=name, state=control.state, changed=changed, changed_at=control.changed_at, reason=control.reason,
        actor=control.actor, position=control.position,
    )


@router.post("/{name}/pause", response_model=OperatorStateChange, responses=OPERATOR_RESPONSES)
async def pause_pipeline(
    tenant: Tenant, name: PipelineName, body: OperatorRequest | None = None,
    resources: ApiResources = Depends(get_resources),
) -> OperatorStateChange:
    """Pause the pipeline: new runs queue as 'pending' and none starts until it is resumed."""
    return await _set_operator_state(resources, tenant, name, PipelinePaused, body)


@router.post("/{name}/resume", response_model=OperatorStateChange, responses=OPERATOR_RESPONSES)
async def resume_pipeline(
    tenant: Tenant, name: PipelineName, body: OperatorRequest | None = None,
    resources: ApiResources = Depends(get_resources),
) -> OperatorStateChange:
    """Resume a paused or draining pipeline: queued runs start, first in first out."""
    return await _set_operator_state(resources, tenant, name, PipelineResumed, body)


@router.post("/{name}/drain", response_model=OperatorStateChange, responses=OPERATOR_RESPONSES)
async def drain_pipeline(
    tenant: Tenant, name: PipelineName, body: OperatorRequest | None = None,
    resources: ApiResources = Depends(get_resources),
) -> OperatorStateChange:
    """Drain the pipeline: it accepts no new runs; the ones in flight or queued finish."""
    return await _set_operator_state(resources, tenant, name, PipelineDraining, body)
