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

EVENT_TYPES: dict[str, type[EventData]] = {}


class EventData(BaseModel):
    """Base of every event schema: its type name and current schema version.

    Defining a subclass registers it in ``EVENT_TYPES`` under its ``event_type``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" in cls.__dict__:
            if cls.event_type in EVENT_TYPES:
                raise TypeError(f"event type {cls.event_type!r} is defined twice")
            EVENT_TYPES[cls.event_type] = cls

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


class SkippedMatch(BaseModel):
    """A pipeline the trigger matched but did not start a run of, and why."""

    model_config = ConfigDict(frozen=True)
    pipeline: str
    reason: str = Field(description="e.g. 'pipeline draining', 'slice already has a run'.")
    run_id: str | None = Field(default=None, description="The existing run of the slice, when that is the reason.")


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
    skipped: list[SkippedMatch] = Field(default_factory=list, description="Matches that started no run.")
    pipeline: str | None = Field(default=None, description="The one pipeline the trigger targets, if any.")
    slice_key: str | None = Field(default=None, description="The slice (partition) the trigger is for.")
    rerun_slice: bool = Field(default=False, description="Start a run even if the slice already has one.")
    scheduled_at: datetime | None = Field(default=None, description="For schedule fires: the slot's due time.")
    replay_of: str | None = Field(default=None, description="For replays: the original trigger id.")
    dry_run: bool = Field(default=False, description="For replays: every action is skipped.")


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


class _PipelineOperatorAction(EventData):
    tenant: str
    name: str
    reason: str = ""
    actor: str | None = None


class PipelinePaused(_PipelineOperatorAction):
    """New runs of the pipeline queue as 'pending'; none starts until it is resumed."""

    event_type: ClassVar[str] = "pipeline_paused"


class PipelineResumed(_PipelineOperatorAction):
    """The pipeline accepts and starts runs again (queued runs start, first in first out)."""

    event_type: ClassVar[str] = "pipeline_resumed"


class PipelineDraining(_PipelineOperatorAction):
    """The pipeline accepts no new runs; the ones in flight or queued finish."""

    event_type: ClassVar[str] = "pipeline_draining"


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
    slice_key: str | None = Field(default=None, description="The slice (partition key) the run is for.")
    is_replay: bool = False
    replay_of: str | None = Field(default=None, description="For replays: the original trigger id.")
    dry_run: bool = Field(default=False, description="Replay that skips every action, recording what would run.")


class RunQueued(EventData):
    """The run waits as 'pending' for a slot (concurrency limit) or for its pipeline to resume."""

    event_type: ClassVar[str] = "run_queued"
    run_id: str
    reason: str


class RunStarted(EventData):
    """The run began executing its first step."""

    event_type: ClassVar[str] = "run_started"
    run_id: str


class RunWaiting(EventData):
    """Nothing of the run is on a worker: it waits for a timer (a delay or a retry backoff)."""

    event_type: ClassVar[str] = "run_waiting"
    run_id: str
    reason: str
    until: datetime | None = None


class RunResumed(EventData):
    """A timer the waiting run depended on fired; it is running again."""

    event_type: ClassVar[str] = "run_resumed"
    run_id: str
    reason: str = ""


class RunCanceled(EventData):
    """An operator canceled the run; late results of its running steps are ignored."""

    event_type: ClassVar[str] = "run_canceled"
    run_id: str
    reason: str = ""
    actor: str | None = None


class RunRetried(EventData):
    """A failed run goes again from its first failed step; completed steps keep their results."""

    event_type: ClassVar[str] = "run_retried"
    run_id: str
    steps: list[str] = Field(description="Steps reset to pending.")
    reason: str = ""
    actor: str | None = None
    dead_letter_id: str | None = Field(default=None, description="Set when this re-drives a dead letter.")


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
    code: str | None = Field(
        default=None,
        description="'step_failed', 'dead_lettered', 'timed_out', 'condition_error' or 'branch_failed'.",
    )


class StepScheduled(EventData):
    """A step was scheduled: dispatched to workers, or evaluated by the runner."""

    event_type: ClassVar[str] = "step_scheduled"
    run_id: str
    step: str
    index: int = Field(ge=0, description="Position of the step in the pipeline (depth first).")
    kind: str = Field(description="Step type: 'action', 'condition', 'delay' or 'parallel'.")
    attempt: int = Field(default=1, ge=1)
    parent: str | None = Field(default=None, description="The parallel step this step is a branch step of.")
    branch: int | None = Field(default=None, ge=0, description="Index of the branch within the parent.")


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
    timed_out: bool = Field(default=False, description="The runner failed the attempt: no result in time.")
    will_retry: bool = Field(default=False, description="Another attempt follows (see step_retry_scheduled).")


class StepRetryScheduled(EventData):
    """A failed attempt will be retried after ``delay_ms`` (a durable timer)."""

    event_type: ClassVar[str] = "step_retry_scheduled"
    run_id: str
    step: str
    attempt: int = Field(ge=2, description="The attempt that will run.")
    delay_ms: int = Field(ge=0)
    due_at: datetime
    timer_id: str


class StepDeadLettered(EventData):
    """A step ran out of attempts: the run is dead-lettered (listable, re-drivable)."""

    event_type: ClassVar[str] = "step_dead_lettered"
    run_id: str
    step: str
    attempts: int = Field(ge=1)
    reason: str
    last_error: str


class StepResultIgnored(EventData):
    """A worker's result arrived for an attempt that no longer counts (timed out, canceled, ...)."""

    event_type: ClassVar[str] = "step_result_ignored"
    run_id: str
    step: str
    attempt: int = Field(ge=1)
    reason: str
    ok: bool
    worker: str | None = None


class StepSkipped(EventData):
    """The step will not run (for example: an earlier condition was false)."""

    event_type: ClassVar[str] = "step_skipped"
    run_id: str
    step: str
    reason: str
    cause: str | None = Field(
        default=None,
        description="'condition', 'failure', 'canceled', 'replay' or 'dry_run' (None in old events: 'condition').",
    )
    would_run: dict[str, Any] | None = Field(default=None, description="Dry runs: what the step would have done.")


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
    batch: str | None = Field(default=None, description="'<worker>:<sequence>' of a live batch (dedup key).")


class TelemetrySample(BaseModel):
    """One telemetry sample a handler reported: rows, bytes, progress (0..1) and free-form data."""

    model_config = ConfigDict(frozen=True)
    at: datetime
    rows: int | None = None
    bytes: int | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    data: dict[str, Any] | None = None


class StepTelemetryRecorded(EventData):
    """Telemetry samples a handler reported while executing a step."""

    event_type: ClassVar[str] = "step_telemetry_recorded"
    run_id: str
    step: str
    attempt: int = Field(default=1, ge=1)
    samples: list[TelemetrySample]
    truncated: int = Field(default=0, ge=0, description="Samples dropped to keep the event small.")


# --- timers (the scheduler service fires them; the run's stream records them) ----------


class TimerScheduled(EventData):
    """The runner asked the scheduler for a durable timer: a delay, a backoff or a timeout."""

    event_type: ClassVar[str] = "timer_scheduled"
    run_id: str
    timer_id: str
    purpose: str = Field(description="'delay', 'backoff', 'step_timeout' or 'run_timeout'.")
    due_at: datetime
    step: str | None = None
    attempt: int | None = None


class TimerCanceled(EventData):
    """A pending timer no longer matters (the run was canceled)."""

    event_type: ClassVar[str] = "timer_canceled"
    run_id: str
    timer_id: str
    reason: str = ""


# --- schedules (scheduler service) -------------------------------------------------------
# One stream per scheduled pipeline, ``schedule-<tenant>.<pipeline>`` (stream_ids.schedule_stream).
# The scheduler appends with the stream's version as expected version, so of two replicas
# deciding the same slot only one records it (and only that one publishes its trigger).


class ScheduleActivated(EventData):
    """A pipeline's schedule is live with these cron strings; slots before ``since`` are not missed."""

    event_type: ClassVar[str] = "schedule_activated"
    tenant: str
    pipeline: str
    pipeline_version: int
    cron: list[str]
    timezone: str
    missed: str = Field(description="Missed-fire policy: 'skip', 'latest' or 'catch_up'.")
    since: datetime = Field(description="Missed-slot detection starts here (new or changed cron, re-enabled).")
    reason: str = Field(default="", description="'created', 'changed' or 'enabled'.")


class ScheduleDeactivated(EventData):
    """The schedule stopped: its pipeline was deleted or disabled, or the schedule removed or disabled."""

    event_type: ClassVar[str] = "schedule_deactivated"
    tenant: str
    pipeline: str
    reason: str


class ScheduleFired(EventData):
    """A slot fires: recorded (up to the scheduler's fire lead ahead), then its trigger is published at the slot."""

    event_type: ClassVar[str] = "schedule_fired"
    tenant: str
    pipeline: str
    slot: datetime = Field(description="The slot's due time (the trigger's scheduled_at).")
    kind: str = Field(description="'on_time', 'latest' (missed, policy latest) or 'catch_up' (missed, catch_up).")
    trigger_id: str
    idempotency_key: str
    trigger_type: str
    slice_key: str | None = None
    fired_at: datetime = Field(
        description="When the trigger goes out: the slot itself for a fire claimed ahead, later for a late one."
    )


class ScheduleSkipped(EventData):
    """Slots that did not fire: missed (policy skip, outside the window) or the pipeline was draining."""

    event_type: ClassVar[str] = "schedule_skipped"
    tenant: str
    pipeline: str
    first_slot: datetime
    last_slot: datetime
    count: int = Field(ge=1)
    count_exact: bool = Field(default=True, description="False: at least ``count`` slots (dense schedules).")
    reason: str


class ScheduleBackfilled(EventData):
    """A backfill published one trigger per slot in ``[from_time, to_time]``, each with its slice key."""

    event_type: ClassVar[str] = "schedule_backfilled"
    tenant: str
    pipeline: str
    from_time: datetime
    to_time: datetime
    count: int = Field(ge=0)
    first_slot: datetime | None = None
    last_slot: datetime | None = None
    actor: str | None = None


# --- monitors (monitor service) ----------------------------------------------------------


class MonitorVersionCreated(EventData):
    """A new version of a monitor definition was stored (PUT or ``baton apply``)."""

    event_type: ClassVar[str] = "monitor_version_created"
    tenant: str
    name: str
    version: int = Field(ge=1)
    definition: dict[str, Any]


class MonitorDeleted(EventData):
    """The monitor was deleted: it stops being evaluated; its ticks and cursor stay in the store."""

    event_type: ClassVar[str] = "monitor_deleted"
    tenant: str
    name: str
    version: int = Field(ge=1, description="The version that was current when it was deleted.")
    actor: str | None = None


class FiredTrigger(BaseModel):
    """One trigger a monitor published: its idempotency key, trigger id and target pipeline."""

    model_config = ConfigDict(frozen=True)
    idempotency_key: str
    trigger_id: str
    pipeline: str
    trigger_type: str
    observation_key: str = Field(description="What was fired for: a file, a run id, a digest of the observation.")


class MonitorTicked(EventData):
    """One evaluation of a monitor: what it saw, whether it fired and why (or the error it hit).

    ``cursor`` is the monitor's full cursor after this tick when the tick changed it, else None;
    the newest non-null cursor is what the monitor resumes from after a restart.
    """

    event_type: ClassVar[str] = "monitor_ticked"
    tenant: str
    name: str
    monitor_version: int = Field(ge=1)
    tick_id: str
    cause: str = Field(description="'interval', 'manual' (evaluate now), 'report' (gateway) or 'upstream'.")
    decision: str = Field(description="'fire', 'no_fire', 'error' or 'skipped'.")
    reason: str
    observed: Any = Field(default=None, description="The observation (bounded), or None when the check failed.")
    error: str | None = None
    fired: list[FiredTrigger] = Field(default_factory=list)
    cursor: dict[str, Any] | None = None
    started_at: datetime
    duration_ms: float = Field(ge=0)
    consecutive_errors: int = Field(default=0, ge=0)
    next_due_at: datetime | None = Field(default=None, description="When the next evaluation is due.")
    replica: str | None = Field(default=None, description="The monitor service replica that evaluated it.")


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
