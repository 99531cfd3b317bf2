"""The nearest due times of armed timers, kept in memory so the scheduler wakes exactly on time.

Pure data structure (no I/O): a heap of ``(due, timer_id)`` with lazy deletion. The table
stays the source of truth; this is only a wake-up plan, so a stale entry (a timer another
replica fired, or one cancelled) costs one empty claim, never a wrong fire.
"""

from __future__ import annotations

import heapq


class DueTimes:
    """Earliest-first due times (epoch seconds) of at most ``limit`` timers."""

    def __init__(self, limit: int = 100_000) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def add(self, timer_id: str, due: float) -> bool:
        """Plan a wake-up for ``timer_id`` at ``due``; True when it is now the earliest one."""
        if self._due.get(timer_id) == due:
            return False
        before = self.next_due()
        self._due[timer_id] = due
        heapq.heappush(self._heap, (due, timer_id))
        if len(self._due) > self.limit:
            self._keep_nearest()
        return timer_id in self._due and (before is None or due < before)

    def discard(self, timer_id: str) -> None:
        """Forget ``timer_id`` (its heap entry is dropped lazily)."""
        self._due.pop(timer_id, None)

    def next_due(self) -> float | None:
        """The earliest planned due time, or None when nothing is planned."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[str]:
        """Remove and return every timer due at or before ``now``, earliest first."""
        due: list[str] = []
        while (head := self.next_due()) is not None and head <= now:
            _, timer_id = heapq.heappop(self._heap)
            del self._due[timer_id]
            due.append(timer_id)
        return due

    def _drop_stale_top(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _keep_nearest(self) -> None:
        # Over the limit: keep the nearest ``limit``; the farthest are found again by the
        # periodic poll of the table when they come near.
        nearest = heapq.nsmallest(self.limit, ((due, tid) for tid, due in self._due.items()))
        self._heap = list(nearest)
        heapq.heapify(self._heap)
        self._due = {tid: due for due, tid in nearest}
