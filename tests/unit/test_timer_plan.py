"""Pure parts of the durable timers: parsing requests and the in-memory wake-up plan."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.events.subjects import Subjects
from baton.events.timers import TimerCancel, TimerRequest
from baton.scheduler.due_times import DueTimes
from baton.scheduler.timer_messages import RejectedTimerMessage, parse_timer_message

pytestmark = pytest.mark.unit

SUBJECTS = Subjects("baton")


def test_a_set_and_a_cancel_parse_into_their_models() -> None:
    parsed = parse_timer_message(
        SUBJECTS, "baton.timer.set", b'{"timer_id": "r:delay:s", "tenant": "acme", "due_at": "2030-01-01T00:00:00Z"}'
    )
    assert isinstance(parsed, TimerRequest)
    assert parsed.due_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_timer_message(SUBJECTS, "baton.timer.cancel", b'{"timer_id": "r:delay:s"}') == TimerCancel(
        timer_id="r:delay:s"
    )


def test_a_naive_due_time_is_read_as_utc() -> None:
    parsed = parse_timer_message(
        SUBJECTS, "baton.timer.set", b'{"timer_id": "t", "tenant": "acme", "due_at": "2030-01-01T12:00:00"}'
    )
    assert isinstance(parsed, TimerRequest)
    assert parsed.due_at == datetime(2030, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("subject", "body", "reason", "detail"),
    [
        ("baton.timer.set", b"{oops", "invalid_timer", "Invalid JSON"),
        ("baton.timer.set", b'{"timer_id": "t", "tenant": "a"}', "invalid_timer", "due_at"),
        ("baton.timer.set", b'{"timer_id": "", "tenant": "a", "due_at": "2030-01-01T00:00:00Z"}', "invalid_timer",
         "timer_id"),
        ("baton.timer.set", b'{"timer_id": "t", "tenant": "a", "due_at": "2030-01-01T00:00:00Z", "payload": {"x":'
         b' "\\u0000"}}', "invalid_timer", "NUL"),
        ("baton.timer.cancel", b'{"timer_id": "a\\u0000b"}', "invalid_timer", "NUL"),
        ("baton.timer.fired", b"{}", "unknown_subject", "baton.timer.fired"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(subject: str, body: bytes, reason: str, detail: str) -> None:
    verdict = parse_timer_message(SUBJECTS, subject, body)
    assert isinstance(verdict, RejectedTimerMessage)
    assert verdict.reason == reason
    assert detail in verdict.detail


def test_the_plan_wakes_for_the_earliest_and_pops_what_is_due() -> None:
    plan = DueTimes()
    assert plan.next_due() is None
    assert plan.add("b", 20.0) is True
    assert plan.add("c", 30.0) is False  # later than what is planned: no need to wake early
    assert plan.add("a", 10.0) is True
    assert plan.add("a", 10.0) is False  # the same plan twice changes nothing
    plan.discard("b")
    assert plan.pop_due(25.0) == ["a"]
    assert plan.next_due() == 30.0
    assert len(plan) == 1


def test_moving_a_timer_replaces_its_old_due_time() -> None:
    plan = DueTimes()
    plan.add("t", 50.0)
    plan.add("t", 5.0)
    assert plan.pop_due(10.0) == ["t"]
    assert plan.pop_due(100.0) == []


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 1000)), max_size=60), st.integers(1, 8))
def test_the_plan_keeps_the_nearest_timers_within_its_limit(adds: list[tuple[str, float]], limit: int) -> None:
    plan = DueTimes(limit)
    latest: dict[str, float] = {}
    for timer_id, due in adds:
        plan.add(timer_id, due)
        latest[timer_id] = due
    popped = plan.pop_due(float("inf"))
    assert len(popped) <= limit
    assert len(set(popped)) == len(popped)
    dues = [latest[t] for t in popped]  # each at its latest due time, earliest first
    assert dues == sorted(dues)
    if len(latest) <= limit:  # never over the limit: nothing was dropped
        assert set(popped) == set(latest)
