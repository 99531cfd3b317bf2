"""Group commit: many concurrent appends (from many runs) share one store transaction.

Callers ``submit`` a unit and await its outcome. A single flusher takes everything
queued while the previous transaction was in flight, so the batch size grows with
load by itself and no artificial delay is added at low load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from baton.events.store import AppendRequest, EventStore, UnitResult, WrongExpectedVersion

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    unit: Sequence[AppendRequest]
    done: asyncio.Future[UnitResult]


class GroupCommitter:
    """Batches submitted units into as few transactions as the store's speed allows."""

    def __init__(self, store: EventStore, max_units: int = 1000) -> None:
        self._store = store
        self._max_units = max_units
        self._queue: list[_Pending] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0
        self.units = 0

    def start(self) -> None:
        """Start the flusher task."""
        self._task = asyncio.create_task(self._flush_forever(), name="group-commit")

    async def close(self) -> None:
        """Flush what is queued, then stop the flusher."""
        while self._queue:
            await self._flush_once()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, unit: Sequence[AppendRequest]) -> list[int]:
        """Append one all-or-nothing unit; returns its streams' new versions or raises the conflict."""
        done: asyncio.Future[UnitResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(unit, done))
        self._ready.set()
        outcome = await done
        if isinstance(outcome, WrongExpectedVersion):
            raise outcome
        return outcome

    async def _flush_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                await self._flush_once()

    async def _flush_once(self) -> None:
        batch, self._queue = self._queue[: self._max_units], self._queue[self._max_units :]
        try:
            outcomes = await self._store.append_units([p.unit for p in batch])
        except Exception as exc:  # every waiter learns of the failure; the loop survives it
            log.warning("group commit of %d units failed: %s", len(batch), exc)
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        self.transactions += 1
        self.units += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if not pending.done.done():
                pending.done.set_result(outcome)
