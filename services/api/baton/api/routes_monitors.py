"""Monitors: definitions (PUT, GET, DELETE), tick history, "run checks now", and gateway reports.

Evaluations happen in the monitor service; the API asks it over NATS (request/reply on
``<prefix>.monitor.<verb>.<tenant>.<name>``) and the replica holding the monitor's lease answers.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel, Field, ValidationError

from baton.api.definitions import DefinitionPublishConflict
from baton.api.dependencies import ApiResources, Tenant, get_resources, wait_for_read_models
from baton.api.monitor_store import get_monitor, list_monitors, list_ticks, publish_monitor, unpublish_monitor
from baton.events.catalogue import MonitorDeleted, MonitorVersionCreated, upcast
from baton.events.envelope import EventMetadata, StoredEvent
from baton.events.monitor import (
    EvaluateRequest,
    GatewayReport,
    MonitorReply,
    ReportRequest,
    UpstreamMonitor,
    parse_monitor,
)
from baton.events.pipeline import NAME_PATTERN
from baton.events.store import NO_STREAM, WrongExpectedVersion, append
from baton.events.stream_ids import monitor_stream, pipeline_stream
from baton.events.trigger import TENANT_RE

log = logging.getLogger(__name__)
router = APIRouter(tags=["monitors"])
BASE = "/v1/tenants/{tenant}/monitors"
REQUEST_TIMEOUT_SECONDS = 30.0

MonitorName = Annotated[str, Path(pattern=NAME_PATTERN, description="Monitor name.", examples=["orders-landing"])]


class MonitorApplied(BaseModel):
    """Outcome of a PUT: the current version, and whether this request created it."""

    name: str
    version: int
    changed: bool


class MonitorList(BaseModel):
    """The tenant's monitors, by name."""

    monitors: list[dict[str, Any]]


class TickPage(BaseModel):
    """A page of a monitor's ticks, newest first; pass ``next_before`` as ``before`` for the next page."""

    ticks: list[dict[str, Any]]
    next_before: int | None


class CheckResult(BaseModel):
    """What "run checks now" or a gateway report did: evaluated (with the tick) or skipped (with why)."""

    status: str = Field(description="'evaluated' or 'skipped'.")
    message: str
    tick: dict[str, Any] | None = None


# --- definitions ----------------------------------------------------------------------------


def _latest(history: list[StoredEvent]) -> dict[str, Any] | None:
    """The newest version or deletion of a monitor stream (upcast data plus its type and time)."""
    for event in reversed(history):
        if event.type in (MonitorVersionCreated.event_type, MonitorDeleted.event_type):
            data = upcast(event.type, event.schema_version, dict(event.data))
            return {**data, "_type": event.type, "_at": event.recorded_at.isoformat()}
    return None


async def _pipeline_exists(resources: ApiResources, tenant: str, name: str) -> bool:
    history = await resources.store.read_stream(pipeline_stream(tenant, name))
    return any(e.type == "pipeline_version_created" for e in history)


def _field_error(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": "value_error"}])


async def _publish_or_503(
    resources: ApiResources, tenant: str, name: str, version: int, document: dict[str, Any], created_at: str
) -> None:
    try:
        await publish_monitor(resources.definitions, resources.subjects, tenant, name, version, document, created_at)
    except (NatsError, DefinitionPublishConflict, TimeoutError) as exc:
        log.warning("could not publish monitor %s/%s v%d: %s", tenant, name, version, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"monitor {name!r} version {version} is stored but not yet published to NATS; repeat the request",
        ) from exc


@router.put(
    BASE + "/{name}",
    response_model=MonitorApplied,
    responses={
        200: {"description": "Unchanged: the current version already has this definition."},
        201: {"description": "A new version was stored."},
        422: {"description": "Invalid definition, or its pipeline does not exist (the location names the field)."},
    },
)
async def put_monitor(
    tenant: Tenant,
    name: MonitorName,
    response: Response,
    body: dict[str, Any] = Body(..., examples=[{
        "type": "file", "pipeline": "ingest", "interval": "10s",
        "settings": {"directory": "/data/in", "glob": "*.csv"},
    }]),
    resources: ApiResources = Depends(get_resources),
) -> MonitorApplied:
    """Store a new version of the monitor when its definition differs; its pipeline must exist."""
    if body.get("name", name) != name:
        raise _field_error(("name",), f"must equal the path name {name!r}")
    try:
        model = parse_monitor({**body, "name": name})
    except ValidationError as exc:
        raise RequestValidationError(
            [{"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()]
        ) from exc
    if not await _pipeline_exists(resources, tenant, model.pipeline):
        raise _field_error(("pipeline",), f"pipeline {model.pipeline!r} does not exist in tenant {tenant!r}")
    if isinstance(model, UpstreamMonitor) and not await _pipeline_exists(resources, tenant, model.settings.pipeline):
        missing = f"upstream pipeline {model.settings.pipeline!r} does not exist in tenant {tenant!r}"
        raise _field_error(("settings", "pipeline"), missing)
    document = model.to_document()
    stream_id = monitor_stream(tenant, name)
    for attempt in (1, 2, 3):
        history = await resources.store.read_stream(stream_id)
        expected = history[-1].stream_version if history else NO_STREAM
        latest = _latest(history)
        live = latest is not None and latest["_type"] == MonitorVersionCreated.event_type
        if live and latest is not None and latest["definition"] == document:
            await _publish_or_503(resources, tenant, name, latest["version"], document, latest["_at"])
            response.status_code = status.HTTP_200_OK
            return MonitorApplied(name=name, version=latest["version"], changed=False)
        version = (latest["version"] if latest else 0) + 1
        event = MonitorVersionCreated(tenant=tenant, name=name, version=version, definition=document).to_event(
            metadata=EventMetadata(actor="api")
        )
        try:
            new_stream_version = await append(resources.store, stream_id, tenant, [event], expected)
        except WrongExpectedVersion:
            log.info("monitor %s/%s changed concurrently (attempt %d)", tenant, name, attempt)
            continue
        break
    else:
        raise HTTPException(status.HTTP_409_CONFLICT, f"monitor {name!r} is being changed concurrently; retry")
    await _publish_or_503(resources, tenant, name, version, document, event.recorded_at.isoformat())
    appended = await resources.store.read_stream(stream_id, from_version=new_stream_version)
    if appended and not await wait_for_read_models(resources, appended[0].position):
        log.warning("read models did not reach position %d in time", appended[0].position)
    response.status_code = status.HTTP_201_CREATED
    return MonitorApplied(name=name, version=version, changed=True)


@router.get(BASE, response_model=MonitorList)
async def list_tenant_monitors(tenant: Tenant, resources: ApiResources = Depends(get_resources)) -> MonitorList:
    """The tenant's monitors with their definition, cursor, last tick and counters."""
    return MonitorList(monitors=await list_monitors(resources.engine, tenant))


async def _monitor_or_404(resources: ApiResources, tenant: str, name: str) -> dict[str, Any]:
    doc = await get_monitor(resources.engine, tenant, name)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"monitor {name!r} not found")
    return doc


@router.get(BASE + "/{name}", responses={404: {"description": "No such monitor in this tenant."}})
async def get_one_monitor(
    tenant: Tenant, name: MonitorName, resources: ApiResources = Depends(get_resources)
) -> dict[str, Any]:
    """The current definition, version history, cursor (what it has fired for), last tick and counters."""
    return await _monitor_or_404(resources, tenant, name)


@router.delete(BASE + "/{name}", responses={404: {"description": "No such monitor in this tenant."}})
async def delete_monitor(
    tenant: Tenant, name: MonitorName, resources: ApiResources = Depends(get_resources)
) -> dict[str, Any]:
    """Stop the monitor: a ``monitor_deleted`` event, and its definition leaves the bucket. History stays."""
    stream_id = monitor_stream(tenant, name)
    history = await resources.store.read_stream(stream_id)
    latest = _latest(history)
    if latest is None or latest["_type"] == MonitorDeleted.event_type:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"monitor {name!r} not found")
    event = MonitorDeleted(tenant=tenant, name=name, version=latest["version"], actor="api").to_event(
        metadata=EventMetadata(actor="api")
    )
    try:
        new_version = await append(resources.store, stream_id, tenant, [event], history[-1].stream_version)
    except WrongExpectedVersion as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"monitor {name!r} changed concurrently; retry") from exc
    try:
        await unpublish_monitor(resources.definitions, resources.subjects, tenant, name, latest["version"])
    except (NatsError, TimeoutError) as exc:  # the start-up heal removes it later
        log.warning("could not remove monitor %s/%s from the bucket: %s", tenant, name, exc)
    appended = await resources.store.read_stream(stream_id, from_version=new_version)
    if appended:
        await wait_for_read_models(resources, appended[0].position)
    return {"name": name, "deleted": True, "version": latest["version"]}


@router.get(BASE + "/{name}/ticks", response_model=TickPage)
async def get_ticks(
    tenant: Tenant,
    name: MonitorName,
    limit: int = Query(default=50, ge=1, le=500),
    before: int | None = Query(default=None, ge=1, description="Only ticks with a sequence below this."),
    resources: ApiResources = Depends(get_resources),
) -> TickPage:
    """The monitor's ticks, newest first: what it observed, whether it fired and why, errors, durations."""
    await _monitor_or_404(resources, tenant, name)
    rows = await list_ticks(resources.engine, tenant, name, limit, before)
    return TickPage(ticks=rows, next_before=rows[-1]["seq"] if len(rows) == limit else None)


# --- checks ----------------------------------------------------------------------------------


async def _ask_monitor_service(
    resources: ApiResources, verb: str, tenant: str, name: str, body: BaseModel
) -> MonitorReply:
    subject = resources.subjects.monitor_request(verb, tenant, name)
    try:
        msg = await resources.nc.request(subject, body.model_dump_json().encode(), timeout=REQUEST_TIMEOUT_SECONDS)
    except (NatsTimeout, TimeoutError, NoRespondersError) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no monitor service replica answered; is the monitor service running?"
        ) from exc
    reply = MonitorReply.model_validate_json(msg.data)
    if reply.status in (404, 503):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"monitor service: {reply.message}; retry")
    if reply.status >= 400:
        raise HTTPException(reply.status, reply.message)
    return reply


@router.post(BASE + "/{name}/evaluate", response_model=CheckResult,
             responses={503: {"description": "No monitor service replica answered."}})
async def evaluate_now(
    tenant: Tenant, name: MonitorName, resources: ApiResources = Depends(get_resources)
) -> CheckResult:
    """Run the monitor's check now ("Run checks"); gateway-only and report monitors are skipped with a reason."""
    doc = await _monitor_or_404(resources, tenant, name)
    model = parse_monitor(doc["definition"])
    if not model.evaluated_by_service:
        why = ("report monitors fire only from gateway reports" if model.type == "report"
               else "runs_on is 'gateway': the gateway runs the check and reports it")
        return CheckResult(status="skipped", message=why)
    if not model.enabled:
        return CheckResult(status="skipped", message="the monitor is disabled")
    reply = await _ask_monitor_service(resources, "evaluate", tenant, name, EvaluateRequest(tenant=tenant, name=name))
    return CheckResult(status="evaluated" if reply.tick else "skipped", message=reply.message, tick=reply.tick)


@router.post(
    "/api/agent/monitors/{monitor_id}/report",
    response_model=CheckResult,
    tags=["gateway"],
    responses={404: {"description": "No such monitor."}, 409: {"description": "The monitor takes no reports."}},
)
async def gateway_report(
    report: GatewayReport,
    monitor_id: str = Path(
        pattern=rf"^{TENANT_RE.pattern[1:-1]}\.{NAME_PATTERN[1:-1]}$",
        description="'<tenant>.<monitor name>'.", examples=["acme.orders-landing"],
    ),
    resources: ApiResources = Depends(get_resources),
) -> CheckResult:
    """A gateway reports a check it ran behind its firewall; the monitor service decides and fires.

    TODO(gateway tokens): authenticate the gateway with its bearer token once gateway tokens exist.
    """
    tenant, _, name = monitor_id.partition(".")
    doc = await _monitor_or_404(resources, tenant, name)
    model = parse_monitor(doc["definition"])
    if model.evaluated_by_service:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"monitor {name!r} is evaluated by the monitor service; only 'report' monitors and runs_on 'gateway' "
            "monitors take gateway reports",
        )
    reply = await _ask_monitor_service(
        resources, "report", tenant, name, ReportRequest(tenant=tenant, name=name, report=report)
    )
    return CheckResult(status="evaluated" if reply.tick else "skipped", message=reply.message, tick=reply.tick)
