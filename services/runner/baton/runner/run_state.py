"""The run state machine: a run's state folded from its stream, with illegal transitions refused.

Run:  pending -> running -> (waiting -> running) -> completed | failed | canceled
Step: pending -> scheduled -> running -> completed | failed ; pending | scheduled -> skipped
Pure: no I/O; ``evolve`` returns a new state and never mutates its input (structural
sharing: the definition and trigger are never mutated, so only the step map and the
context are copied per event).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import NewEvent, StoredEvent
from baton.events.stream_ids import run_stream

TERMINAL_RUN = frozenset({"completed", "failed", "canceled"})
TERMINAL_STEP = frozenset({"completed", "failed", "skipped"})

# event -> (statuses it may follow, status it leads to)
RUN_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "run_started": (frozenset({"pending"}), "running"),
    "run_completed": (frozenset({"running", "waiting"}), "completed"),
    "run_failed": (frozenset({"pending", "running", "waiting"}), "failed"),
}
STEP_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "step_scheduled": (frozenset({"pending"}), "scheduled"),
    "step_started": (frozenset({"scheduled"}), "running"),
    "step_completed": (frozenset({"scheduled", "running"}), "completed"),
    "step_failed": (frozenset({"scheduled", "running"}), "failed"),
    "step_skipped": (frozenset({"pending", "scheduled"}), "skipped"),
}


class IllegalTransition(ValueError):
    """An event that the run's current state does not allow."""


@dataclass
class StepState:
    """Where one step of a run is."""

    name: str
    index: int
    definition: dict[str, Any]
    status: str = "pending"
    attempt: int = 0

    @property
    def kind(self) -> str:
        """The step type ('action' or 'condition')."""
        return str(self.definition["type"])


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
    context: dict[str, Any] = field(default_factory=dict)
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


def evolve(state: RunState, event_type: str, data: dict[str, Any]) -> RunState:
    """The state after one event; raises IllegalTransition if the event is not allowed now."""
    new = replace(state, steps=dict(state.steps), context=dict(state.context), version=state.version + 1)
    if event_type == "run_created":
        if state.status != "new":
            raise IllegalTransition(f"run {state.run_id} already exists")
        new.tenant = data["tenant"]
        new.pipeline = data["pipeline"]
        new.pipeline_version = data["pipeline_version"]
        new.definition = data["definition"]
        new.trigger = data["trigger"]
        new.status = "pending"
        new.order = [step["name"] for step in new.definition["steps"]]
        new.steps = {
            step["name"]: StepState(step["name"], index, step) for index, step in enumerate(new.definition["steps"])
        }
        return new
    if state.status == "new":
        raise IllegalTransition(f"{event_type} before run_created")
    if event_type in RUN_TRANSITIONS:
        allowed_from, target = RUN_TRANSITIONS[event_type]
        if state.status not in allowed_from:
            raise IllegalTransition(f"{event_type} not allowed when the run is {state.status}")
        new.status = target
        return new
    if event_type in STEP_TRANSITIONS:
        if state.is_terminal:
            raise IllegalTransition(f"{event_type} on a {state.status} run")
        allowed_from, target = STEP_TRANSITIONS[event_type]
        current = new.steps.get(data["step"])
        if current is None:
            raise IllegalTransition(f"unknown step {data['step']!r}")
        if current.status not in allowed_from:
            raise IllegalTransition(f"{event_type} not allowed when step {current.name} is {current.status}")
        if event_type not in ("step_skipped", "step_scheduled") and data.get("attempt", 1) != current.attempt:
            raise IllegalTransition(f"{event_type} for attempt {data.get('attempt')}, step is on {current.attempt}")
        step = new.steps[current.name] = replace(current, status=target)
        if event_type == "step_scheduled":
            step.attempt = data.get("attempt", 1)
        if event_type == "step_completed" and step.kind == "action":
            new.context[step.name] = data.get("result")
        return new
    if event_type == "step_log_written":
        return new
    raise IllegalTransition(f"unknown run event {event_type!r}")


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
