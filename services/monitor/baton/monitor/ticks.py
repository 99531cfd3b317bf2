"""Recording ticks: batched appends to each monitor's tick stream, and resuming a cursor from them.

Many monitors tick at once; each tick is its own stream append, and the recorder puts
everything queued while the previous transaction was in flight into the next one (group
commit), so a thousand monitors ticking every second cost a handful of transactions.
Ticks append with ``ANY_VERSION``: the slot lease, not the stream version, makes one
replica the only writer of a monitor's ticks.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from baton.events.catalogue import MonitorTicked
from baton.events.envelope import EventMetadata
from baton.events.postgres_store import PostgresEventStore
from baton.events.store import ANY_VERSION, AppendRequest, StoreUnavailable, WrongExpectedVersion
from baton.events.stream_ids import monitor_ticks_stream

log = logging.getLogger(__name__)

LATEST_CURSOR = text(
    "SELECT data -> 'cursor' FROM events WHERE stream_id = :stream AND type = 'monitor_ticked'"
    " AND jsonb_typeof(data -> 'cursor') = 'object' ORDER BY stream_version DESC LIMIT 1"
)
MAX_BATCH = 2000


@dataclass
class _Queued:
    request: AppendRequest
    done: asyncio.Future[None]


class TickRecorder:
    """Appends tick events in group-committed batches; ``record`` returns once the tick is durable."""

    def __init__(self, store: PostgresEventStore, replica: str) -> None:
        self._store = store
        self._replica = replica
        self._queue: list[_Queued] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0

    def start(self) -> None:
        """Start the flusher task."""
        self._task = asyncio.create_task(self._flush_forever(), name="tick-recorder")

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        while self._queue:
            await self._flush_once()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def record(self, tick: MonitorTicked) -> None:
        """Append one tick to its monitor's tick stream; raises StoreUnavailable if it could not be stored."""
        event = tick.to_event(EventMetadata(actor=self._replica, correlation_id=tick.tick_id))
        request = AppendRequest(monitor_ticks_stream(tick.tenant, tick.name), tick.tenant, [event], ANY_VERSION)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(request, done))
        self._ready.set()
        await done

    async def _flush_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                await self._flush_once()

    async def _flush_once(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            outcomes = await self._store.append_units([[q.request] for q in batch])
        except Exception as exc:  # every waiter learns of it; the flusher lives on
            log.warning("recording %d tick(s) failed: %s", len(batch), exc)
            failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
            for queued in batch:
                if not queued.done.done():
                    queued.done.set_exception(failure)
            return
        for queued, outcome in zip(batch, outcomes, strict=True):
            if queued.done.done():
                continue
            if isinstance(outcome, WrongExpectedVersion):  # impossible with ANY_VERSION; never hang a waiter
                queued.done.set_exception(StoreUnavailable(str(outcome)))
            else:
                queued.done.set_result(None)
        self.recorded += len(batch)


async def load_cursor(store: PostgresEventStore, tenant: str, name: str) -> dict[str, Any] | None:
    """The newest cursor recorded in the monitor's ticks (None before its first tick)."""
    try:
        async with store.engine.connect() as conn:
            value = (await conn.execute(LATEST_CURSOR, {"stream": monitor_ticks_stream(tenant, name)})).scalar()
    except DBAPIError as exc:
        raise StoreUnavailable(f"event store unavailable: {exc.orig}") from exc
    return value if isinstance(value, dict) else None
