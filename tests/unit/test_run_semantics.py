"""Run semantics as pure decisions: parallel branches, delays, retries, timeouts, cancel, retry, replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.events.envelope import EventMetadata
from baton.events.messages import StepOutcome
from baton.events.pipeline import PipelineDefinition, RetryPolicy
from baton.runner.admission import Admission, Limits
from baton.runner.decide import (
    Decision,
    Rejected,
    cancel_run,
    create_run,
    on_outcome,
    on_timer,
    retry_run,
    start_run,
)
from baton.runner.run_state import RunState, evolve_new

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
META = EventMetadata(actor="test")
RUN = "run-1"


def doc(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return PipelineDefinition.model_validate(
        {"name": "p", "trigger": {"type": "t"}, "steps": list(steps), **extra}
    ).to_document()


def py(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "action", "uses": "python", "with": {"ref": "m.h:f"}, **extra}


def cel(name: str, expression: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "condition", "if": expression, **extra}


def delay(name: str, ms: int) -> dict[str, Any]:
    return {"name": name, "type": "delay", "delay_ms": ms}


def parallel(name: str, *branches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "type": "parallel", "branches": [{"steps": b} for b in branches]}


def start(definition: dict[str, Any], trigger: dict[str, Any] | None = None) -> Decision:
    return create_run(RUN, "acme", "p", 1, definition, trigger or {"trigger_id": "t1", "payload": {}}, NOW, META,
                      rand=lambda: 0.5)


def ok(step: str, attempt: int = 1, result: Any = None) -> StepOutcome:
    return StepOutcome(run_id=RUN, step=step, attempt=attempt, worker="w", ok=True, result=result,
                       started_at=NOW, duration_ms=1.0)


def fail(step: str, attempt: int = 1, error: str = "boom") -> StepOutcome:
    return StepOutcome(run_id=RUN, step=step, attempt=attempt, worker="w", ok=False, error=error,
                       started_at=NOW, duration_ms=1.0)


def kinds(decision: Decision) -> list[tuple[str, str | None]]:
    return [(e.type, e.data.get("step")) for e in decision.events]


def statuses(state: RunState) -> dict[str, str]:
    return {name: s.status for name, s in state.steps.items()}


def reply(state: RunState, outcome: StepOutcome, at: datetime = NOW) -> Decision:
    return on_outcome(state, outcome, at, META, rand=lambda: 0.5)


def fire(state: RunState, timer_id: str, at: datetime = NOW) -> Decision:
    return on_timer(state, timer_id, at, META, rand=lambda: 0.5)


# --- parallel ---------------------------------------------------------------------------


def test_parallel_branches_are_dispatched_together_and_carry_parent_and_branch() -> None:
    d = start(doc(parallel("fan", [py("a1"), py("a2")], [py("b1")]), py("after")))
    assert d.dispatch_now == ["a1", "b1"]
    scheduled = {e.data["step"]: e.data for e in d.events if e.type == "step_scheduled"}
    assert scheduled["a1"]["parent"] == "fan" and scheduled["a1"]["branch"] == 0
    assert scheduled["b1"]["parent"] == "fan" and scheduled["b1"]["branch"] == 1
    assert scheduled["fan"]["parent"] is None
    d = reply(d.state, ok("a1"))
    assert d.dispatch_now == ["a2"]
    d = reply(d.state, ok("b1"))
    assert d.dispatch_now == [] and d.state.steps["fan"].status == "running"
    d = reply(d.state, ok("a2"))
    assert ("step_completed", "fan") in kinds(d)
    assert d.dispatch_now == ["after"]


def test_nested_parallel_completes_inside_out() -> None:
    inner = parallel("inner", [py("x")], [py("y")])
    d = start(doc(parallel("outer", [inner], [py("z")])))
    assert sorted(d.dispatch_now) == ["x", "y", "z"]
    d = reply(reply(reply(d.state, ok("x")).state, ok("y")).state, ok("z"))
    assert d.state.status == "completed"
    assert [k for k in kinds(d) if k[0] == "step_completed"][-2:] == [("step_completed", "z"),
                                                                       ("step_completed", "outer")]


def test_a_failing_branch_skips_its_siblings_and_fails_the_run() -> None:
    d = start(doc(parallel("fan", [py("a1"), py("a2")], [py("b1"), py("b2")]), py("after")))
    d = reply(d.state, fail("a1"))
    assert d.state.status == "failed"
    assert statuses(d.state) == {"fan": "failed", "a1": "failed", "a2": "skipped", "b1": "skipped",
                                 "b2": "skipped", "after": "skipped"}
    assert d.events[-1].data["code"] == "dead_lettered"
    # b1 was running when the run failed: its late result is recorded as ignored, once.
    late = reply(d.state, ok("b1"))
    assert kinds(late) == [("step_result_ignored", "b1")]
    assert reply(late.state, ok("b1")).events == []


# --- conditions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_false", "expected"),
    [
        ("complete", {"gate": "completed", "a": "skipped", "b": "skipped", "c": "skipped"}),
        ("skip", {"gate": "completed", "a": "skipped", "b": "scheduled", "c": "pending"}),
        (2, {"gate": "completed", "a": "skipped", "b": "skipped", "c": "scheduled"}),
    ],
)
def test_on_false(on_false: Any, expected: dict[str, str]) -> None:
    d = start(doc(cel("gate", "false", on_false=on_false), py("a"), py("b"), py("c")))
    assert statuses(d.state) == expected
    assert d.state.status == ("completed" if on_false == "complete" else "running")


def test_complete_inside_a_branch_ends_only_that_branch() -> None:
    d = start(doc(parallel("fan", [cel("gate", "false"), py("a")], [py("b")]), py("after")))
    assert statuses(d.state)["a"] == "skipped" and d.dispatch_now == ["b"]
    d = reply(d.state, ok("b"))
    assert d.dispatch_now == ["after"]


# --- delays -----------------------------------------------------------------------------


def test_delay_waits_on_a_durable_timer_and_a_second_fire_changes_nothing() -> None:
    d = start(doc(py("a"), delay("wait", 60_000), py("b")))
    d = reply(d.state, ok("a"))
    (timer,) = d.timers_to_set
    assert timer.purpose == "delay" and timer.due_at == NOW + timedelta(minutes=1)
    assert d.state.status == "waiting" and kinds(d)[-1] == ("run_waiting", None)
    woke = fire(d.state, timer.timer_id, NOW + timedelta(minutes=1))
    assert ("step_completed", "wait") in kinds(woke) and ("run_resumed", None) in kinds(woke)
    assert woke.dispatch_now == ["b"] and woke.state.status == "running"
    assert fire(woke.state, timer.timer_id).events == []


def test_cancel_during_a_delay_disarms_the_timer() -> None:
    d = start(doc(delay("wait", 60_000), py("b")))
    (timer,) = d.timers_to_set
    c = cancel_run(d.state, "not needed", "ops", NOW, META)
    assert kinds(c)[0] == ("timer_canceled", None)
    assert [t.timer_id for t in c.timers_to_cancel] == [timer.timer_id]
    assert c.state.status == "canceled" and statuses(c.state) == {"wait": "skipped", "b": "skipped"}
    assert fire(c.state, timer.timer_id).events == []
    with pytest.raises(Rejected, match="already canceled"):
        cancel_run(c.state, "", None, NOW, META)


# --- retries and timeouts ---------------------------------------------------------------


def test_a_flaky_step_is_retried_with_exponential_backoff_and_then_succeeds() -> None:
    retry = {"max_attempts": 3, "backoff_ms": 100, "factor": 2.0}
    d = start(doc(py("flaky", retry=retry), py("next")))
    d = reply(d.state, fail("flaky", 1))
    retry_event = next(e for e in d.events if e.type == "step_retry_scheduled")
    assert retry_event.data["attempt"] == 2 and retry_event.data["delay_ms"] == 100
    assert d.state.status == "waiting" and d.state.steps["flaky"].status == "retrying"
    (backoff,) = [t for t in d.timers_to_set if t.purpose == "backoff"]
    d = fire(d.state, backoff.timer_id)
    assert d.dispatch_now == ["flaky"] and d.state.steps["flaky"].attempt == 2
    d = reply(d.state, fail("flaky", 2))
    assert next(e for e in d.events if e.type == "step_retry_scheduled").data["delay_ms"] == 200
    (backoff,) = [t for t in d.timers_to_set if t.purpose == "backoff"]
    d = reply(fire(d.state, backoff.timer_id).state, ok("flaky", 3, result={"n": 3}))
    assert d.dispatch_now == ["next"] and d.state.context["flaky"] == {"n": 3}


def test_out_of_attempts_dead_letters_the_run() -> None:
    d = start(doc(py("flaky", retry={"max_attempts": 2, "backoff_ms": 0})))
    d = reply(d.state, fail("flaky", 1))
    assert d.dispatch_now == ["flaky"]  # no backoff: the next attempt goes at once
    d = reply(d.state, fail("flaky", 2, error="still broken"))
    dead = next(e for e in d.events if e.type == "step_dead_lettered")
    assert dead.data == {"run_id": RUN, "step": "flaky", "attempts": 2, "reason": "failed",
                         "last_error": "still broken"}
    assert d.state.status == "failed" and d.events[-1].data["code"] == "dead_lettered"


def test_a_step_that_gets_no_result_times_out_and_its_late_result_is_ignored() -> None:
    d = start(doc(py("hang", timeout_ms=2_000, retry={"max_attempts": 2, "backoff_ms": 0})))
    (timeout,) = d.timers_to_set
    assert timeout.purpose == "step_timeout" and timeout.due_at == NOW + timedelta(seconds=2)
    d = fire(d.state, timeout.timer_id, NOW + timedelta(seconds=2))
    failed = next(e for e in d.events if e.type == "step_failed")
    assert failed.data["timed_out"] is True and failed.data["will_retry"] is True
    assert d.dispatch_now == ["hang"] and d.state.steps["hang"].attempt == 2
    late = reply(d.state, ok("hang", 1))
    assert kinds(late) == [("step_result_ignored", "hang")]
    assert "timed out" in late.events[0].data["reason"]
    done = reply(late.state, ok("hang", 2))
    assert done.state.status == "completed"
    assert [t.purpose for t in done.timers_to_cancel] == ["step_timeout"]


def test_actions_get_a_default_timeout_from_their_own() -> None:
    d = start(doc({"name": "s", "type": "action", "uses": "shell", "with": {"command": "true", "timeout_ms": 1000}}))
    (timer,) = d.timers_to_set
    assert timer.due_at == NOW + timedelta(milliseconds=31_000)


def test_run_timeout_fails_the_run() -> None:
    d = start(doc(py("slow"), timeout_ms=5_000))
    run_timer = next(t for t in d.timers_to_set if t.purpose == "run_timeout")
    d = fire(d.state, run_timer.timer_id)
    assert d.state.status == "failed" and d.events[-1].data["code"] == "timed_out"
    assert statuses(d.state) == {"slow": "skipped"}


def test_backoff_formula_caps_and_jitters() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_ms=1000, factor=3, max_backoff_ms=5000, jitter=0.2)
    assert policy.backoff_for(1, 0.5) == 1000
    assert policy.backoff_for(2, 0.5) == 3000
    assert policy.backoff_for(3, 0.5) == 5000
    assert policy.backoff_for(1, 0.0) == 800 and policy.backoff_for(1, 0.999999) == 1200


# --- cancel and retry-from-failure ------------------------------------------------------


def test_cancel_skips_unfinished_steps_and_ignores_the_running_steps_late_result() -> None:
    d = start(doc(py("a"), py("b")))
    c = cancel_run(d.state, "wrong input", "ops", NOW, META)
    assert kinds(c)[-1] == ("run_canceled", None)
    assert statuses(c.state) == {"a": "skipped", "b": "skipped"}
    late = reply(c.state, ok("a"))
    assert kinds(late) == [("step_result_ignored", "a")] and late.events[0].data["reason"] == "the run was canceled"


def test_retry_from_failure_keeps_completed_steps_and_their_results() -> None:
    d = start(doc(py("extract"), py("load"), py("notify")))
    d = reply(d.state, ok("extract", result={"rows": 7}))
    d = reply(d.state, fail("load"))
    assert d.state.status == "failed"
    with pytest.raises(Rejected, match="only failed"):
        retry_run(start(doc(py("x"))).state, "", None, NOW, META)
    r = retry_run(d.state, "fixed the handler", "ops", NOW, META, dead_letter_id=f"{RUN}:load:1")
    assert r.events[0].data["steps"] == ["load", "notify"] and r.state.status == "pending"
    s = start_run(r.state, NOW, META)
    assert s.dispatch_now == ["load"] and s.state.steps["load"].attempt == 2
    assert s.state.context == {"extract": {"rows": 7}}
    done = reply(reply(s.state, ok("load", 2)).state, ok("notify"))
    assert done.state.status == "completed"


def test_retry_resets_the_attempt_budget() -> None:
    d = start(doc(py("x", retry={"max_attempts": 2, "backoff_ms": 0})))
    d = reply(reply(d.state, fail("x", 1)).state, fail("x", 2))
    s = start_run(retry_run(d.state, "", None, NOW, META).state, NOW, META)
    d = reply(s.state, fail("x", 3))
    assert d.state.status != "failed" and d.dispatch_now == ["x"]


# --- replay -----------------------------------------------------------------------------


def test_replay_skips_replay_unsafe_actions_and_dry_run_skips_every_action() -> None:
    definition = doc(py("fetch"), py("email", replay_safe=False), cel("gate", "true"), delay("wait", 1000))
    replay = start(definition, {"trigger_id": "t2", "payload": {}, "replay_of": "t1", "dry_run": False})
    assert replay.events[0].data["is_replay"] is True and replay.events[0].data["replay_of"] == "t1"
    d = reply(replay.state, ok("fetch"))
    skipped = next(e for e in d.events if e.type == "step_skipped")
    assert skipped.data["step"] == "email" and skipped.data["cause"] == "replay"
    dry = start(definition, {"trigger_id": "t3", "payload": {}, "replay_of": "t1", "dry_run": True})
    assert dry.state.status == "completed" and dry.dispatch_now == []
    reasons = {e.data["step"]: e.data for e in dry.events if e.type == "step_skipped"}
    assert set(reasons) == {"fetch", "email", "wait"}
    assert reasons["fetch"]["would_run"] == {"uses": "python", "with": {"ref": "m.h:f"}}
    assert dry.state.steps["gate"].status == "completed"  # CEL is side-effect free: evaluated


# --- admission --------------------------------------------------------------------------


def test_admission_is_fifo_per_pipeline_and_respects_tenant_limits() -> None:
    limits = {"p": Limits(pipeline_max=2, tenant_max=3), "q": Limits(pipeline_max=None, tenant_max=3)}
    admission = Admission(lambda tenant, pipeline: limits[pipeline])
    assert [admission.admit("t", "p", f"p{i}") for i in range(4)] == [
        None, None, "pipeline at its limit of 2 concurrent runs", "pipeline at its limit of 2 concurrent runs"]
    assert admission.admit("t", "q", "q0") is None
    assert admission.admit("t", "q", "q1") == "tenant at its limit of 3 concurrent runs"
    admission.forget("p0")
    assert admission.startable("t") == [("p2", "p")]
    admission.forget("q0")
    assert admission.startable("t") == [("q1", "q")]  # p3 waits: p is at its limit again
    admission.forget("p1")
    assert admission.startable("t") == [("p3", "p")]
    limits["p"] = Limits(pipeline_max=2, tenant_max=3, paused=True)
    assert admission.admit("t", "p", "p4") == "pipeline paused"


# --- property: random interleavings never break the state machine ------------------------

PIPELINE = doc(
    py("a", retry={"max_attempts": 3, "backoff_ms": 10}, timeout_ms=1000),
    parallel("fan", [py("b1", retry={"max_attempts": 2, "backoff_ms": 0}), delay("d", 50)], [py("c1")]),
    cel("gate", "true", on_false="skip"),
    py("z"),
    timeout_ms=60_000,
)
STEPS = ["a", "b1", "c1", "z", "d", "fan", "gate", "nope"]

command = st.one_of(
    st.tuples(st.just("ok"), st.sampled_from(STEPS), st.integers(1, 4)),
    st.tuples(st.just("fail"), st.sampled_from(STEPS), st.integers(1, 4)),
    st.tuples(st.just("fire"), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("cancel"), st.just(""), st.just(0)),
    st.tuples(st.just("retry"), st.just(""), st.just(0)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command, max_size=40))
def test_random_results_timers_cancels_and_retries_never_break_the_state_machine(
    commands: list[tuple[str, Any, int]],
) -> None:
    decision = start(PIPELINE)
    state = decision.state
    history = list(decision.events)
    armed: list[str] = [t.timer_id for t in decision.timers_to_set]
    for kind, arg, attempt in commands:
        try:
            if kind == "ok":
                decision = reply(state, ok(arg, attempt, result={"value": True}))
            elif kind == "fail":
                decision = reply(state, fail(arg, attempt))
            elif kind == "fire":
                decision = fire(state, armed[arg % len(armed)] if armed else "none")
            elif kind == "cancel":
                decision = cancel_run(state, "", None, NOW, META)
            else:
                retried = retry_run(state, "", None, NOW, META)
                history.extend(retried.events)
                decision = start_run(retried.state, NOW, META)
        except Rejected:
            continue
        armed.extend(t.timer_id for t in decision.timers_to_set)
        history.extend(decision.events)
        state = decision.state
    # Folding the recorded events reproduces the decided state (no illegal transition inside).
    folded = evolve_new(RunState(run_id=RUN), history)
    assert statuses(folded) == statuses(state) and folded.status == state.status
    # Between two retries at most one terminal event; never two terminal events in a row.
    terminal = ("run_completed", "run_failed", "run_canceled")
    since_retry = 0
    for event in history:
        if event.type == "run_retried":
            since_retry = 0
        elif event.type in terminal:
            since_retry += 1
            assert since_retry == 1
    if state.is_terminal:
        assert state.timers == {}
        assert all(s.status in ("completed", "failed", "skipped") for s in state.steps.values())


def test_a_queued_run_not_yet_stored_keeps_its_place_but_cannot_start() -> None:
    admission = Admission(lambda tenant, pipeline: Limits(pipeline_max=1))
    assert admission.admit("t", "p", "r1") is None
    assert admission.admit("t", "p", "r2", stored=False) is not None
    assert admission.admit("t", "p", "r3") is not None
    admission.forget("r1")
    assert admission.startable("t") == []  # r2's events are not committed: neither it nor r3 may start
    admission.mark_stored("r2")
    assert admission.startable("t") == [("r2", "p")]
