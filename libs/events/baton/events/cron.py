"""Fire times of cron schedules in IANA timezones, DST-correct (pure; APScheduler 3 matches the fields).

A cron string names local wall-clock times. APScheduler's ``CronTrigger`` finds the
matching wall times (run in UTC, so it never sees a DST transition); this module maps
each wall time to real instants with explicit rules, the ones Vixie cron follows:

- a wall time that does not exist (spring forward, 02:30 in Europe/Berlin on the last
  Sunday of March) fires once, shifted by the gap (03:30 local), as PEP 495 reads it;
  if that instant is also a regular slot, it fires once;
- a wall time that happens twice (fall back) fires once, at its first occurrence, unless
  the minute or hour field starts with ``*`` (an interval-like job such as ``*/15 * * * *``
  or ``0 * * * *``): those follow elapsed time and fire in both occurrences.

Strings have 5 fields (``m h dom mon dow``, standard cron: day of week 0 or 7 is Sunday,
day of month and day of week restricted together match either) or 6 with a leading
seconds field; ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly`` work too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Offsets change by at most a few hours at a transition; walls this far around an
# instant are enough to find every slot a transition may have moved past it.
TRANSITION_MARGIN = timedelta(hours=3)
_MICRO = timedelta(microseconds=1)
_DOW_TOKEN = re.compile(r"^(\*|[0-7a-z]{1,3}(?:-[0-7a-z]{1,3})?)(?:/(\d+))?$")


class CronError(ValueError):
    """A cron string or timezone that cannot be scheduled."""


def _day_number(token: str) -> int:
    if token.isdigit():
        value = int(token)
        if value > 7:
            raise CronError(f"day of week {token!r} is out of range 0-7")
        return value % 7
    if token in DAY_NAMES:
        return DAY_NAMES.index(token)
    raise CronError(f"unknown day of week {token!r}")


def _day_of_week(field: str) -> str:
    """Standard cron day of week (0/7 = Sunday, ranges, steps, names) as APScheduler day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        match = _DOW_TOKEN.match(part)
        if match is None:
            raise CronError(f"day of week {part!r} is not understood")
        span, step = match.group(1), int(match.group(2) or 1)
        if step < 1:
            raise CronError("a step must be at least 1")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, high = span.split("-")
            first, last = _day_number(low), _day_number(high)
            if high == "7":
                last = 7  # '5-7' is Friday to Sunday
        else:
            first = last = _day_number(span)
        if last < first:
            raise CronError(f"day of week range {span!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(DAY_NAMES[day] for day in sorted(days))


def _restricted(field: str) -> bool:
    return field not in ("*", "?")


@dataclass(frozen=True)
class CronExpression:
    """One parsed cron string: the APScheduler triggers matching its wall times (UTC-naive)."""

    text: str
    triggers: tuple[CronTrigger, ...]
    interval_like: bool  # minute or hour field starts with '*': fires in both occurrences of a repeated hour

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse 5 or 6 fields (or a macro); raises CronError naming the problem."""
        fields = MACROS.get(text.strip().lower(), text).split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise CronError(f"{text!r} has {len(fields)} fields; expected 5 (m h dom mon dow) or 6 (s m h dom mon dow)")
        second, minute, hour, day, month, dow = fields
        try:
            common = {"second": second, "minute": minute, "hour": hour, "month": month, "timezone": UTC}
            day_of_week = _day_of_week(dow)
            if _restricted(day) and _restricted(dow):
                # Standard cron: both restricted means either may match.
                triggers: tuple[CronTrigger, ...] = (
                    CronTrigger(day=day, **common),
                    CronTrigger(day_of_week=day_of_week, **common),
                )
            else:
                triggers = (CronTrigger(day="*" if day == "?" else day, day_of_week=day_of_week, **common),)
        except ValueError as exc:
            raise CronError(str(exc)) from exc
        return cls(text, triggers, minute.startswith("*") or hour.startswith("*") or second.startswith("*"))

    def next_wall(self, after: datetime) -> datetime | None:
        """The first matching naive wall time strictly after the naive wall time ``after``."""
        start = after.replace(tzinfo=UTC) + _MICRO
        found = [t.get_next_fire_time(None, start) for t in self.triggers]
        candidates = [f for f in found if f is not None]
        return min(candidates).replace(tzinfo=None) if candidates else None


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _instants(wall: datetime, zone: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants a local wall time stands for (one, or two in a repeated hour)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if not both_folds:
        return [first]
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if second == first:
        return [first]
    # In a gap fold=1 reads the wall with the later offset, landing before the gap: not a time that happened.
    if _wall(second, zone) != wall:
        return [first]
    return [first, second]


def _near_transition(instant: datetime, zone: ZoneInfo) -> bool:
    before = (instant - TRANSITION_MARGIN).astimezone(zone).utcoffset()
    after = (instant + TRANSITION_MARGIN).astimezone(zone).utcoffset()
    return before != after


class CronSchedule:
    """The fire times of one or more cron strings in one timezone."""

    def __init__(self, crons: list[str] | tuple[str, ...], timezone: str = "UTC") -> None:
        try:
            self.zone = ZoneInfo(timezone)
        except (KeyError, ValueError) as exc:
            raise CronError(f"unknown timezone {timezone!r}") from exc
        if not crons:
            raise CronError("a schedule needs at least one cron string")
        self.expressions = tuple(CronExpression.parse(c) for c in crons)

    def _next_for(self, expression: CronExpression, after: datetime) -> datetime | None:
        zone = self.zone
        near = _near_transition(after, zone)
        wall = _wall(after - TRANSITION_MARGIN if near else after, zone)
        if not near:
            # Away from a transition walls map to instants one to one and in order.
            wall -= _MICRO  # a slot exactly at ``after`` is not after it, but its wall must be visited
        best: datetime | None = None
        while True:
            nxt = expression.next_wall(wall)
            if nxt is None:
                return best
            wall = nxt
            if best is not None:
                limit = _wall(best, zone) + (TRANSITION_MARGIN if _near_transition(best, zone) else timedelta(0))
                if wall > limit:
                    return best
            for instant in _instants(wall, zone, expression.interval_like):
                if instant > after and (best is None or instant < best):
                    best = instant

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware, UTC), or None if there is none."""
        if after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        found = [f for f in (self._next_for(e, after) for e in self.expressions) if f is not None]
        return min(found) if found else None

    def fire_times(self, after: datetime, until: datetime | None = None) -> Iterator[datetime]:
        """Fire times strictly after ``after`` and at or before ``until`` (open-ended without it), in order."""
        current = after
        while True:
            nxt = self.next_fire(current)
            if nxt is None or (until is not None and nxt > until):
                return
            yield nxt
            current = nxt

    def last_fire(self, until: datetime, after: datetime) -> datetime | None:
        """The last fire time in ``(after, until]``, or None: probes back over growing spans, not every slot."""
        span = timedelta(minutes=1)
        while True:
            start = max(until - span, after)
            slots = self.slots_between(start, until)
            if slots:
                return slots[-1]
            if start <= after:
                return None
            span *= 8

    def slots_between(self, after: datetime, until: datetime, limit: int | None = None) -> list[datetime]:
        """Fire times in ``(after, until]``, at most ``limit`` of them (the earliest)."""
        slots: list[datetime] = []
        for slot in self.fire_times(after, until):
            if limit is not None and len(slots) >= limit:
                break
            slots.append(slot)
        return slots


def slot_key(slot: datetime) -> str:
    """A slot's canonical text: UTC ISO 8601 with a 'Z' (idempotency keys, slice keys)."""
    text = slot.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text
