"""Missed-fire policies: skip, latest and catch_up, bounded by catch_up_window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from baton.events.cron import CronSchedule
from baton.events.missed import plan_missed

pytestmark = pytest.mark.unit

HOURLY = CronSchedule(["0 * * * *"])
T0 = datetime(2025, 5, 1, 0, 0, tzinfo=UTC)  # last decided slot
NOW = datetime(2025, 5, 1, 5, 30, tzinfo=UTC)  # five slots missed: 01:00 .. 05:00
DAY = timedelta(days=1)


def hours(*values: int) -> list[datetime]:
    return [T0 + timedelta(hours=h) for h in values]


def test_skip_fires_nothing_and_records_the_range() -> None:
    plan = plan_missed(HOURLY, "skip", DAY, T0, NOW, NOW)
    assert plan.fire == []
    assert plan.skipped is not None
    assert (plan.skipped.first, plan.skipped.last, plan.skipped.count) == (*hours(1, 5), 5)


def test_latest_fires_the_most_recent_once() -> None:
    plan = plan_missed(HOURLY, "latest", DAY, T0, NOW, NOW)
    assert plan.fire == hours(5)
    assert plan.skipped is not None
    assert (plan.skipped.first, plan.skipped.last, plan.skipped.count) == (*hours(1, 4), 4)


def test_catch_up_fires_each_slot_in_order() -> None:
    plan = plan_missed(HOURLY, "catch_up", DAY, T0, NOW, NOW)
    assert plan.fire == hours(1, 2, 3, 4, 5)
    assert plan.skipped is None and not plan.more


def test_catch_up_window_bounds_what_fires() -> None:
    plan = plan_missed(HOURLY, "catch_up", timedelta(hours=2, minutes=30), T0, NOW, NOW)
    assert plan.fire == hours(3, 4, 5)  # 03:00 is exactly 2h30 old: still inside
    assert plan.skipped is not None and (plan.skipped.first, plan.skipped.count) == (hours(1)[0], 2)


def test_latest_outside_the_window_skips_everything() -> None:
    plan = plan_missed(HOURLY, "latest", timedelta(minutes=10), T0, NOW, NOW)
    assert plan.fire == []
    assert plan.skipped is not None and plan.skipped.count == 5


def test_catch_up_goes_in_rounds() -> None:
    plan = plan_missed(HOURLY, "catch_up", DAY, T0, NOW, NOW, max_fires=2)
    assert plan.fire == hours(1, 2) and plan.more
    again = plan_missed(HOURLY, "catch_up", DAY, plan.fire[-1], NOW, NOW, max_fires=2)
    assert again.fire == hours(3, 4) and again.more
    last = plan_missed(HOURLY, "catch_up", DAY, again.fire[-1], NOW, NOW, max_fires=2)
    assert last.fire == hours(5) and not last.more


def test_nothing_missed() -> None:
    for policy in ("skip", "latest", "catch_up"):
        plan = plan_missed(HOURLY, policy, DAY, T0, T0 + timedelta(minutes=59), NOW)  # type: ignore[arg-type]
        assert plan.fire == [] and plan.skipped is None


def test_skipped_count_is_bounded_for_dense_schedules() -> None:
    every_second = CronSchedule(["* * * * * *"])
    plan = plan_missed(every_second, "skip", DAY, T0, T0 + timedelta(hours=5), NOW)
    assert plan.skipped is not None
    assert not plan.skipped.count_exact and plan.skipped.last == T0 + timedelta(hours=5)
