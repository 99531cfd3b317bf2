"""The run state machine and the runner's pure decisions (create_run, on_progress, on_outcome)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label_example
from hypothesis import strategies as st

from baton.events.catalogue import LogLine
from baton.events.envelope import EventMetadata, NewEvent, StoredEvent
from baton.events.memory_store import InMemoryEventStore
from baton.events.messages import StepOutcome, StepProgress
from baton.events.pipeline import PipelineDefinition
from baton.events.projections import run_summary
from baton.events.store import NO_STREAM, append
from baton.runner.decide import Decision, create_run, on_outcome, on_progress
from baton.runner.run_state import IllegalTransition, RunState, evolve, evolve_new, fold

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
META = EventMetadata(correlation_id="trigger-1", actor="test")
RUN_ID = "3f0d6c1e-0000-4000-8000-000000000001"
TERMINAL_RUN_EVENTS = frozenset({"run_completed", "run_failed"})


def definition(*steps: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated pipeline document (the ``to_document()`` form runs freeze)."""
    return PipelineDefinition.model_validate(
        {"name": "orders-sync", "trigger": {"type": "orders.ready"}, "config": config or {}, "steps": list(steps)}
    ).to_document()


def shell(name: str) -> dict[str, Any]:
    return {"name": name, "type": "action", "uses": "shell", "with": {"command": f"./{name}.sh"}}


def http(name: str) -> dict[str, Any]:
    return {"name": name, "type": "action", "uses": "http", "with": {"url": "https://example.com", "method": "POST"}}


def cel(name: str, expression: str) -> dict[str, Any]:
    return {"name": name, "type": "condition", "if": expression}


def py_condition(name: str) -> dict[str, Any]:
    return {"name": name, "type": "condition", "uses": "python", "with": {"ref": "checks.orders:ready"}}


ORDERS_SYNC = definition(
    shell("extract"),
    cel("big_enough", "trigger.payload.amount > 100"),
    {"name": "load", "type": "action", "uses": "python", "with": {"ref": "warehouse.loader:load"}},
    http("notify"),
)


def trigger(amount: Any = 150) -> dict[str, Any]:
    return {"trigger_id": "trigger-1", "tenant": "acme", "type": "orders.ready", "payload": {"amount": amount}}


def start(doc: dict[str, Any] = ORDERS_SYNC, trig: dict[str, Any] | None = None) -> Decision:
    return create_run(RUN_ID, "acme", "orders-sync", 3, doc, trig or trigger(), NOW, META)


def progress(step: str, attempt: int = 1) -> StepProgress:
    return StepProgress(run_id=RUN_ID, step=step, attempt=attempt, worker="worker-1", started_at=NOW)


def outcome(step: str, ok: bool = True, result: Any = None, attempt: int = 1, error: str | None = None,
            logs: list[LogLine] | None = None) -> StepOutcome:
    return StepOutcome(
        run_id=RUN_ID, step=step, attempt=attempt, worker="worker-1", ok=ok, result=result, error=error,
        started_at=NOW, duration_ms=12.5, logs=logs or [],
    )


def kinds(decision: Decision) -> list[str]:
    return [event.type for event in decision.events]


def described(decision: Decision) -> list[tuple[str, str | None]]:
    return [(event.type, event.data.get("step")) for event in decision.events]


def stored(events: list[NewEvent], run_id: str = RUN_ID) -> list[StoredEvent]:
    """The events as the store would hand them back (positions and versions from 1)."""
    return [
        StoredEvent.model_construct(
            position=index, event_id=event.event_id, stream_id=f"run-{run_id}", stream_type="run",
            stream_version=index, tenant="acme", type=event.type, schema_version=event.schema_version,
            data=event.data, metadata=event.metadata, recorded_at=event.recorded_at,
        )
        for index, event in enumerate(events, start=1)
    ]


def statuses(state: RunState) -> dict[str, str]:
    return {name: step.status for name, step in state.steps.items()}


# --- create_run and inline conditions --------------------------------------------------


def test_create_run_schedules_and_dispatches_the_first_action() -> None:
    decision = start()
    assert described(decision) == [("run_created", None), ("run_started", None), ("step_scheduled", "extract")]
    assert decision.dispatch == ["extract"]
    state = decision.state
    assert (state.status, state.version, state.pipeline_version) == ("running", 3, 3)
    assert statuses(state) == {"extract": "scheduled", "big_enough": "pending", "load": "pending",
                               "notify": "pending"}
    assert state.steps["extract"].attempt == 1
    created = decision.events[0].data
    assert created["definition"] == ORDERS_SYNC and created["trigger"] == trigger()
    scheduled = decision.events[2].data
    assert (scheduled["index"], scheduled["kind"], scheduled["attempt"]) == (0, "action", 1)
    assert all(event.recorded_at == NOW and event.metadata == META for event in decision.events)


def test_inline_condition_true_continues_to_the_next_action() -> None:
    decision = start(definition(cel("gate", "trigger.payload.amount > 100"), shell("extract")))
    assert described(decision) == [
        ("run_created", None), ("run_started", None),
        ("step_scheduled", "gate"), ("step_completed", "gate"), ("step_scheduled", "extract"),
    ]
    assert decision.events[3].data["result"] == {"value": True}
    assert decision.dispatch == ["extract"]
    assert decision.state.context == {}  # a condition's result is not part of the context


def test_inline_condition_false_skips_the_rest_and_completes_early() -> None:
    decision = start(definition(cel("gate", "trigger.payload.amount > 100"), shell("extract"), http("notify")),
                     trigger(amount=50))
    assert described(decision) == [
        ("run_created", None), ("run_started", None),
        ("step_scheduled", "gate"), ("step_completed", "gate"),
        ("step_skipped", "extract"), ("step_skipped", "notify"), ("run_completed", None),
    ]
    assert decision.events[-1].data["reason"] == "condition gate was false"
    assert decision.events[4].data["reason"] == "condition gate was false"
    assert decision.dispatch == []
    assert decision.state.status == "completed"
    assert statuses(decision.state) == {"gate": "completed", "extract": "skipped", "notify": "skipped"}


@pytest.mark.parametrize(
    "expression",
    ["trigger.payload.missing > 1", "trigger.payload.amount > 'x'", "trigger.payload.amount + 1"],
)
def test_inline_condition_error_fails_the_run(expression: str) -> None:
    decision = start(definition(cel("gate", expression), shell("extract")))
    assert described(decision)[2:] == [
        ("step_scheduled", "gate"), ("step_failed", "gate"), ("step_skipped", "extract"), ("run_failed", "gate")
    ]
    failed = decision.events[-1].data
    assert failed["step"] == "gate"
    assert failed["error"].startswith("condition gate failed: ")
    assert expression in decision.events[3].data["error"]
    assert decision.dispatch == []
    assert decision.state.status == "failed"
    assert statuses(decision.state) == {"gate": "failed", "extract": "skipped"}


@pytest.mark.parametrize("where", ["trigger", "context"])
def test_huge_integers_fail_the_run_instead_of_crashing_the_decision(where: str) -> None:
    doc = definition(shell("extract"), cel("gate", "trigger.payload.amount > 100"), shell("load"))
    huge = 2**64
    state = start(doc, trigger(amount=huge if where == "trigger" else 150)).state
    decision = on_outcome(state, outcome("extract", result={"rows": huge}), NOW, META)
    # The gate fails on the oversized value rather than crashing the decision; load is skipped.
    assert kinds(decision)[-3:] == ["step_failed", "step_skipped", "run_failed"]
    assert decision.events[-1].data["code"] == "condition_error"


def test_conditions_see_context_config_and_run() -> None:
    doc = definition(
        shell("extract"),
        cel("gate", "context.extract.rows >= config.min_rows && run.pipeline == 'orders-sync'"),
        shell("load"),
        config={"min_rows": 3},
    )
    state = start(doc).state
    assert kinds(on_outcome(state, outcome("extract", result={"rows": 3}), NOW, META))[-1] == "step_scheduled"
    done = on_outcome(state, outcome("extract", result={"rows": 2}), NOW, META)
    assert done.state.status == "completed"


def test_single_condition_pipeline_completes_in_create_run() -> None:
    decision = start(definition(cel("gate", "true")))
    assert kinds(decision)[-2:] == ["step_completed", "run_completed"]
    assert decision.events[-1].data["reason"] == "all steps completed"


# --- worker replies --------------------------------------------------------------------


def test_progress_then_outcome_advances_through_the_condition() -> None:
    state = start().state
    started = on_progress(state, progress("extract"), NOW, META)
    assert described(started) == [("step_started", "extract")]
    assert started.events[0].data["worker"] == "worker-1"
    assert started.dispatch == []
    state = started.state
    assert statuses(state)["extract"] == "running"

    done = on_outcome(state, outcome("extract", result={"rows": 3}), NOW, META)
    assert described(done) == [
        ("step_completed", "extract"),
        ("step_scheduled", "big_enough"), ("step_completed", "big_enough"),
        ("step_scheduled", "load"),
    ]
    assert done.events[0].data["result"] == {"rows": 3}
    assert done.events[0].data["duration_ms"] == 12.5
    assert done.dispatch == ["load"]
    assert done.state.context == {"extract": {"rows": 3}}
    assert done.state.steps["load"].status == "scheduled"


def test_outcome_without_progress_records_the_start() -> None:
    state = start().state
    done = on_outcome(state, outcome("extract", result=[1, 2]), NOW, META)
    assert kinds(done)[:2] == ["step_started", "step_completed"]
    assert done.state.context["extract"] == [1, 2]


def test_last_step_completes_the_run() -> None:
    state = start().state
    state = on_outcome(state, outcome("extract", result={"rows": 3}), NOW, META).state
    state = on_outcome(state, outcome("load", result="loaded"), NOW, META).state
    last = on_outcome(state, outcome("notify", result={"status": 200}), NOW, META)
    assert described(last) == [("step_started", "notify"), ("step_completed", "notify"), ("run_completed", None)]
    assert last.events[-1].data["reason"] == "all steps completed"
    assert last.state.status == "completed"
    assert last.state.context == {"extract": {"rows": 3}, "load": "loaded", "notify": {"status": 200}}
    assert set(statuses(last.state).values()) == {"completed"}


def test_failing_outcome_fails_the_run_with_the_error() -> None:
    state = on_progress(start().state, progress("extract"), NOW, META).state
    failed = on_outcome(state, outcome("extract", ok=False, error="exit status 2"), NOW, META)
    assert described(failed) == [
        ("step_failed", "extract"), ("step_dead_lettered", "extract"), ("step_skipped", "big_enough"),
        ("step_skipped", "load"), ("step_skipped", "notify"), ("run_failed", "extract"),
    ]
    assert failed.events[0].data["error"] == "exit status 2"
    assert failed.events[0].data["will_retry"] is False
    assert failed.events[1].data["attempts"] == 1
    assert failed.events[-1].data == {"run_id": RUN_ID, "error": "step extract failed: exit status 2",
                                      "step": "extract", "code": "dead_lettered"}
    assert failed.state.status == "failed"
    assert statuses(failed.state) == {"extract": "failed", "big_enough": "skipped", "load": "skipped",
                                      "notify": "skipped"}
    assert failed.state.context == {}


def test_failure_without_a_message_still_says_something() -> None:
    failed = on_outcome(start().state, outcome("extract", ok=False), NOW, META)
    assert failed.events[-1].data["error"] == "step extract failed: step failed without an error message"


def test_outcome_logs_are_written_before_the_result() -> None:
    lines = [LogLine(at=NOW, message="hello"), LogLine(at=NOW, level="warning", message="careful")]
    done = on_outcome(start().state, outcome("extract", result=1, logs=lines), NOW, META)
    assert kinds(done)[:3] == ["step_started", "step_log_written", "step_completed"]
    assert [line["message"] for line in done.events[1].data["lines"]] == ["hello", "careful"]


def python_condition_run() -> RunState:
    state = start(definition(shell("extract"), py_condition("ready"), shell("load"), http("notify"))).state
    decided = on_outcome(state, outcome("extract", result={"rows": 1}), NOW, META)
    assert decided.dispatch == ["ready"]
    return decided.state


def test_python_condition_false_completes_early() -> None:
    done = on_outcome(python_condition_run(), outcome("ready", result={"value": False}), NOW, META)
    assert described(done) == [
        ("step_started", "ready"), ("step_completed", "ready"),
        ("step_skipped", "load"), ("step_skipped", "notify"), ("run_completed", None),
    ]
    assert done.events[-1].data["reason"] == "condition ready was false"
    assert done.state.context == {"extract": {"rows": 1}}


def test_python_condition_true_continues() -> None:
    done = on_outcome(python_condition_run(), outcome("ready", result={"value": True}), NOW, META)
    assert kinds(done)[-1] == "step_scheduled"
    assert done.dispatch == ["load"]
    assert "ready" not in done.state.context


@pytest.mark.parametrize("result", [{"value": "yes"}, {"value": 1}, {}, None, True])
def test_python_condition_non_boolean_fails_the_run(result: Any) -> None:
    done = on_outcome(python_condition_run(), outcome("ready", result=result), NOW, META)
    assert kinds(done)[-1] == "run_failed"
    assert "not a bool" in done.events[-1].data["error"]
    assert done.state.status == "failed"


def test_redelivered_late_and_foreign_replies_decide_nothing() -> None:
    state = start().state
    running = on_progress(state, progress("extract"), NOW, META).state
    after = on_outcome(running, outcome("extract", result={"rows": 3}), NOW, META).state
    failed = on_outcome(running, outcome("extract", ok=False, error="x"), NOW, META).state
    stale = [
        (running, progress("extract")),  # progress redelivered
        (state, progress("extract", attempt=2)),  # another attempt
        (state, outcome("extract", attempt=2)),
        (state, progress("load")),  # a step not scheduled yet
        (state, outcome("load")),
        (state, outcome("no-such-step")),
        (state, progress("no-such-step")),
        (after, outcome("extract", result={"rows": 99})),  # outcome redelivered
        (after, progress("extract")),  # progress arriving after the outcome
        (after, outcome("big_enough", result={"value": False})),  # inline condition: never dispatched
        (failed, outcome("extract", result=1)),  # terminal run
        (failed, progress("extract")),
    ]
    for current, message in stale:
        handler = on_progress if isinstance(message, StepProgress) else on_outcome
        decision = handler(current, message, NOW, META)  # type: ignore[operator]
        assert decision.events == [] and decision.dispatch == [], message
        assert decision.state is current


# --- the state machine -----------------------------------------------------------------


def created() -> RunState:
    return evolve(RunState(run_id=RUN_ID), "run_created", {
        "tenant": "acme", "pipeline": "p", "pipeline_version": 1, "definition": ORDERS_SYNC, "trigger": trigger(),
    })


@pytest.mark.parametrize(
    "history",
    [
        [("run_started", {}), ("run_started", {})],
        [("run_created", {})],
        [("run_completed", {})],  # a pending run cannot complete
        [("step_completed", {"step": "extract"})],  # pending step
        [("run_started", {}), ("step_completed", {"step": "extract"})],
        [("run_started", {}), ("step_started", {"step": "extract"})],
        [("run_started", {}), ("step_scheduled", {"step": "extract"}), ("step_scheduled", {"step": "extract"})],
        [("run_started", {}), ("step_scheduled", {"step": "extract"}), ("step_started", {"step": "extract",
                                                                                          "attempt": 2})],
        [("run_started", {}), ("step_scheduled", {"step": "extract"}), ("step_completed", {"step": "extract"}),
         ("step_skipped", {"step": "extract"})],
        [("run_started", {}), ("step_scheduled", {"step": "nope"})],
        [("run_started", {}), ("run_completed", {}), ("step_scheduled", {"step": "extract"})],
        [("run_started", {}), ("run_completed", {}), ("run_failed", {})],
        [("run_started", {}), ("run_failed", {}), ("run_started", {})],
        [("run_started", {}), ("run_failed", {}), ("step_skipped", {"step": "load"})],
        [("run_started", {}), ("step_teleported", {"step": "extract"})],
    ],
)
def test_illegal_transitions_are_refused(history: list[tuple[str, dict[str, Any]]]) -> None:
    state = created()
    *legal, (last_type, last_data) = history
    for event_type, data in legal:
        state = evolve(state, event_type, data)
    before = (state.status, statuses(state), state.version)
    with pytest.raises(IllegalTransition):
        evolve(state, last_type, last_data)
    assert (state.status, statuses(state), state.version) == before


def test_events_before_run_created_are_refused() -> None:
    with pytest.raises(IllegalTransition, match="before run_created"):
        evolve(RunState(run_id=RUN_ID), "run_started", {})


def test_evolve_never_mutates_its_input() -> None:
    state = evolve(created(), "run_started", {})
    state = evolve(state, "step_scheduled", {"step": "extract"})
    snapshot = (dict(statuses(state)), dict(state.context), state.version)
    evolve(state, "step_completed", {"step": "extract", "result": {"rows": 1}})
    assert (statuses(state), state.context, state.version) == snapshot


def test_a_failed_run_may_fail_while_pending_and_log_lines_are_always_allowed() -> None:
    assert evolve(created(), "run_failed", {"error": "x"}).status == "failed"
    running = evolve(created(), "run_started", {})
    assert evolve(running, "step_log_written", {"step": "extract"}).version == running.version + 1


def test_fold_and_evolve_new_agree_with_the_decisions() -> None:
    first = start()
    second = on_outcome(first.state, outcome("extract", result={"rows": 3}), NOW, META)
    events = first.events + second.events
    assert fold(RUN_ID, stored(events)) == second.state
    assert evolve_new(RunState(run_id=RUN_ID), events) == second.state


async def test_decisions_append_with_their_state_version() -> None:
    """The state's version is the stream version: appending with it as expected version succeeds."""
    store = InMemoryEventStore()
    decision = start()
    assert await append(store, f"run-{RUN_ID}", "acme", decision.events, NO_STREAM) == decision.state.version
    state = fold(RUN_ID, await store.read_stream(f"run-{RUN_ID}"))
    for reply in (progress("extract"), outcome("extract", result={"rows": 3}), outcome("load", result=None)):
        handler = on_progress if isinstance(reply, StepProgress) else on_outcome
        decision = handler(state, reply, NOW, META)  # type: ignore[operator]
        version = await append(store, state.stream_id, "acme", decision.events, state.version)
        state = fold(RUN_ID, await store.read_stream(state.stream_id))
        assert state == decision.state
        assert version == state.version
    assert state.steps["notify"].status == "scheduled"


# --- property: random interleavings of worker replies ----------------------------------

PROPERTY_PIPELINE = definition(
    shell("extract"),
    cel("gate", "context.extract.go == true"),
    py_condition("verify"),
    http("notify"),
)
STEP_NAMES = ["extract", "gate", "verify", "notify", "ghost"]
RESULTS = st.sampled_from([
    None, {"go": True}, {"go": False}, {"go": 1}, {"value": True}, {"value": False}, {"value": "maybe"}, [1],
])

# Results that mostly let the run go on, so that examples reach the later steps.
RESULTS_BY_STEP = {
    "extract": st.sampled_from([{"go": True}, {"go": True}, {"go": True}, {"go": False}, None]),
    "verify": st.sampled_from([{"value": True}, {"value": True}, {"value": True}, {"value": False}, {"go": 1}]),
}


@dataclass(frozen=True)
class Reply:
    """One worker message to feed to the decisions."""

    kind: str
    step: str
    attempt: int
    ok: bool
    result: Any

    def message(self, offset: int) -> StepProgress | StepOutcome:
        at = NOW + timedelta(seconds=offset)
        if self.kind == "progress":
            return StepProgress(run_id=RUN_ID, step=self.step, attempt=self.attempt, worker="w", started_at=at)
        return StepOutcome(
            run_id=RUN_ID, step=self.step, attempt=self.attempt, worker="w", ok=self.ok, result=self.result,
            error=None if self.ok else "boom", started_at=at, duration_ms=1.0,
        )


def reply_for(step: str) -> st.SearchStrategy[Reply]:
    """A progress or outcome for ``step``: mostly attempt 1 and ok, sometimes neither."""
    return st.builds(
        Reply,
        kind=st.sampled_from(["progress", "outcome", "outcome"]),
        step=st.just(step),
        attempt=st.sampled_from([1, 1, 1, 2]),
        ok=st.sampled_from([True, True, True, False]),
        result=RESULTS_BY_STEP.get(step, RESULTS),
    )


def in_flight(state: RunState) -> list[str]:
    return [name for name in state.order if state.steps[name].status in ("scheduled", "running")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_replies_never_break_the_state_machine(data: st.DataObject) -> None:
    """Replies for the step in flight, for random steps, and redeliveries of earlier replies, interleaved."""
    decision = start(PROPERTY_PIPELINE)
    events = list(decision.events)
    state = decision.state
    dispatched = list(decision.dispatch)
    sent: list[Reply] = []
    for offset in range(data.draw(st.integers(0, 30), label="replies")):
        choice = data.draw(st.sampled_from(["in flight", "in flight", "any step", "redeliver"]))
        if choice == "redeliver" and sent:
            reply = data.draw(st.sampled_from(sent))
        else:
            targets = in_flight(state) if choice == "in flight" else []
            step = targets[0] if targets else data.draw(st.sampled_from(STEP_NAMES))
            reply = data.draw(reply_for(step))
        sent.append(reply)
        message = reply.message(offset)
        if isinstance(message, StepProgress):
            decision = on_progress(state, message, NOW, META)
        else:
            decision = on_outcome(state, message, NOW, META)
        if state.is_terminal:
            assert decision.events == []
        events.extend(decision.events)
        dispatched.extend(decision.dispatch)
        state = decision.state
        # At most one step is ever in flight, none once the run has ended.
        assert len(in_flight(state)) <= (0 if state.is_terminal else 1)

    terminal = [event for event in events if event.type in TERMINAL_RUN_EVENTS]
    assert len(terminal) <= 1
    if terminal:
        assert events[-1] is terminal[0]
    assert state.version == len(events)
    # Only worker-executed steps are ever dispatched, each at most once.
    assert len(dispatched) == len(set(dispatched))
    assert set(dispatched) <= {"extract", "verify", "notify"}

    reached = max((step.index for step in state.steps.values() if step.status != "pending"), default=-1)
    label_example(f"run {state.status}, reached step {reached}")

    rebuilt = fold(RUN_ID, stored(events))
    assert rebuilt == state
    assert (rebuilt.status, statuses(rebuilt), rebuilt.context) == (state.status, statuses(state), state.context)

    # The read model folds the same history to the same statuses and context.
    doc = run_summary.initial(RUN_ID)
    for event in stored(events):
        doc = run_summary.apply(doc, event)
    assert doc["status"] == state.status
    assert {name: step["status"] for name, step in doc["steps"].items()} == statuses(state)
    assert doc["context"] == state.context


def test_event_ids_are_unique_per_decision() -> None:
    decision = start()
    ids = [event.event_id for event in decision.events]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(event_id, uuid.UUID) for event_id in ids)
