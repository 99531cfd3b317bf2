"""Pipeline definitions: the document users write in YAML (or PUT as JSON).

Validation here is complete enough that a definition which passes can run: step
names are unique, every ``uses`` is a known action kind with the settings it needs,
and every condition expression compiles.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from baton.events.expressions import ExpressionError, compile_expression
from baton.events.schedule import ScheduleSpec

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
STEP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$"
PYTHON_REF_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ACTION_KINDS = ("shell", "http", "python")
STEP_KINDS = ("action", "condition", "delay", "parallel")
MAX_DELAY_MS = 30 * 86_400_000
MAX_TIMEOUT_MS = 7 * 86_400_000
# A step without its own ``timeout_ms`` times out this long after its action's own
# timeout, so a worker that dies silently never leaves a step running forever.
TIMEOUT_GRACE_MS = 30_000
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


class TriggerMatch(BaseModel):
    """Which triggers start the pipeline: a type, optionally narrowed by environment and resource type."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    environment: str | None = None
    resource_type: str | None = None


class ShellSettings(BaseModel):
    """Settings of a ``shell`` action."""

    model_config = ConfigDict(extra="forbid")
    command: str | list[str] = Field(description="A shell string (run by /bin/sh) or an argv list.")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout_ms: int = Field(default=300_000, ge=1, le=86_400_000)


class HttpSettings(BaseModel):
    """Settings of an ``http`` action."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, pattern=r"^https?://")
    method: str = "GET"
    json_body: Any = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    expected_status: list[int] | int | None = Field(
        default=None, description="Status code(s) that count as success; default any 2xx."
    )
    timeout_ms: int = Field(default=30_000, ge=1, le=3_600_000)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        upper = value.upper()
        if upper not in HTTP_METHODS:
            raise ValueError(f"method must be one of {', '.join(HTTP_METHODS)}")
        return upper


class PythonSettings(BaseModel):
    """Settings of a ``python`` action or condition: a ``module:function`` reference."""

    model_config = ConfigDict(extra="allow")
    ref: str = Field(description="'package.module:function', sync or async, receiving a StepContext.")
    timeout_ms: int = Field(default=300_000, ge=1, le=86_400_000)

    @field_validator("ref")
    @classmethod
    def _ref_shape(cls, value: str) -> str:
        if not PYTHON_REF_RE.match(value):
            raise ValueError("ref must look like 'package.module:function'")
        return value


class RetryPolicy(BaseModel):
    """How often a failed (or timed-out) step is attempted, and how long to wait in between.

    The wait before attempt ``n + 1`` is ``backoff_ms * factor ** (n - 1)``, capped at
    ``max_backoff_ms``, then spread by up to ``jitter`` (a fraction) either way.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_attempts: int = Field(default=1, ge=1, le=10, description="Attempts in all, the first included.")
    backoff_ms: int = Field(default=1_000, ge=0, le=86_400_000, description="Wait before the second attempt.")
    factor: float = Field(default=2.0, ge=1.0, le=10.0, description="Exponential growth of the wait per attempt.")
    max_backoff_ms: int = Field(default=3_600_000, ge=0, le=86_400_000, description="Cap on one wait.")
    jitter: float = Field(default=0.0, ge=0.0, le=1.0, description="Random spread, as a fraction of the wait.")

    def backoff_for(self, failed_attempt: int, unit_random: float) -> int:
        """Milliseconds to wait after attempt ``failed_attempt`` failed; ``unit_random`` is in [0, 1)."""
        base = min(self.backoff_ms * self.factor ** max(failed_attempt - 1, 0), self.max_backoff_ms)
        spread = base * self.jitter * (2 * unit_random - 1)
        return max(round(base + spread), 0)


class _StepBase(BaseModel):
    """Fields every step has."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=STEP_NAME_PATTERN, description="Unique in the pipeline, branches included.")


class _WorkStep(_StepBase):
    """Fields of steps executed on a worker: retry policy, timeout and replay safety."""

    retry: RetryPolicy | None = Field(default=None, description="Overrides the pipeline's retry policy.")
    timeout_ms: int | None = Field(
        default=None, ge=1, le=MAX_TIMEOUT_MS,
        description="The runner fails the attempt when no result arrived by then (default: the action's "
        "own timeout plus a grace period).",
    )
    replay_safe: bool = Field(
        default=True, description="False: skipped when the run is a replay (e.g. it sends emails or charges cards)."
    )


class _Action(_WorkStep):
    """A step that does work on a worker and stores its result under its name."""

    type: Literal["action"]


class ShellAction(_Action):
    """An action running a shell command."""

    uses: Literal["shell"]
    with_: ShellSettings = Field(alias="with")


class HttpAction(_Action):
    """An action making one HTTP request."""

    uses: Literal["http"]
    with_: HttpSettings = Field(alias="with")


class PythonAction(_Action):
    """An action calling a python function."""

    uses: Literal["python"]
    with_: PythonSettings = Field(alias="with")


# Discriminated on `uses`, so an error points at the exact setting: steps.1.action.http.with.url.
ActionStep = Annotated[ShellAction | HttpAction | PythonAction, Field(discriminator="uses")]


class ConditionStep(_WorkStep):
    """A step that decides whether the run goes on: a CEL expression or a python reference.

    ``on_false`` says what a false result does: ``complete`` ends the enclosing sequence
    (the run, or the branch it is in), ``skip`` skips the next step, N skips the next N.
    """

    type: Literal["condition"]
    if_: str | None = Field(default=None, alias="if", description="CEL expression over trigger/context/config.")
    uses: Literal["python"] | None = None
    with_: PythonSettings | None = Field(default=None, alias="with")
    on_false: Literal["complete", "skip"] | Annotated[int, Field(ge=1, le=200)] = "complete"

    @field_validator("if_")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_expression(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ConditionStep:
        if (self.if_ is None) == (self.uses is None):
            raise ValueError("a condition needs exactly one of 'if' (an expression) or 'uses: python'")
        if self.uses is not None and self.with_ is None:
            raise ValueError("a python condition needs 'with: {ref: module:function}'")
        return self


class DelayStep(_StepBase):
    """A durable wait: the run is ``waiting`` until the scheduler's timer fires."""

    type: Literal["delay"]
    delay_ms: int = Field(ge=0, le=MAX_DELAY_MS, description="How long to wait, up to 30 days.")


class Branch(BaseModel):
    """One branch of a parallel step: steps run in order, concurrently with the other branches."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=63)
    steps: list[Step] = Field(min_length=1, max_length=200)


class ParallelStep(_StepBase):
    """Branches that run concurrently; done when all are, failed as soon as one fails."""

    type: Literal["parallel"]
    branches: list[Branch] = Field(min_length=2, max_length=50)


def _step_type(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


# A callable discriminator on the outer union: its JSON schema is a plain oneOf, which
# OpenAPI tools accept, while errors still carry the step type in their location.
Step = Annotated[
    Annotated[ActionStep, Tag("action")]
    | Annotated[ConditionStep, Tag("condition")]
    | Annotated[DelayStep, Tag("delay")]
    | Annotated[ParallelStep, Tag("parallel")],
    Discriminator(_step_type),
]
Branch.model_rebuild()
ParallelStep.model_rebuild()


def walk_steps(steps: list[Any]) -> list[Any]:
    """Every step of a sequence, depth first, parallel steps before their branches' steps."""
    found: list[Any] = []
    for step in steps:
        found.append(step)
        if isinstance(step, ParallelStep):
            for branch in step.branches:
                found.extend(walk_steps(branch.steps))
    return found


class PipelineDefinition(BaseModel):
    """A pipeline: trigger match, config and ordered steps. Versioned by the store."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=2000)
    trigger: TriggerMatch
    config: dict[str, Any] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1, max_length=200)
    enabled: bool = True
    retry: RetryPolicy | None = Field(default=None, description="Default retry policy of every worker step.")
    timeout_ms: int | None = Field(
        default=None, ge=1, le=MAX_DELAY_MS + MAX_TIMEOUT_MS, description="The whole run fails after this long."
    )
    max_concurrent_runs: int | None = Field(
        default=None, ge=1, le=100_000, description="Runs beyond this many wait as 'pending', first in first out."
    )
    schedule: ScheduleSpec | None = Field(default=None, description="Cron schedule(s) that trigger this pipeline.")

    @field_validator("steps")
    @classmethod
    def _unique_names(cls, steps: list[Step]) -> list[Step]:
        seen: set[str] = set()
        for step in walk_steps(steps):
            if step.name in seen:
                raise ValueError(f"duplicate step name {step.name!r}")
            seen.add(step.name)
        return steps

    def to_document(self) -> dict[str, Any]:
        """The JSON form, with the same field names as the YAML ('with', 'if')."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def matches(
        self, trigger_type: str, environment: str | None, resource_type: str | None
    ) -> bool:
        """True when an enabled pipeline's trigger filter accepts these trigger fields."""
        match = self.trigger
        return (
            self.enabled
            and match.type == trigger_type
            and (match.environment is None or match.environment == environment)
            and (match.resource_type is None or match.resource_type == resource_type)
        )
