"""The relay: publishes committed events to JetStream (EVENTS) from the store, by position.

The checkpoint advances only after JetStream acknowledged every event of the batch,
inside a transaction that holds the checkpoint row: a crash between commit and
publish re-publishes from the checkpoint, and ``Nats-Msg-Id`` = event id lets
JetStream drop the repeats. Two relay replicas queue on the row instead of racing.
"""

from __future__ import annotations

import asyncio
import json
import logging

from nats.js import JetStreamContext
from nats.js.api import PubAck
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events.checkpoints import read_checkpoint, write_checkpoint
from baton.events.envelope import StoredEvent
from baton.events.postgres_store import COLUMNS, row_to_event
from baton.events.schema import checkpoints, events
from baton.events.subjects import Subjects
from baton.events.waiting import run_when_woken

log = logging.getLogger(__name__)


def encode_event(event: StoredEvent) -> bytes:
    """The bytes of a relayed event: its JSON envelope."""
    return json.dumps(event.to_json_dict(), separators=(",", ":")).encode()


class EventRelay:
    """Moves committed events from the store to NATS in position order."""

    def __init__(
        self,
        engine: AsyncEngine,
        js: JetStreamContext,
        subjects: Subjects,
        name: str = "relay",
        batch_size: int = 500,
    ) -> None:
        self._engine = engine
        self._js = js
        self._subjects = subjects
        self._name = name
        self._batch_size = batch_size

    async def relay_once(self) -> int:
        """Publish the next batch after the checkpoint; returns how many events were published."""
        async with self._engine.begin() as conn:
            position = await read_checkpoint(conn, checkpoints, self._name, lock=True)
            rows = await conn.execute(
                select(*COLUMNS).where(events.c.position > position).order_by(events.c.position).limit(self._batch_size)
            )
            batch = [row_to_event(row) for row in rows]
            if not batch:
                return 0
            # Pipelined: every publish in flight at once, then every ack awaited.
            acks = [await self._publish(event) for event in batch]
            await asyncio.gather(*acks)
            await write_checkpoint(conn, checkpoints, self._name, batch[-1].position)
        return len(batch)

    async def _publish(self, event: StoredEvent) -> asyncio.Future[PubAck]:
        subject = self._subjects.event(event.tenant, event.stream_type, event.type)
        headers = {
            "Nats-Msg-Id": str(event.event_id),
            "Baton-Position": str(event.position),
            "Baton-Stream": event.stream_id,
        }
        if event.metadata.traceparent:
            headers["traceparent"] = event.metadata.traceparent
        return await self._js.publish_async(
            subject, encode_event(event), stream=self._subjects.events_stream, headers=headers
        )

    async def run(self, stop: asyncio.Event, wakeup: asyncio.Event, idle_seconds: float = 1.0) -> None:
        """Relay whenever woken (or every ``idle_seconds``) until ``stop``; errors back off and retry."""

        async def drain() -> None:
            while await self.relay_once() >= self._batch_size:
                pass

        await run_when_woken("relay batch", drain, stop, wakeup, idle_seconds)
