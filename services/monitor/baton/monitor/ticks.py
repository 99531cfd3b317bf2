"""Recording ticks: batched appends to each monitor's tick stream, and resuming a cursor from them.

Many monitors tick at once; each tick is its own stream append, and the recorder puts
everything queued while the previous transaction was in flight into the next one (group
commit), so a thousand monitors ticking every second cost a handful of transactions.
Ticks append with ``ANY_VERSION``: the slot lease, not the stream version, makes one
replica the only writer of a monitor's ticks.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from baton.events.catalogue import MonitorTicked
from baton.events.envelope import EventMetadata
from baton.events.group_commit import GroupCommitter
from baton.events.postgres_store import PostgresEventStore
from baton.events.store import ANY_VERSION, AppendRequest, StoreUnavailable
from baton.events.stream_ids import monitor_ticks_stream

log = logging.getLogger(__name__)

LATEST_CURSOR = text(
    "SELECT data -> 'cursor' FROM events WHERE stream_id = :stream AND type = 'monitor_ticked'"
    " AND jsonb_typeof(data -> 'cursor') = 'object' ORDER BY stream_version DESC LIMIT 1"
)
MAX_BATCH = 2000


class TickRecorder:
    """Appends tick events in group-committed batches; ``record`` returns once the tick is durable."""

    def __init__(self, store: PostgresEventStore, replica: str) -> None:
        self._store = store
        self._replica = replica
        self._committer = GroupCommitter(store, max_units=MAX_BATCH)
        self.recorded = 0

    def start(self) -> None:
        """Start the flusher task."""
        self._committer.start()

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        await self._committer.close()

    async def record(self, tick: MonitorTicked) -> None:
        """Append one tick to its monitor's tick stream; raises StoreUnavailable if it could not be stored."""
        event = tick.to_event(EventMetadata(actor=self._replica, correlation_id=tick.tick_id))
        request = AppendRequest(monitor_ticks_stream(tick.tenant, tick.name), tick.tenant, [event], ANY_VERSION)
        try:
            await self._committer.submit([request])
        except StoreUnavailable:
            raise
        except Exception as exc:  # WrongExpectedVersion cannot happen with ANY_VERSION; never hang a caller
            raise StoreUnavailable(str(exc)) from exc
        self.recorded += 1


async def load_cursor(store: PostgresEventStore, tenant: str, name: str) -> dict[str, Any] | None:
    """The newest cursor recorded in the monitor's ticks (None before its first tick)."""
    try:
        async with store.engine.connect() as conn:
            value = (await conn.execute(LATEST_CURSOR, {"stream": monitor_ticks_stream(tenant, name)})).scalar()
    except DBAPIError as exc:
        raise StoreUnavailable(f"event store unavailable: {exc.orig}") from exc
    return value if isinstance(value, dict) else None
