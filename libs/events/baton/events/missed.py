"""The missed-fire policy as a pure decision: which missed slots fire now and which are skipped.

A slot is *missed* when it came due while no scheduler could fire it (every replica was
down, or the pipeline was paused): it lies after the schedule's anchor (its last decided
slot, or the moment it was activated) and before ``until`` (now minus a small grace).
Policies (``ScheduleSpec.missed``):

- ``skip`` (default): none fires; the whole range is recorded as skipped;
- ``latest``: the most recent missed slot inside ``catch_up_window`` fires once;
- ``catch_up``: every missed slot inside the window fires, oldest first, each with its
  slot time as ``slice_key``; at most ``max_fires`` per round, and the caller goes again
  from the last one it fired until none is left.

Slots older than the window are skipped under every policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from baton.events.cron import CronSchedule

MissedPolicy = Literal["skip", "latest", "catch_up"]
MAX_FIRES_PER_ROUND = 500
MAX_COUNTED = 1_000
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class SkippedRange:
    """Consecutive slots that will not fire: first and last slot, and how many (exact up to MAX_COUNTED)."""

    first: datetime
    last: datetime
    count: int
    count_exact: bool
    reason: str


@dataclass(frozen=True)
class MissedPlan:
    """What to do about missed slots: skip a range (maybe), then fire ``fire`` in order."""

    skipped: SkippedRange | None
    fire: list[datetime]
    more: bool  # catch_up only: slots are left for another round after these fires


NOTHING = MissedPlan(None, [], False)


def skipped_range(schedule: CronSchedule, after: datetime, until: datetime, reason: str) -> SkippedRange | None:
    """The slots in ``(after, until]`` as one skipped range, or None when there are none."""
    first = schedule.next_fire(after)
    if first is None or first > until:
        return None
    counted = schedule.slots_between(after, until, limit=MAX_COUNTED + 1)
    exact = len(counted) <= MAX_COUNTED
    last = counted[-1] if exact else schedule.last_fire(until, after)
    return SkippedRange(first, last or first, min(len(counted), MAX_COUNTED), exact, reason)


def plan_missed(
    schedule: CronSchedule,
    policy: MissedPolicy,
    window: timedelta,
    after: datetime,
    until: datetime,
    now: datetime,
    max_fires: int = MAX_FIRES_PER_ROUND,
) -> MissedPlan:
    """Decide about the slots in ``(after, until]`` at ``now`` under ``policy`` and ``window``."""
    if until <= after:
        return NOTHING
    window_start = now - window - _MICRO  # a slot exactly ``window`` old is still inside
    if policy == "skip":
        return MissedPlan(skipped_range(schedule, after, until, "missed"), [], False)
    if policy == "latest":
        latest = schedule.last_fire(until, max(after, window_start))
        if latest is None:
            return MissedPlan(skipped_range(schedule, after, until, "missed, outside catch_up_window"), [], False)
        skipped = skipped_range(schedule, after, latest - _MICRO, "missed, not the latest")
        return MissedPlan(skipped, [latest], False)
    skipped = (
        skipped_range(schedule, after, window_start, "missed, outside catch_up_window")
        if window_start > after
        else None
    )
    slots = schedule.slots_between(max(after, window_start), until, limit=max_fires + 1)
    return MissedPlan(skipped, slots[:max_fires], len(slots) > max_fires)
