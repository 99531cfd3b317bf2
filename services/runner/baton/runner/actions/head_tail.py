"""A bounded, thread-safe record of what a step wrote: its first items as written, then its latest.

A step's log and telemetry must stay small in the event store however much a handler
writes. The first half of the budget is kept as written and may be sent while the step
still runs (a live tail for long steps); beyond it, only the latest items are kept in a
ring that is sent with the outcome, because the end of a log explains how a step ended.
Everything in between is dropped and counted.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class HeadTailBuffer(Generic[T]):
    """Keeps the first `limit // 2` (rounded up) items and the last `limit // 2`; counts the rest."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._head_limit = (limit + 1) // 2
        self._head: list[T] = []
        self._tail: deque[T] = deque(maxlen=limit - self._head_limit)
        self._taken = 0
        self._dropped = 0
        # Sync handlers run in a thread while the worker's loop takes batches.
        self._lock = threading.Lock()

    def append(self, item: T) -> None:
        """Record `item`; once the head is full it goes to the tail ring, pushing out the oldest."""
        with self._lock:
            if len(self._head) < self._head_limit:
                self._head.append(item)
                return
            if len(self._tail) == self._tail.maxlen:
                self._dropped += 1
            self._tail.append(item)

    @property
    def dropped(self) -> int:
        """Items dropped between the head and the tail."""
        with self._lock:
            return self._dropped

    def items(self) -> list[T]:
        """Every kept item, oldest first (taken ones included)."""
        with self._lock:
            return [*self._head, *self._tail]

    def take_head(self) -> list[T]:
        """Head items not handed out yet: safe to send before the step ends, they are never dropped."""
        with self._lock:
            fresh = self._head[self._taken :]
            self._taken = len(self._head)
            return fresh

    def take_rest(self) -> list[T]:
        """Everything kept and not handed out yet: the untaken head, then the tail. Call once, at the end."""
        with self._lock:
            rest = [*self._head[self._taken :], *self._tail]
            self._taken = len(self._head)
            return rest
