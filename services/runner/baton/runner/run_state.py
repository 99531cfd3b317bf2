"""The run state machine: a run's state folded from its stream, with illegal transitions refused.

Run:  pending -> running <-> waiting -> completed | failed | canceled ; failed -> pending (retry)
Step: pending -> scheduled -> running -> completed | failed ; failed -> retrying -> scheduled ;
      pending | scheduled | running | retrying -> skipped
Pure: no I/O; ``evolve`` returns a new state and never mutates its input (structural
sharing: the definition and trigger are never mutated, so only the step map, the
context and the timer map are copied per event).

Steps form a tree: the top-level sequence, and for each ``parallel`` step one sequence
per branch. Every step has a unique name, so the state keeps them in one flat map and
remembers each sequence as a list of names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import NewEvent, StoredEvent
from baton.events.pipeline import TIMEOUT_GRACE_MS
from baton.events.stream_ids import run_stream

TERMINAL_RUN = frozenset({"completed", "failed", "canceled"})
TERMINAL_STEP = frozenset({"completed", "failed", "skipped"})
WORKER_KINDS = frozenset({"action", "condition"})
WAIT_TIMERS = frozenset({"delay", "backoff"})

# event -> (statuses it may follow, status it leads to)
RUN_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "run_queued": (frozenset({"pending"}), "pending"),
    "run_started": (frozenset({"pending"}), "running"),
    "run_waiting": (frozenset({"running"}), "waiting"),
    "run_resumed": (frozenset({"waiting"}), "running"),
    "run_completed": (frozenset({"running", "waiting"}), "completed"),
    "run_failed": (frozenset({"pending", "running", "waiting"}), "failed"),
    "run_canceled": (frozenset({"pending", "running", "waiting"}), "canceled"),
    "run_retried": (frozenset({"failed"}), "pending"),
}
STEP_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "step_scheduled": (frozenset({"pending", "retrying"}), "scheduled"),
    "step_started": (frozenset({"scheduled"}), "running"),
    "step_completed": (frozenset({"scheduled", "running"}), "completed"),
    "step_failed": (frozenset({"scheduled", "running"}), "failed"),
    "step_retry_scheduled": (frozenset({"failed"}), "retrying"),
    "step_dead_lettered": (frozenset({"failed"}), "failed"),
    "step_skipped": (frozenset({"pending", "scheduled", "running", "retrying"}), "skipped"),
}
# Events that record something about a run without moving it; allowed in any state.
RECORDS = frozenset({"step_log_written", "step_telemetry_recorded"})


class IllegalTransition(ValueError):
    """An event that the run's current state does not allow."""


@dataclass(frozen=True)
class Timer:
    """A durable timer the run waits on (or guards itself with)."""

    timer_id: str
    purpose: str
    due_at: datetime
    step: str | None = None
    attempt: int | None = None


@dataclass
class StepState:
    """Where one step of a run is."""

    name: str
    index: int
    definition: dict[str, Any]
    parent: str | None = None
    branch: int | None = None
    status: str = "pending"
    attempt: int = 0
    first_attempt: int = 1
    skip_cause: str | None = None
    timed_out: bool = False
    error: str | None = None

    @property
    def kind(self) -> str:
        """The step type ('action', 'condition', 'delay' or 'parallel')."""
        return str(self.definition["type"])

    @property
    def on_worker(self) -> bool:
        """True when this step kind runs on a worker (actions and python conditions)."""
        return self.kind == "action" or (self.kind == "condition" and self.definition.get("if") is None)

    @property
    def attempts_used(self) -> int:
        """Attempts made since the step's budget was last reset (by a run retry)."""
        return max(self.attempt - self.first_attempt + 1, 0)

    def timeout_ms(self) -> int | None:
        """The runner-side timeout of one attempt: explicit, else the action's own plus a grace period."""
        if not self.on_worker:
            return None
        explicit = self.definition.get("timeout_ms")
        if explicit is not None:
            return int(explicit)
        own = (self.definition.get("with") or {}).get("timeout_ms")
        return int(own) + TIMEOUT_GRACE_MS if own is not None else None


@dataclass
class RunState:
    """Everything the runner needs to decide a run's next events."""

    run_id: str
    tenant: str = ""
    pipeline: str = ""
    pipeline_version: int = 0
    definition: dict[str, Any] = field(default_factory=dict)
    trigger: dict[str, Any] = field(default_factory=dict)
    status: str = "new"
    steps: dict[str, StepState] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    branches: dict[str, list[list[str]]] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    timers: dict[str, Timer] = field(default_factory=dict)
    settled: frozenset[tuple[str, int]] = frozenset()
    ignored: frozenset[tuple[str, int]] = frozenset()
    log_batches: frozenset[str] = frozenset()
    slice_key: str | None = None
    is_replay: bool = False
    replay_of: str | None = None
    dry_run: bool = False
    starts: int = 0
    version: int = 0

    @property
    def stream_id(self) -> str:
        """The run's stream in the event store."""
        return run_stream(self.run_id)

    @property
    def is_terminal(self) -> bool:
        """True once the run completed, failed or was canceled."""
        return self.status in TERMINAL_RUN

    @property
    def config(self) -> dict[str, Any]:
        """The pipeline config frozen with the run."""
        return dict(self.definition.get("config", {}))

    def sequence_of(self, step: StepState) -> list[str]:
        """The sequence (top level or one branch) a step belongs to."""
        if step.parent is None:
            return self.order
        return self.branches[step.parent][step.branch or 0]

    def ancestors(self, name: str) -> list[str]:
        """The parallel steps enclosing ``name``, innermost first."""
        found: list[str] = []
        parent = self.steps[name].parent
        while parent is not None:
            found.append(parent)
            parent = self.steps[parent].parent
        return found

    def descendants(self, name: str) -> list[str]:
        """Every step inside the branches of parallel step ``name``."""
        found: list[str] = []
        for branch in self.branches.get(name, []):
            for child in branch:
                found.append(child)
                found.extend(self.descendants(child))
        return found


def _index_steps(
    steps: list[dict[str, Any]], parent: str | None, branch: int | None, state: RunState, counter: list[int]
) -> list[str]:
    names: list[str] = []
    for step in steps:
        name = step["name"]
        names.append(name)
        state.steps[name] = StepState(name, counter[0], step, parent, branch)
        counter[0] += 1
        if step["type"] == "parallel":
            state.branches[name] = [
                _index_steps(b["steps"], name, i, state, counter) for i, b in enumerate(step["branches"])
            ]
    return names


def _drop_timers(new: RunState, step: str, attempt: int | None = None) -> None:
    stale = [
        t.timer_id
        for t in new.timers.values()
        if t.step == step and (attempt is None or t.attempt == attempt or t.purpose == "delay")
    ]
    if stale:
        new.timers = {k: v for k, v in new.timers.items() if k not in stale}


def evolve(state: RunState, event_type: str, data: dict[str, Any]) -> RunState:
    """The state after one event; raises IllegalTransition if the event is not allowed now."""
    if event_type == "run_created":
        if state.status != "new":
            raise IllegalTransition(f"run {state.run_id} already exists")
        new = RunState(run_id=state.run_id, version=state.version + 1)
        new.tenant = data["tenant"]
        new.pipeline = data["pipeline"]
        new.pipeline_version = data["pipeline_version"]
        new.definition = data["definition"]
        new.trigger = data["trigger"]
        new.slice_key = data.get("slice_key")
        new.is_replay = bool(data.get("is_replay", False))
        new.replay_of = data.get("replay_of")
        new.dry_run = bool(data.get("dry_run", False))
        new.status = "pending"
        new.order = _index_steps(new.definition["steps"], None, None, new, [0])
        return new
    if state.status == "new":
        raise IllegalTransition(f"{event_type} before run_created")
    new = replace(state, version=state.version + 1)
    if event_type in RECORDS:
        if data.get("batch"):
            new.log_batches = state.log_batches | {f"{data['step']}:{data.get('attempt', 1)}:{data['batch']}"}
        return new
    if event_type in RUN_TRANSITIONS:
        allowed_from, target = RUN_TRANSITIONS[event_type]
        if state.status not in allowed_from:
            raise IllegalTransition(f"{event_type} not allowed when the run is {state.status}")
        new.status = target
        if event_type == "run_started":
            new.starts = state.starts + 1
        if target in TERMINAL_RUN:
            new.timers = {}
        if event_type == "run_retried":
            new.timers = {}
            new.steps = dict(state.steps)
            for name in data["steps"]:
                old = new.steps[name]
                new.steps[name] = replace(
                    old, status="pending", first_attempt=old.attempt + 1, skip_cause=None, timed_out=False,
                    error=None,
                )
        return new
    if event_type == "timer_scheduled":
        if state.is_terminal:
            raise IllegalTransition(f"timer_scheduled on a {state.status} run")
        new.timers = {
            **state.timers,
            data["timer_id"]: Timer(
                data["timer_id"], data["purpose"], _as_datetime(data["due_at"]), data.get("step"), data.get("attempt")
            ),
        }
        return new
    if event_type == "timer_canceled":
        new.timers = {k: v for k, v in state.timers.items() if k != data["timer_id"]}
        return new
    if event_type == "step_result_ignored":
        new.ignored = state.ignored | {(data["step"], data["attempt"])}
        return new
    if event_type in STEP_TRANSITIONS:
        return _evolve_step(state, new, event_type, data)
    raise IllegalTransition(f"unknown run event {event_type!r}")


def _evolve_step(state: RunState, new: RunState, event_type: str, data: dict[str, Any]) -> RunState:
    if state.is_terminal:
        raise IllegalTransition(f"{event_type} on a {state.status} run")
    allowed_from, target = STEP_TRANSITIONS[event_type]
    current = state.steps.get(data["step"])
    if current is None:
        raise IllegalTransition(f"unknown step {data['step']!r}")
    if current.status not in allowed_from:
        raise IllegalTransition(f"{event_type} not allowed when step {current.name} is {current.status}")
    attempt = data.get("attempt")
    if event_type == "step_scheduled":
        attempt = current.attempt + 1 if attempt is None else attempt
        if attempt <= current.attempt:
            raise IllegalTransition(f"step_scheduled for attempt {attempt}, step was on {current.attempt}")
    elif event_type == "step_retry_scheduled":
        if attempt != current.attempt + 1:
            raise IllegalTransition(f"retry of attempt {attempt}, step is on {current.attempt}")
    elif event_type != "step_skipped" and attempt is not None and attempt != current.attempt:
        raise IllegalTransition(f"{event_type} for attempt {attempt}, step is on {current.attempt}")
    new.steps = dict(state.steps)
    step = new.steps[current.name] = replace(current, status=target)
    if event_type == "step_scheduled":
        step.attempt = attempt or 1
        step.timed_out = False
        step.error = None
        new.timers = {k: v for k, v in state.timers.items() if not (v.step == step.name and v.purpose == "backoff")}
    elif event_type == "step_retry_scheduled":
        due = _as_datetime(data["due_at"])
        new.timers = {
            **state.timers,
            data["timer_id"]: Timer(data["timer_id"], "backoff", due, step.name, attempt),
        }
    elif event_type in ("step_completed", "step_failed", "step_skipped"):
        _drop_timers(new, step.name, None if event_type == "step_skipped" else step.attempt)
        if event_type == "step_completed":
            if step.kind == "action":
                new.context = {**state.context, step.name: data.get("result")}
            if step.on_worker:
                new.settled = state.settled | {(step.name, step.attempt)}
        elif event_type == "step_failed":
            step.timed_out = bool(data.get("timed_out", False))
            step.error = data.get("error")
            if step.on_worker and not step.timed_out:
                new.settled = state.settled | {(step.name, step.attempt)}
        else:
            step.skip_cause = data.get("cause") or "condition"
    return new


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def fold(run_id: str, events: list[StoredEvent]) -> RunState:
    """Rebuild a run's state from its stream."""
    state = RunState(run_id=run_id)
    for event in events:
        state = evolve(state, event.type, upcast(event.type, event.schema_version, dict(event.data)))
    return state


def evolve_new(state: RunState, events: list[NewEvent]) -> RunState:
    """Apply freshly decided events (before they are stored)."""
    for event in events:
        state = evolve(state, event.type, event.data)
    return state
