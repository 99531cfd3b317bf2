"""The event catalogue: one typed, versioned schema per event type.

Every event's ``data`` is one of these models dumped to JSON. Old schema versions
stay readable: ``upcast`` converts stored data written at an older version into the
current shape with small converter functions registered in ``UPCASTERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from baton.events.envelope import EventMetadata, NewEvent, StoredEvent, utcnow


class EventData(BaseModel):
    """Base of every event schema: its type name and current schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    def to_event(self, metadata: EventMetadata | None = None, recorded_at: datetime | None = None) -> NewEvent:
        """Wrap this payload in a new envelope ready to append."""
        return NewEvent(
            type=self.event_type,
            schema_version=self.schema_version,
            data=self.model_dump(mode="json"),
            metadata=metadata or EventMetadata(),
            recorded_at=recorded_at or utcnow(),
        )


# --- triggers ---------------------------------------------------------------------------


class MatchedRun(BaseModel):
    """A run a trigger started: which pipeline version it froze."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    pipeline: str
    pipeline_version: int


class TriggerReceived(EventData):
    """A trigger was accepted and matched against the tenant's enabled pipelines."""

    event_type: ClassVar[str] = "trigger_received"
    trigger_id: str
    tenant: str
    source: str
    type: str
    resource_type: str | None = None
    resource_id: str | None = None
    environment: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    triggered_by: str = "api"
    subject: str | None = None
    runs: list[MatchedRun] = Field(default_factory=list, description="Runs created for this trigger.")


class TriggerRejected(EventData):
    """A trigger message could not be accepted; the reason says why."""

    event_type: ClassVar[str] = "trigger_rejected"
    trigger_id: str
    tenant: str | None = None
    subject: str
    reason: str = Field(description="Machine-readable reason code, e.g. 'invalid_json'.")
    detail: str = Field(description="Human-readable explanation.")
    body_excerpt: str = Field(default="", description="The first bytes of the rejected body.")


# --- pipelines --------------------------------------------------------------------------


class PipelineVersionCreated(EventData):
    """A new version of a pipeline definition was stored."""

    event_type: ClassVar[str] = "pipeline_version_created"
    tenant: str
    name: str
    version: int = Field(ge=1)
    definition: dict[str, Any]


# --- runs and steps ---------------------------------------------------------------------


class RunCreated(EventData):
    """A run was created for a trigger, with a frozen snapshot of the pipeline version."""

    event_type: ClassVar[str] = "run_created"
    run_id: str
    tenant: str
    pipeline: str
    pipeline_version: int
    definition: dict[str, Any] = Field(description="Snapshot of the pipeline version the run executes.")
    trigger: dict[str, Any] = Field(description="The trigger that started the run (id, type, payload, ...).")


class RunStarted(EventData):
    """The run began executing its first step."""

    event_type: ClassVar[str] = "run_started"
    run_id: str


class RunCompleted(EventData):
    """The run ended successfully (possibly early, on a false condition)."""

    event_type: ClassVar[str] = "run_completed"
    run_id: str
    reason: str = "all steps completed"


class RunFailed(EventData):
    """The run ended in failure; ``error`` says why and ``step`` where."""

    event_type: ClassVar[str] = "run_failed"
    run_id: str
    error: str
    step: str | None = None


class StepScheduled(EventData):
    """A step was scheduled: dispatched to workers, or evaluated by the runner."""

    event_type: ClassVar[str] = "step_scheduled"
    run_id: str
    step: str
    index: int = Field(ge=0, description="Position of the step in the pipeline.")
    kind: str = Field(description="Step type: 'action' or 'condition'.")
    attempt: int = Field(default=1, ge=1)


class StepStarted(EventData):
    """A worker started executing the step."""

    event_type: ClassVar[str] = "step_started"
    run_id: str
    step: str
    attempt: int = Field(default=1, ge=1)
    worker: str | None = None
    started_at: datetime | None = None


class StepCompleted(EventData):
    """The step succeeded; its result is stored in the run context under the step name."""

    event_type: ClassVar[str] = "step_completed"
    run_id: str
    step: str
    attempt: int = Field(default=1, ge=1)
    result: Any = None
    duration_ms: float | None = None


class StepFailed(EventData):
    """The step's attempt failed."""

    event_type: ClassVar[str] = "step_failed"
    run_id: str
    step: str
    attempt: int = Field(default=1, ge=1)
    error: str
    duration_ms: float | None = None


class StepSkipped(EventData):
    """The step will not run (for example: an earlier condition was false)."""

    event_type: ClassVar[str] = "step_skipped"
    run_id: str
    step: str
    reason: str


class LogLine(BaseModel):
    """One structured line written by a handler."""

    model_config = ConfigDict(frozen=True)
    at: datetime
    level: str = "info"
    message: str
    data: dict[str, Any] | None = None


class StepLogWritten(EventData):
    """Log lines a handler wrote while executing a step (batched per result)."""

    event_type: ClassVar[str] = "step_log_written"
    run_id: str
    step: str
    attempt: int = Field(default=1, ge=1)
    lines: list[LogLine]
    truncated: int = Field(default=0, ge=0, description="Lines dropped to keep the event small.")


EVENT_TYPES: dict[str, type[EventData]] = {
    cls.event_type: cls
    for cls in (
        TriggerReceived,
        TriggerRejected,
        PipelineVersionCreated,
        RunCreated,
        RunStarted,
        RunCompleted,
        RunFailed,
        StepScheduled,
        StepStarted,
        StepCompleted,
        StepFailed,
        StepSkipped,
        StepLogWritten,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (event type, from version) -> converter to version + 1. Register one whenever a schema
# version is bumped; tests replay saved histories of the old version through it.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class UnknownEventType(ValueError):
    """An event type missing from the catalogue."""


def upcast(event_type: str, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
    """Bring ``data`` written at ``schema_version`` up to the current schema of its type."""
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise UnknownEventType(f"unknown event type {event_type!r}")
    version = schema_version
    while version < cls.schema_version:
        data = UPCASTERS[(event_type, version)](data)
        version += 1
    return data


def parse_event(event: StoredEvent) -> EventData:
    """Typed, current-version payload of a stored event."""
    cls = EVENT_TYPES.get(event.type)
    if cls is None:
        raise UnknownEventType(f"unknown event type {event.type!r}")
    return cls.model_validate(upcast(event.type, event.schema_version, dict(event.data)))
