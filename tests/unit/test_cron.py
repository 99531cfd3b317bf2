"""Cron fire times: standard cron fields, several strings, and DST transitions in two timezones."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from baton.events.cron import CronError, CronSchedule, slot_key
from baton.events.schedule import ScheduleSpec

pytestmark = pytest.mark.unit

# (zone, spring-forward day, fall-back day) in 2025
ZONES = [
    ("Europe/Berlin", date(2025, 3, 30), date(2025, 10, 26)),
    ("America/New_York", date(2025, 3, 9), date(2025, 11, 2)),
]


def local_day(schedule: CronSchedule, day: date) -> list[str]:
    """Every fire on one local calendar day, as 'HH:MM+offset' local strings."""
    zone = schedule.zone
    start = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC) - timedelta(microseconds=1)
    end = (datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
    return [s.astimezone(zone).strftime("%H:%M%z") for s in schedule.slots_between(start, end) if s < end]


@pytest.mark.parametrize(("zone", "spring", "fall"), ZONES)
def test_daily_0230_fires_once_on_both_transition_days(zone: str, spring: date, fall: date) -> None:
    schedule = CronSchedule(["30 2 * * *"], zone)
    spring_fires = local_day(schedule, spring)
    fall_fires = local_day(schedule, fall)
    assert len(spring_fires) == 1 and len(fall_fires) == 1
    # 02:30 does not exist on the spring day: it fires shifted by the gap, at 03:30 summer time.
    assert spring_fires[0].startswith("03:30")
    assert fall_fires[0].startswith("02:30")
    # The days around keep their 02:30 in the right offset.
    before, after = local_day(schedule, spring - timedelta(days=1)), local_day(schedule, spring + timedelta(days=1))
    assert before[0].startswith("02:30") and after[0].startswith("02:30")
    assert before[0][5:] != after[0][5:]  # standard offset before, summer offset after


def test_berlin_fall_back_fixed_time_fires_at_first_occurrence() -> None:
    schedule = CronSchedule(["30 2 * * *"], "Europe/Berlin")
    (fire,) = [s for s in schedule.slots_between(datetime(2025, 10, 25, tzinfo=UTC), datetime(2025, 10, 27, tzinfo=UTC))
               if s.date() == date(2025, 10, 26)]
    assert fire == datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # 02:30 CEST, not 02:30 CET an hour later


@pytest.mark.parametrize(("zone", "spring", "fall"), ZONES)
def test_hourly_follows_elapsed_time_across_transitions(zone: str, spring: date, fall: date) -> None:
    schedule = CronSchedule(["0 * * * *"], zone)
    assert len(local_day(schedule, spring)) == 23
    assert len(local_day(schedule, fall)) == 25
    for day in (spring, fall):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=1)
        slots = schedule.slots_between(start, start + timedelta(days=3))
        gaps = {b - a for a, b in itertools.pairwise(slots)}
        assert gaps == {timedelta(hours=1)}  # never doubled, never skipped


def test_next_fire_from_inside_the_repeated_hour_never_goes_back() -> None:
    schedule = CronSchedule(["30 2 * * *"], "Europe/Berlin")
    second_occurrence = datetime(2025, 10, 26, 1, 15, tzinfo=UTC)  # 02:15 CET, after 02:30 CEST already fired
    assert schedule.next_fire(second_occurrence) == datetime(2025, 10, 27, 1, 30, tzinfo=UTC)


def test_next_fire_is_strictly_after() -> None:
    schedule = CronSchedule(["*/15 * * * *"])
    at = datetime(2025, 1, 1, 10, 15, tzinfo=UTC)
    assert schedule.next_fire(at) == datetime(2025, 1, 1, 10, 30, tzinfo=UTC)
    assert schedule.next_fire(at - timedelta(microseconds=1)) == at


def test_day_of_week_is_standard_cron() -> None:
    sunday = CronSchedule(["0 0 * * 0"]).next_fire(datetime(2025, 1, 1, tzinfo=UTC))
    assert sunday is not None and sunday.strftime("%A") == "Sunday"
    seven = CronSchedule(["0 0 * * 7"]).next_fire(datetime(2025, 1, 1, tzinfo=UTC))
    assert seven == sunday
    weekdays = CronSchedule(["0 9 * * 1-5"]).slots_between(
        datetime(2025, 1, 5, tzinfo=UTC), datetime(2025, 1, 12, tzinfo=UTC)
    )
    assert [s.strftime("%a") for s in weekdays] == ["Mon", "Tue", "Wed", "Thu", "Fri"]


def test_day_of_month_and_week_restricted_together_match_either() -> None:
    june = datetime(2025, 6, 1, tzinfo=UTC)
    slots = CronSchedule(["0 0 13 * 5"]).slots_between(june, june + timedelta(days=30))
    assert [s.day for s in slots] == [6, 13, 20, 27]  # Fridays, and the 13th (a Friday too, once)


def test_several_strings_seconds_field_and_macros() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    both = CronSchedule(["0 6 * * *", "0 18 * * *", "@daily"]).slots_between(start, start + timedelta(days=1))
    assert [s.hour for s in both] == [6, 18, 0]
    every_second = CronSchedule(["* * * * * *"]).slots_between(start, start + timedelta(seconds=3))
    assert every_second == [start + timedelta(seconds=n) for n in (1, 2, 3)]


def test_last_fire_probes_back() -> None:
    schedule = CronSchedule(["0 0 1 1 *"])
    until = datetime(2025, 6, 1, tzinfo=UTC)
    assert schedule.last_fire(until, datetime(2020, 1, 1, tzinfo=UTC)) == datetime(2025, 1, 1, tzinfo=UTC)
    assert schedule.last_fire(until, datetime(2025, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize("bad", ["* * *", "61 * * * *", "0 0 * * 8", "0 0 * * 5-1", "nonsense here a b c"])
def test_invalid_cron_is_refused_with_the_index(bad: str) -> None:
    with pytest.raises(CronError):
        CronSchedule([bad])
    with pytest.raises(ValidationError, match=r"cron\[1\]"):
        ScheduleSpec(cron=["@hourly", bad])


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown timezone"):
        ScheduleSpec(cron="@hourly", timezone="Mars/Olympus")


def test_slot_key_is_utc_iso() -> None:
    assert slot_key(datetime(2025, 3, 30, 3, 30, tzinfo=ZoneInfo("Europe/Berlin"))) == "2025-03-30T01:30:00Z"
