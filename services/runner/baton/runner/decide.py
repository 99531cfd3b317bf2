"""Run logic as pure decisions: ``decide(state, command) -> events`` (plus work and timers to send).

The runner loads a run's state, calls one of these functions, appends the events with
the state's version as the expected version, then dispatches work and arms or disarms
timers. Redelivered or late commands decide nothing (or only record that they were
ignored), which is what makes every consumer idempotent.

Commands: ``create_run`` (a matched trigger), ``start_run`` (a slot is free),
``on_progress`` / ``on_outcome`` (worker replies), ``on_timer`` (a durable timer
fired), ``cancel_run`` and ``retry_run`` (operators).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from baton.events.catalogue import (
    EventData,
    RunCanceled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunQueued,
    RunResumed,
    RunRetried,
    RunStarted,
    RunWaiting,
    StepCompleted,
    StepDeadLettered,
    StepFailed,
    StepLogWritten,
    StepResultIgnored,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepStarted,
    StepTelemetryRecorded,
    TimerCanceled,
    TimerScheduled,
)
from baton.events.envelope import EventMetadata, NewEvent
from baton.events.expressions import ExpressionError, evaluate_condition
from baton.events.messages import StepLogBatch, StepOutcome, StepProgress
from baton.events.pipeline import RetryPolicy
from baton.events.timers import TimerPurpose, run_timer_id
from baton.runner.run_state import WAIT_TIMERS, RunState, StepState, Timer, evolve

DEFAULT_RETRY = RetryPolicy()


class Rejected(Exception):
    """A command the run's current state does not allow; ``status`` is HTTP-like (409, 404)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Decision:
    """Events decided for one run, the state they lead to, and the side effects to carry out."""

    state: RunState
    now: datetime
    metadata: EventMetadata
    rand: Callable[[], float] = random.random
    events: list[NewEvent] = field(default_factory=list)
    dispatch: list[str] = field(default_factory=list)
    initial_timers: dict[str, Timer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.initial_timers = self.state.timers

    def emit(self, data: EventData) -> None:
        """Record an event and move the state past it (refusing illegal transitions)."""
        event = data.to_event(self.metadata, self.now)
        self.state = evolve(self.state, event.type, event.data)
        self.events.append(event)

    @property
    def timers_to_set(self) -> list[Timer]:
        """Timers this decision armed (to request from the scheduler after the append)."""
        return [t for k, t in self.state.timers.items() if k not in self.initial_timers]

    @property
    def timers_to_cancel(self) -> list[Timer]:
        """Timers this decision disarmed (to cancel at the scheduler; a fire would be ignored anyway)."""
        return [t for k, t in self.initial_timers.items() if k not in self.state.timers]

    @property
    def dispatch_now(self) -> list[str]:
        """Steps to hand to workers: those still scheduled once every event is applied."""
        return [name for name in dict.fromkeys(self.dispatch) if self.state.steps[name].status == "scheduled"]


# --- creating and starting runs --------------------------------------------------------


def create_run(
    run_id: str,
    tenant: str,
    pipeline: str,
    pipeline_version: int,
    definition: dict[str, Any],
    trigger: dict[str, Any],
    now: datetime,
    metadata: EventMetadata,
    queued_reason: str | None = None,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """A new run for a matched trigger: created, then started (or queued with ``queued_reason``)."""
    decision = Decision(RunState(run_id=run_id), now, metadata, rand)
    replay = trigger.get("replay_of")
    decision.emit(
        RunCreated(
            run_id=run_id,
            tenant=tenant,
            pipeline=pipeline,
            pipeline_version=pipeline_version,
            definition=definition,
            trigger=trigger,
            slice_key=trigger.get("slice_key"),
            is_replay=replay is not None,
            replay_of=replay,
            dry_run=bool(trigger.get("dry_run", False)),
        )
    )
    if queued_reason is not None:
        decision.emit(RunQueued(run_id=run_id, reason=queued_reason))
    else:
        _start(decision)
    return decision


def start_run(
    state: RunState, now: datetime, metadata: EventMetadata, rand: Callable[[], float] = random.random
) -> Decision:
    """A queued run got its slot: start it. A run no longer pending decides nothing."""
    decision = Decision(state, now, metadata, rand)
    if state.status == "pending":
        _start(decision)
    return decision


def queue_run(state: RunState, reason: str, now: datetime, metadata: EventMetadata) -> Decision:
    """Record why a pending run waits (only when the reason changed)."""
    decision = Decision(state, now, metadata)
    if state.status == "pending":
        decision.emit(RunQueued(run_id=state.run_id, reason=reason))
    return decision


def _start(decision: Decision) -> None:
    state = decision.state
    decision.emit(RunStarted(run_id=state.run_id))
    timeout = state.definition.get("timeout_ms")
    if timeout:
        _arm(decision, "run_timeout", int(timeout), attempt=decision.state.starts)
    advance(decision)


# --- moving a run forward --------------------------------------------------------------


def advance(decision: Decision) -> None:
    """Move the run forward until it waits on workers or timers, or ends; then sync 'waiting'.

    CEL conditions are evaluated here, without a worker hop: they are side-effect free.
    """
    if decision.state.status in ("running", "waiting"):
        outcome = _advance_sequence(decision, decision.state.order)
        if outcome == "done" and not decision.state.is_terminal:
            decision.emit(RunCompleted(run_id=decision.state.run_id, reason="all steps completed"))
    _sync_waiting(decision)


def _advance_sequence(decision: Decision, sequence: list[str]) -> str:
    """Start what can start in one sequence; 'done' when every step is finished, else 'busy'."""
    for name in sequence:
        if decision.state.is_terminal:
            return "busy"
        step = decision.state.steps[name]
        if step.status == "pending":
            _start_step(decision, step)
            step = decision.state.steps[name]
        if step.kind == "parallel" and step.status == "running":
            _advance_parallel(decision, step)
            step = decision.state.steps[name]
        if step.status in ("completed", "skipped"):
            continue
        return "busy"
    return "done"


def _advance_parallel(decision: Decision, step: StepState) -> None:
    branches = decision.state.branches[step.name]
    outcomes = [_advance_sequence(decision, branch) for branch in branches]
    if not decision.state.is_terminal and all(o == "done" for o in outcomes):
        decision.emit(
            StepCompleted(run_id=decision.state.run_id, step=step.name, attempt=step.attempt,
                          result={"branches": len(branches)})
        )


def _start_step(decision: Decision, step: StepState) -> None:
    state = decision.state
    definition = step.definition
    skip = _replay_skip(state, step)
    if skip is not None:
        reason, cause, would_run = skip
        decision.emit(StepSkipped(run_id=state.run_id, step=step.name, reason=reason, cause=cause,
                                  would_run=would_run))
        return
    attempt = step.attempt + 1
    decision.emit(
        StepScheduled(run_id=state.run_id, step=step.name, index=step.index, kind=step.kind, attempt=attempt,
                      parent=step.parent, branch=step.branch)
    )
    if step.kind == "condition" and definition.get("if") is not None:
        _evaluate_inline_condition(decision, step.name, definition["if"])
    elif step.kind == "delay":
        decision.emit(StepStarted(run_id=state.run_id, step=step.name, attempt=attempt, started_at=decision.now))
        delay = int(definition["delay_ms"])
        if delay == 0:
            decision.emit(StepCompleted(run_id=state.run_id, step=step.name, attempt=attempt,
                                        result={"delayed_ms": 0}))
        else:
            _arm(decision, "delay", delay, step.name, attempt)
    elif step.kind == "parallel":
        decision.emit(StepStarted(run_id=state.run_id, step=step.name, attempt=attempt, started_at=decision.now))
    else:
        timeout = decision.state.steps[step.name].timeout_ms()
        if timeout is not None:
            _arm(decision, "step_timeout", timeout, step.name, attempt)
        decision.dispatch.append(step.name)


def _replay_skip(state: RunState, step: StepState) -> tuple[str, str, dict[str, Any] | None] | None:
    """Why a replayed run skips this step (reason, cause, what would have run), or None to run it."""
    definition = step.definition
    if state.dry_run:
        if step.kind == "action":
            would = {"uses": definition.get("uses"), "with": definition.get("with", {})}
            return "dry run: actions are not executed", "dry_run", would
        if step.kind == "condition" and definition.get("if") is None:
            would = {"uses": "python", "with": definition.get("with", {})}
            return "dry run: python condition not executed (treated as true)", "dry_run", would
        if step.kind == "delay":
            return f"dry run: delay of {definition['delay_ms']} ms not waited", "dry_run", None
    if state.is_replay and step.on_worker and definition.get("replay_safe", True) is False:
        would = {"uses": definition.get("uses"), "with": definition.get("with", {})}
        return "replay: step is marked replay_safe: false", "replay", would
    return None


def _arm(
    decision: Decision, purpose: TimerPurpose, delay_ms: int, step: str | None = None, attempt: int | None = None
) -> None:
    due = decision.now + timedelta(milliseconds=delay_ms)
    decision.emit(
        TimerScheduled(run_id=decision.state.run_id, timer_id=run_timer_id(decision.state.run_id, purpose, step,
                                                                           attempt),
                       purpose=purpose, due_at=due, step=step, attempt=attempt)
    )


def _evaluate_inline_condition(decision: Decision, step: str, expression: str) -> None:
    state = decision.state
    attempt = state.steps[step].attempt
    try:
        value = evaluate_condition(expression, condition_variables(state))
    except ExpressionError as exc:
        decision.emit(StepFailed(run_id=state.run_id, step=step, attempt=attempt, error=str(exc)))
        _fail_run(decision, f"condition {step} failed: {exc}", step, "condition_error")
        return
    decision.emit(StepCompleted(run_id=state.run_id, step=step, attempt=attempt, result={"value": value}))
    if not value:
        _on_false(decision, step)


def _on_false(decision: Decision, condition_step: str) -> None:
    """Apply a false condition's ``on_false``: end its sequence, or skip the next step(s)."""
    state = decision.state
    step = state.steps[condition_step]
    policy = step.definition.get("on_false", "complete")
    sequence = state.sequence_of(step)
    following = sequence[sequence.index(condition_step) + 1 :]
    if policy == "complete":
        targets, reason = following, f"condition {condition_step} was false"
    else:
        count = 1 if policy == "skip" else int(policy)
        targets, reason = following[:count], f"condition {condition_step} was false (on_false: {policy})"
    for name in targets:
        _skip_subtree(decision, name, reason, "condition")
    if policy == "complete" and step.parent is None:
        decision.emit(RunCompleted(run_id=state.run_id, reason=f"condition {condition_step} was false"))


def _skip_subtree(decision: Decision, name: str, reason: str, cause: str) -> None:
    """Skip a step that has not finished, and everything not finished inside it."""
    for target in [name, *decision.state.descendants(name)]:
        step = decision.state.steps[target]
        if step.status in ("pending", "scheduled", "running", "retrying"):
            decision.emit(StepSkipped(run_id=decision.state.run_id, step=target, reason=reason, cause=cause))


def _sync_waiting(decision: Decision) -> None:
    """The run is 'waiting' while nothing is on a worker and a delay or backoff timer is pending."""
    state = decision.state
    if state.status not in ("running", "waiting"):
        return
    on_worker = any(s.status in ("scheduled", "running") and s.on_worker for s in state.steps.values())
    waits = [t for t in state.timers.values() if t.purpose in WAIT_TIMERS]
    if waits and not on_worker and state.status == "running":
        first = min(waits, key=lambda t: t.due_at)
        what = f"delay {first.step}" if first.purpose == "delay" else f"retry backoff of {first.step}"
        decision.emit(RunWaiting(run_id=state.run_id, reason=what, until=first.due_at))
    elif state.status == "waiting" and (on_worker or not waits):
        decision.emit(RunResumed(run_id=state.run_id, reason="timer fired" if not on_worker else "work resumed"))


def condition_variables(state: RunState) -> dict[str, Any]:
    """What a condition expression can see: trigger, context, config and run."""
    return {
        "trigger": state.trigger,
        "context": state.context,
        "config": state.config,
        "run": {"id": state.run_id, "pipeline": state.pipeline, "pipeline_version": state.pipeline_version,
                "slice_key": state.slice_key},
    }


# --- failures, retries and dead letters ------------------------------------------------


def retry_policy(state: RunState, step: StepState) -> RetryPolicy:
    """The step's retry policy: its own, else the pipeline's, else one attempt."""
    own = step.definition.get("retry") or state.definition.get("retry")
    return RetryPolicy.model_validate(own) if own else DEFAULT_RETRY


def _fail_attempt(
    decision: Decision, name: str, error: str, timed_out: bool = False, duration_ms: float | None = None
) -> None:
    """An attempt failed: retry after a backoff while attempts remain, else dead-letter and fail the run."""
    state = decision.state
    step = state.steps[name]
    policy = retry_policy(state, step)
    will_retry = step.on_worker and step.attempts_used < policy.max_attempts
    decision.emit(
        StepFailed(run_id=state.run_id, step=name, attempt=step.attempt, error=error, duration_ms=duration_ms,
                   timed_out=timed_out, will_retry=will_retry)
    )
    if will_retry:
        delay = policy.backoff_for(step.attempts_used, decision.rand())
        next_attempt = step.attempt + 1
        decision.emit(
            StepRetryScheduled(
                run_id=state.run_id, step=name, attempt=next_attempt, delay_ms=delay,
                due_at=decision.now + timedelta(milliseconds=delay),
                timer_id=run_timer_id(state.run_id, "backoff", name, next_attempt),
            )
        )
        if delay == 0:
            _start_step(decision, decision.state.steps[name])
        return
    if step.on_worker:
        decision.emit(
            StepDeadLettered(run_id=state.run_id, step=name, attempts=step.attempts_used,
                             reason="timed out" if timed_out else "failed", last_error=error)
        )
        tries = f" after {step.attempts_used} attempts" if step.attempts_used > 1 else ""
        _fail_run(decision, f"step {name} failed{tries}: {error}", name, "dead_lettered")
    else:
        _fail_run(decision, f"step {name} failed: {error}", name, "step_failed")


def _fail_run(decision: Decision, error: str, step: str | None, code: str) -> None:
    """End the run as failed: enclosing parallel steps fail, everything unfinished is skipped."""
    state = decision.state
    if step is not None:
        for parent in state.ancestors(step):
            current = decision.state.steps[parent]
            if current.status in ("scheduled", "running"):
                decision.emit(StepFailed(run_id=state.run_id, step=parent, attempt=current.attempt,
                                         error=f"branch step {step} failed"))
    _skip_unfinished(decision, f"run failed at step {step}" if step else "run failed", "failure")
    decision.emit(RunFailed(run_id=state.run_id, error=error, step=step, code=code))


def _skip_unfinished(decision: Decision, reason: str, cause: str) -> None:
    for name, step in list(decision.state.steps.items()):
        if step.status in ("pending", "scheduled", "retrying") or (step.status == "running" and step.on_worker):
            note = reason + ("; its late result will be ignored" if step.status == "running" else "")
            decision.emit(StepSkipped(run_id=decision.state.run_id, step=name, reason=note, cause=cause))
        elif step.status == "running":  # a delay or parallel step
            decision.emit(StepSkipped(run_id=decision.state.run_id, step=name, reason=reason, cause=cause))


# --- worker replies --------------------------------------------------------------------


def on_progress(state: RunState, progress: StepProgress, now: datetime, metadata: EventMetadata) -> Decision:
    """A worker started a step: record it, unless it is stale or repeated."""
    decision = Decision(state, now, metadata)
    step = state.steps.get(progress.step)
    if state.is_terminal or step is None or step.status != "scheduled" or step.attempt != progress.attempt:
        return decision
    decision.emit(
        StepStarted(run_id=state.run_id, step=step.name, attempt=progress.attempt, worker=progress.worker,
                    started_at=progress.started_at)
    )
    return decision


def on_outcome(
    state: RunState, outcome: StepOutcome, now: datetime, metadata: EventMetadata,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """A worker finished a step: record the result or failure and move the run on.

    A repeated result decides nothing. A result for an attempt that no longer counts
    (it timed out, or the run was canceled or ended) is recorded as ignored, once.
    """
    decision = Decision(state, now, metadata, rand)
    step = state.steps.get(outcome.step)
    if step is None:
        return decision
    current = step.status in ("scheduled", "running") and step.attempt == outcome.attempt and not state.is_terminal
    if not current:
        _maybe_ignore(decision, step, outcome)
        return decision
    run_id = state.run_id
    if step.status == "scheduled":
        decision.emit(StepStarted(run_id=run_id, step=step.name, attempt=outcome.attempt, worker=outcome.worker,
                                  started_at=outcome.started_at))
    _record_output(decision, outcome)
    if not outcome.ok:
        _fail_attempt(decision, step.name, outcome.error or "step failed without an error message",
                      duration_ms=outcome.duration_ms)
        advance(decision)
        return decision
    decision.emit(StepCompleted(run_id=run_id, step=step.name, attempt=outcome.attempt, result=outcome.result,
                                duration_ms=outcome.duration_ms))
    if step.kind == "condition":
        value = outcome.result.get("value") if isinstance(outcome.result, dict) else None
        if not isinstance(value, bool):
            _fail_run(decision, f"condition {step.name} returned {value!r}, not a bool", step.name,
                      "condition_error")
            return decision
        if not value:
            _on_false(decision, step.name)
    advance(decision)
    return decision


def _maybe_ignore(decision: Decision, step: StepState, outcome: StepOutcome) -> None:
    key = (step.name, outcome.attempt)
    state = decision.state
    if (
        not step.on_worker
        or key in state.settled
        or key in state.ignored
        or outcome.attempt > step.attempt
        or outcome.attempt < 1
    ):
        return  # a duplicate of a result already recorded, or a result for work never dispatched
    if state.status == "canceled":
        reason = "the run was canceled"
    elif (step.timed_out and step.attempt == outcome.attempt) or outcome.attempt < step.attempt:
        reason = f"attempt {outcome.attempt} had already timed out or been superseded"
    elif state.is_terminal:
        reason = f"the run had already {state.status}"
    else:
        reason = f"step {step.name} is {step.status}"
    decision.emit(StepResultIgnored(run_id=state.run_id, step=step.name, attempt=outcome.attempt, reason=reason,
                                    ok=outcome.ok, worker=outcome.worker))


def _record_output(decision: Decision, output: StepOutcome | StepLogBatch, batch: str | None = None) -> None:
    run_id = decision.state.run_id
    if output.logs or output.logs_truncated:
        decision.emit(StepLogWritten(run_id=run_id, step=output.step, attempt=output.attempt, lines=output.logs,
                                     truncated=output.logs_truncated, batch=batch))
    if output.telemetry or output.telemetry_truncated:
        decision.emit(StepTelemetryRecorded(run_id=run_id, step=output.step, attempt=output.attempt,
                                            samples=output.telemetry, truncated=output.telemetry_truncated))


def on_log_batch(state: RunState, batch: StepLogBatch, now: datetime, metadata: EventMetadata) -> Decision:
    """Live logs and telemetry of a running step: recorded once per (worker, sequence), even if late."""
    decision = Decision(state, now, metadata)
    key = f"{batch.worker}:{batch.sequence}"
    if batch.step not in state.steps or f"{batch.step}:{batch.attempt}:{key}" in state.log_batches:
        return decision
    _record_output(decision, batch, key)
    return decision


# --- timers ----------------------------------------------------------------------------


def on_timer(
    state: RunState, timer_id: str, now: datetime, metadata: EventMetadata,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """A durable timer fired. A timer the run no longer holds (fired twice, disarmed) decides nothing."""
    decision = Decision(state, now, metadata, rand)
    timer = state.timers.get(timer_id)
    if timer is None or state.is_terminal:
        return decision
    run_id = state.run_id
    step = state.steps.get(timer.step) if timer.step else None
    if timer.purpose == "run_timeout":
        timeout = state.definition.get("timeout_ms")
        _fail_run(decision, f"run timed out after {timeout} ms", None, "timed_out")
        return decision
    if step is None or (step.attempt != timer.attempt and timer.purpose != "backoff"):
        return decision
    if timer.purpose == "delay" and step.status == "running":
        decision.emit(StepCompleted(run_id=run_id, step=step.name, attempt=step.attempt,
                                    result={"delayed_ms": step.definition.get("delay_ms")}))
    elif timer.purpose == "backoff" and step.status == "retrying":
        _start_step(decision, step)
    elif timer.purpose == "step_timeout" and step.status in ("scheduled", "running"):
        _fail_attempt(decision, step.name, f"attempt {step.attempt} timed out after {step.timeout_ms()} ms "
                      "without a result from a worker", timed_out=True)
    else:
        return decision
    advance(decision)
    return decision


# --- operator commands -----------------------------------------------------------------


def cancel_run(state: RunState, reason: str, actor: str | None, now: datetime, metadata: EventMetadata) -> Decision:
    """Cancel an unfinished run: timers disarmed, unfinished steps skipped, late results ignored."""
    if state.is_terminal:
        raise Rejected(f"run {state.run_id} is already {state.status}; only unfinished runs can be canceled")
    decision = Decision(state, now, metadata)
    for timer_id in list(state.timers):
        decision.emit(TimerCanceled(run_id=state.run_id, timer_id=timer_id, reason="run canceled"))
    _skip_unfinished(decision, f"run canceled{': ' + reason if reason else ''}", "canceled")
    decision.emit(RunCanceled(run_id=state.run_id, reason=reason, actor=actor))
    return decision


def retry_run(
    state: RunState, reason: str, actor: str | None, now: datetime, metadata: EventMetadata,
    dead_letter_id: str | None = None,
) -> Decision:
    """Reopen a failed run from its first failed step; completed steps keep their results.

    The run goes back to 'pending'; the caller starts it (``start_run``) when it has a slot.
    """
    if state.status != "failed":
        raise Rejected(f"run {state.run_id} is {state.status}; only failed (or dead-lettered) runs can be retried")
    reset = [
        name
        for name, step in state.steps.items()
        if step.status != "completed" and not (step.status == "skipped" and step.skip_cause in
                                               ("condition", "replay", "dry_run"))
    ]
    decision = Decision(state, now, metadata)
    decision.emit(RunRetried(run_id=state.run_id, steps=reset, reason=reason, actor=actor,
                             dead_letter_id=dead_letter_id))
    return decision


def busy_steps(state: RunState) -> list[str]:
    """Steps on a worker right now (to re-dispatch after a restart)."""
    return [s.name for s in state.steps.values() if s.status in ("scheduled", "running") and s.on_worker]


__all__ = [
    "Decision",
    "Rejected",
    "advance",
    "busy_steps",
    "cancel_run",
    "condition_variables",
    "create_run",
    "on_log_batch",
    "on_outcome",
    "on_progress",
    "on_timer",
    "queue_run",
    "retry_run",
    "start_run",
]
