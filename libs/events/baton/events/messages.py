"""Messages between the runner and workers (not events: they are not stored as such).

The runner publishes a ``WorkItem`` on ``<prefix>.work.<target>.<tenant>.<pipeline>``
(queue group ``workers``); a worker answers on ``work.reply_subject`` with a
``StepProgress`` when it starts, ``StepLogBatch`` messages while a long step writes logs
or telemetry (at most one per flush interval), and a ``StepOutcome`` when it ends.
Durability comes from the event store: a lost message is re-dispatched from the run's
recorded state (a lost log batch is lost: logs are best-effort until the outcome).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from baton.events.catalogue import LogLine, TelemetrySample

WORKER_QUEUE_GROUP = "workers"
MAX_LOG_LINES = 200
MAX_LOG_LINE_CHARS = 4_000
MAX_RESULT_BYTES = 256_000
MAX_TELEMETRY_SAMPLES = 100
"""Samples kept per step attempt: the first half as reported, then the latest half."""


class WorkItem(BaseModel):
    """One attempt of one step, for a worker to execute."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["work"] = "work"
    tenant: str
    run_id: str
    pipeline: str
    pipeline_version: int
    step: str
    step_type: Literal["action", "condition"]
    uses: str
    settings: dict[str, Any] = Field(description="The step's 'with' block.")
    attempt: int = 1
    idempotency_key: str = Field(description="'run_id:step:attempt': stable across redeliveries.")
    trigger: dict[str, Any]
    context: dict[str, Any] = Field(description="Results of earlier steps by step name.")
    config: dict[str, Any]
    reply_subject: str
    traceparent: str | None = None
    partition_key: str | None = Field(
        default=None, description="The run's slice key (trigger slice_key), if the run is for a slice."
    )


class StepProgress(BaseModel):
    """A worker started the step."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["started"] = "started"
    run_id: str
    step: str
    attempt: int
    worker: str
    started_at: datetime


class StepOutcome(BaseModel):
    """A worker finished the step: success with a result, or failure with an error."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["outcome"] = "outcome"
    run_id: str
    step: str
    attempt: int
    worker: str
    ok: bool
    result: Any = None
    error: str | None = None
    started_at: datetime
    duration_ms: float
    logs: list[LogLine] = Field(default_factory=list, description="Lines not already sent in a StepLogBatch.")
    logs_truncated: int = Field(default=0, description="Lines dropped to bound the step's log.")
    telemetry: list[TelemetrySample] = Field(
        default_factory=list, description="Samples not already sent in a StepLogBatch."
    )
    telemetry_truncated: int = Field(default=0, description="Samples dropped to bound the step's telemetry.")


class StepLogBatch(BaseModel):
    """Log lines and telemetry a still-running step wrote since the previous batch."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["logs"] = "logs"
    run_id: str
    step: str
    attempt: int
    worker: str
    sequence: int = Field(
        default=1, ge=1, description="1, 2, ... per attempt and worker: (worker, sequence) names a batch."
    )
    logs: list[LogLine] = Field(default_factory=list)
    logs_truncated: int = Field(default=0, description="Lines dropped to keep this message under the size limit.")
    telemetry: list[TelemetrySample] = Field(default_factory=list)
    telemetry_truncated: int = Field(default=0, description="Samples dropped to keep this message small.")


WorkerReply = StepProgress | StepOutcome | StepLogBatch
