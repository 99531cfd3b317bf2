"""A schedule's state as the scheduler needs it, folded from the schedule's event stream.

This is how a restarted scheduler knows its last decided slot: nothing is kept
anywhere but the stream ``schedule-<tenant>.<pipeline>``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from baton.events.catalogue import (
    ScheduleActivated,
    ScheduleDeactivated,
    ScheduleFired,
    ScheduleSkipped,
    parse_event,
)
from baton.events.envelope import StoredEvent

RECENT_FIRES = 64


@dataclass
class ScheduleHistory:
    """Stream version, activation and the last slot decided (fired or skipped)."""

    version: int = 0
    active: bool = False
    signature: str | None = None
    activated_at: datetime | None = None
    last_slot: datetime | None = None
    recent_fires: deque[ScheduleFired] = field(default_factory=lambda: deque(maxlen=RECENT_FIRES))

    def anchor(self) -> datetime | None:
        """Missed slots are those after this instant: the last decided slot, or the activation if later."""
        candidates = [t for t in (self.last_slot, self.activated_at) if t is not None]
        return max(candidates) if candidates else None

    def apply(self, event: StoredEvent) -> None:
        """Fold one event of the schedule's stream (events of other types only move the version)."""
        self.version = event.stream_version
        data = parse_event(event)
        if isinstance(data, ScheduleActivated):
            self.active = True
            self.signature = f"{data.timezone}|{'|'.join(data.cron)}"
            self.activated_at = data.since
        elif isinstance(data, ScheduleDeactivated):
            self.active = False
            self.signature = None
        elif isinstance(data, ScheduleFired):
            self._decided(data.slot)
            self.recent_fires.append(data)
        elif isinstance(data, ScheduleSkipped):
            self._decided(data.last_slot)

    def _decided(self, slot: datetime) -> None:
        if self.last_slot is None or slot > self.last_slot:
            self.last_slot = slot


def fold_history(events: list[StoredEvent], history: ScheduleHistory | None = None) -> ScheduleHistory:
    """Fold ``events`` (in stream order) into ``history`` (a fresh one when None)."""
    state = history or ScheduleHistory()
    for event in events:
        state.apply(event)
    return state
