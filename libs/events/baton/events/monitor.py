"""Monitor definitions: what users write (YAML ``kind: monitor``, or JSON on PUT), and the messages
the API and the monitor service exchange about monitors.

A monitor watches something outside Baton (a directory, an HTTP endpoint, a SQL query, an
upstream pipeline, a gateway's reports) and fires a trigger for one pipeline when its
condition holds for an observation it has not fired for yet. Validation is discriminated
on ``type``, so an error names the exact field: ``file.settings.directory``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from baton.events.expressions import ExpressionError, compile_expression
from baton.events.pipeline import NAME_PATTERN

MONITOR_TYPES = ("file", "http", "sql", "upstream", "report")
MIN_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 7 * 86_400.0
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}

# The names a condition may use, per monitor type; ``observation`` is always the whole observation.
CONDITION_NAMES: dict[str, tuple[str, ...]] = {
    "file": ("observation", "files"),
    "http": ("observation", "response"),
    "sql": ("observation", "result"),
    "upstream": ("observation", "run"),
    "report": ("observation", "report"),
}


def parse_duration_seconds(value: Any) -> float:
    """Seconds from a number, '30s' / '5m' / '1h' / '250ms', or an ISO 8601 duration via timedelta."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
        try:
            return TypeAdapter(timedelta).validate_python(value).total_seconds()
        except ValueError:
            pass
    raise ValueError("a duration must be a number of seconds or a string like '30s', '5m', '1h'")


class FileSettings(BaseModel):
    """A ``file`` monitor: files matching a glob in one directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    directory: str = Field(min_length=1, description="Directory to look in (on the monitor service's host).")
    glob: str = Field(default="*", min_length=1, description="Pattern relative to the directory, e.g. '*.csv'.")
    recursive: bool = Field(default=False, description="Also match in subdirectories ('**' in the glob).")
    mode: Literal["new", "count"] = Field(
        default="new",
        description="'new': fire for files not seen before (name, mtime, size); "
        "'count': fire when the number of matching files reaches the threshold (or the condition holds).",
    )
    each_file: bool = Field(default=True, description="'new' mode: one trigger per new file (else one per batch).")
    include_existing: bool = Field(
        default=True, description="'new' mode: files already there at the first evaluation count as new."
    )
    max_files: int = Field(default=10_000, ge=1, le=100_000, description="Files remembered in the cursor.")


class HttpCheckSettings(BaseModel):
    """An ``http`` monitor: GET one URL; the condition sees ``response.status`` and ``response.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(min_length=1, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_ms: int = Field(default=10_000, ge=1, le=60_000)


class SqlSettings(BaseModel):
    """A ``sql`` monitor: one query through SQLAlchemy, on the monitor's ``connection``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    query: str = Field(min_length=1, max_length=20_000, description="Read-only SQL; bind nothing.")
    mode: Literal["scalar", "rows"] = Field(
        default="scalar", description="'scalar': the first column of the first row; 'rows': every row (bounded)."
    )
    max_rows: int = Field(default=100, ge=1, le=10_000)
    timeout_ms: int = Field(default=10_000, ge=1, le=300_000)


class UpstreamSettings(BaseModel):
    """An ``upstream`` monitor: fires when a run of another pipeline completes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pipeline: str = Field(pattern=NAME_PATTERN, description="The upstream pipeline whose completed runs fire.")


class ReportSettings(BaseModel):
    """A ``report`` monitor: fires from reports a gateway posts (it ran the check behind its firewall)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _MonitorBase(BaseModel):
    """Fields every monitor has."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=2000)
    pipeline: str = Field(pattern=NAME_PATTERN, description="The pipeline a fire starts (it must exist).")
    interval: float = Field(
        default=30.0, ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS,
        description="Seconds between evaluations (down to 1); '30s', '5m' and '1h' are accepted.",
    )
    condition: str | None = Field(
        default=None, description="CEL expression over the observation that must be true to fire."
    )
    threshold: float | None = Field(
        default=None, description="Shortcut: fire when the observed number (file count, SQL value) >= threshold."
    )
    connection: str | None = Field(
        default=None, max_length=2000,
        description="sql: a SQLAlchemy URL, or the name of a connection configured on the monitor service.",
    )
    runs_on: Literal["managed", "gateway", "inherit"] = Field(
        default="inherit",
        description="'managed': the monitor service evaluates it; 'gateway': only gateway reports count; "
        "'inherit': managed (gateways per pipeline arrive later).",
    )
    enabled: bool = True
    payload: dict[str, Any] = Field(
        default_factory=dict, description="Fields merged into every trigger payload, beside 'observation'."
    )

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration_seconds(value)

    @field_validator("condition")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_expression(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @property
    def evaluated_by_service(self) -> bool:
        """True when the monitor service evaluates it on its interval (not only from gateway reports)."""
        return self.runs_on != "gateway" and getattr(self, "type", None) != "report"

    def to_document(self) -> dict[str, Any]:
        """The JSON form (the same field names as the YAML)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def _refuse(self, field: str, why: str) -> None:
        """Fail validation at ``field`` (a dotted path), so the error's location names it."""
        raise ValidationError.from_exception_data(
            type(self).__name__,
            [
                InitErrorDetails(
                    type=PydanticCustomError("monitor_setting", why),
                    loc=tuple(field.split(".")),
                    input=getattr(self, field.split(".")[0], None),
                )
            ],
        )


class FileMonitor(_MonitorBase):
    """Files landing in a directory."""

    type: Literal["file"]
    settings: FileSettings

    @model_validator(mode="after")
    def _needs_threshold_for_count(self) -> FileMonitor:
        if self.settings.mode == "count" and self.threshold is None and self.condition is None:
            self._refuse("threshold", "a 'count' file monitor needs a threshold or a condition")
        if self.connection is not None:
            self._refuse("connection", "only sql monitors use a connection")
        return self


class HttpMonitor(_MonitorBase):
    """An HTTP endpoint's status and JSON body."""

    type: Literal["http"]
    settings: HttpCheckSettings

    @model_validator(mode="after")
    def _no_threshold(self) -> HttpMonitor:
        if self.threshold is not None:
            self._refuse("threshold", "http monitors use a condition (e.g. 'response.json.ready == true')")
        if self.connection is not None:
            self._refuse("connection", "only sql monitors use a connection")
        return self


class SqlMonitor(_MonitorBase):
    """A SQL query's value or rows."""

    type: Literal["sql"]
    settings: SqlSettings

    @model_validator(mode="after")
    def _needs_connection(self) -> SqlMonitor:
        if self.connection is None:
            self._refuse("connection", "a sql monitor needs a connection (a SQLAlchemy URL or a configured name)")
        return self


class UpstreamMonitor(_MonitorBase):
    """Another pipeline's completed runs."""

    type: Literal["upstream"]
    settings: UpstreamSettings

    @model_validator(mode="after")
    def _plain(self) -> UpstreamMonitor:
        if self.threshold is not None:
            self._refuse("threshold", "upstream monitors fire per completed run; use a condition on 'run'")
        if self.connection is not None:
            self._refuse("connection", "only sql monitors use a connection")
        if self.settings.pipeline == self.pipeline:
            self._refuse("settings.pipeline", "a pipeline cannot be its own upstream")
        return self


class ReportMonitor(_MonitorBase):
    """Checks a gateway runs and reports (``POST /api/agent/monitors/{id}/report``)."""

    type: Literal["report"]
    settings: ReportSettings = Field(default_factory=ReportSettings)

    @model_validator(mode="after")
    def _plain(self) -> ReportMonitor:
        if self.connection is not None:
            self._refuse("connection", "only sql monitors use a connection")
        return self


AnyMonitor = FileMonitor | HttpMonitor | SqlMonitor | UpstreamMonitor | ReportMonitor
MonitorDefinition = Annotated[AnyMonitor, Field(discriminator="type")]
MONITOR_ADAPTER: TypeAdapter[AnyMonitor] = TypeAdapter(MonitorDefinition)


def parse_monitor(document: dict[str, Any]) -> AnyMonitor:
    """Validate a monitor document; raises pydantic's ValidationError naming the field."""
    return MONITOR_ADAPTER.validate_python(document)


# --- messages between the API and the monitor service (NATS request/reply) ----------------


class EvaluateRequest(BaseModel):
    """API -> monitor service: evaluate this monitor now ("Run checks")."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: str
    name: str
    actor: str | None = None


class GatewayReport(BaseModel):
    """A gateway's report of a check it ran: the observation, or the error it hit."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    report_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Names the report; the same id twice fires at most once. Default: the observation's digest.",
    )
    observation: dict[str, Any] = Field(default_factory=dict, description="What the gateway observed (JSON).")
    error: str | None = Field(default=None, max_length=4000, description="The check failed on the gateway.")
    gateway: str | None = Field(default=None, max_length=200, description="Which gateway sent it.")


class ReportRequest(BaseModel):
    """API -> monitor service: a gateway report for one monitor."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: str
    name: str
    report: GatewayReport


class MonitorReply(BaseModel):
    """The monitor service's answer to an evaluate or report request."""

    model_config = ConfigDict(frozen=True)
    status: int = Field(description="200 evaluated, 202 skipped (with reason), 404 unknown, 409 not allowed.")
    message: str
    tick: dict[str, Any] | None = Field(default=None, description="The tick event's data, when one was recorded.")
