"""Run logic as pure decisions: ``decide(state, command) -> events`` (plus which steps to dispatch).

The runner loads a run's state, calls one of these functions, appends the events with
the state's version as the expected version, then dispatches. Redelivered or late
commands decide nothing, which is what makes every consumer idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from baton.events.catalogue import (
    EventData,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepLogWritten,
    StepScheduled,
    StepSkipped,
    StepStarted,
)
from baton.events.envelope import EventMetadata, NewEvent
from baton.events.expressions import ExpressionError, evaluate_condition
from baton.events.messages import StepOutcome, StepProgress
from baton.runner.run_state import RunState, evolve


@dataclass
class Decision:
    """Events decided for one run, the state they lead to, and the steps to hand to workers."""

    state: RunState
    now: datetime
    metadata: EventMetadata
    events: list[NewEvent] = field(default_factory=list)
    dispatch: list[str] = field(default_factory=list)

    def emit(self, data: EventData) -> None:
        """Record an event and move the state past it (refusing illegal transitions)."""
        event = data.to_event(self.metadata, self.now)
        self.state = evolve(self.state, event.type, event.data)
        self.events.append(event)


def create_run(
    run_id: str,
    tenant: str,
    pipeline: str,
    pipeline_version: int,
    definition: dict[str, Any],
    trigger: dict[str, Any],
    now: datetime,
    metadata: EventMetadata,
) -> Decision:
    """A new run for a matched trigger: created, started, and its first step(s) decided."""
    decision = Decision(RunState(run_id=run_id), now, metadata)
    decision.emit(
        RunCreated(
            run_id=run_id,
            tenant=tenant,
            pipeline=pipeline,
            pipeline_version=pipeline_version,
            definition=definition,
            trigger=trigger,
        )
    )
    decision.emit(RunStarted(run_id=run_id))
    advance(decision)
    return decision


def advance(decision: Decision) -> None:
    """Move the run forward from its current state until it waits on a worker or ends.

    CEL conditions are evaluated here, without a worker hop: they are side-effect free.
    """
    while not decision.state.is_terminal:
        state = decision.state
        busy = [s for s in state.steps.values() if s.status in ("scheduled", "running")]
        if busy:
            return
        pending = next((state.steps[name] for name in state.order if state.steps[name].status == "pending"), None)
        if pending is None:
            decision.emit(RunCompleted(run_id=state.run_id, reason="all steps completed"))
            return
        definition = pending.definition
        decision.emit(
            StepScheduled(run_id=state.run_id, step=pending.name, index=pending.index, kind=pending.kind, attempt=1)
        )
        if pending.kind == "condition" and definition.get("if") is not None:
            _evaluate_inline_condition(decision, pending.name, definition["if"])
            continue
        decision.dispatch.append(pending.name)
        return


def _evaluate_inline_condition(decision: Decision, step: str, expression: str) -> None:
    state = decision.state
    try:
        value = evaluate_condition(expression, condition_variables(state))
    except ExpressionError as exc:
        decision.emit(StepFailed(run_id=state.run_id, step=step, attempt=1, error=str(exc)))
        decision.emit(RunFailed(run_id=state.run_id, error=f"condition {step} failed: {exc}", step=step))
        return
    decision.emit(StepCompleted(run_id=state.run_id, step=step, attempt=1, result={"value": value}))
    if not value:
        _complete_early(decision, step)


def _complete_early(decision: Decision, condition_step: str) -> None:
    """A false condition completes the run: every step still pending is skipped."""
    state = decision.state
    for name in state.order:
        if state.steps[name].status == "pending":
            decision.emit(
                StepSkipped(run_id=state.run_id, step=name, reason=f"condition {condition_step} was false")
            )
    decision.emit(RunCompleted(run_id=state.run_id, reason=f"condition {condition_step} was false"))


def condition_variables(state: RunState) -> dict[str, Any]:
    """What a condition expression can see: trigger, context, config and run."""
    return {
        "trigger": state.trigger,
        "context": state.context,
        "config": state.config,
        "run": {"id": state.run_id, "pipeline": state.pipeline, "pipeline_version": state.pipeline_version},
    }


def on_progress(state: RunState, progress: StepProgress, now: datetime, metadata: EventMetadata) -> Decision:
    """A worker started a step: record it, unless it is stale or repeated."""
    decision = Decision(state, now, metadata)
    step = state.steps.get(progress.step)
    if state.is_terminal or step is None or step.status != "scheduled" or step.attempt != progress.attempt:
        return decision
    decision.emit(
        StepStarted(
            run_id=state.run_id,
            step=step.name,
            attempt=progress.attempt,
            worker=progress.worker,
            started_at=progress.started_at,
        )
    )
    return decision


def on_outcome(state: RunState, outcome: StepOutcome, now: datetime, metadata: EventMetadata) -> Decision:
    """A worker finished a step: record the result or failure and move the run on.

    A result for a finished step, another attempt, or a terminal run decides nothing.
    """
    decision = Decision(state, now, metadata)
    step = state.steps.get(outcome.step)
    if (
        state.is_terminal
        or step is None
        or step.status not in ("scheduled", "running")
        or step.attempt != outcome.attempt
    ):
        return decision
    run_id = state.run_id
    if step.status == "scheduled":
        decision.emit(
            StepStarted(
                run_id=run_id, step=step.name, attempt=outcome.attempt, worker=outcome.worker,
                started_at=outcome.started_at,
            )
        )
    if outcome.logs or outcome.logs_truncated:
        decision.emit(
            StepLogWritten(
                run_id=run_id, step=step.name, attempt=outcome.attempt, lines=outcome.logs,
                truncated=outcome.logs_truncated,
            )
        )
    if not outcome.ok:
        error = outcome.error or "step failed without an error message"
        decision.emit(
            StepFailed(run_id=run_id, step=step.name, attempt=outcome.attempt, error=error,
                       duration_ms=outcome.duration_ms)
        )
        decision.emit(
            RunFailed(run_id=run_id, error=f"step {step.name} failed: {error}", step=step.name, code="step_failed")
        )
        return decision
    decision.emit(
        StepCompleted(
            run_id=run_id, step=step.name, attempt=outcome.attempt, result=outcome.result,
            duration_ms=outcome.duration_ms,
        )
    )
    if step.kind == "condition":
        value = outcome.result.get("value") if isinstance(outcome.result, dict) else None
        if not isinstance(value, bool):
            decision.emit(
                RunFailed(run_id=run_id, error=f"condition {step.name} returned {value!r}, not a bool", step=step.name)
            )
            return decision
        if not value:
            _complete_early(decision, step.name)
            return decision
    advance(decision)
    return decision
