"""The ``upstream`` check: completed runs from the relayed ``<prefix>.evt.<tenant>.run.run_completed`` events.

Each upstream monitor has its own durable JetStream consumer on the EVENTS stream, so
its position survives restarts and moves with the slot lease between replicas. A
completion is acknowledged only after the tick that handled it was recorded; one that
was not is redelivered, and the fire's idempotency key (monitor + upstream run id) makes
the repeat harmless.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import text

from baton.events.postgres_store import PostgresEventStore
from baton.events.stream_ids import run_stream
from baton.events.subjects import Subjects
from baton.monitor.checks import CheckFailed
from baton.monitor.index import MonitorEntry, MonitorKey

log = logging.getLogger(__name__)

RUN_PIPELINE = text(
    "SELECT data ->> 'pipeline' FROM events WHERE stream_id = :stream AND type = 'run_created' LIMIT 1"
)
FETCH_BATCH = 256
MAX_REMEMBERED_RUNS = 10_000


class UpstreamFeed:
    """Pulls completed runs for upstream monitors, one durable consumer per monitor."""

    def __init__(
        self, js: JetStreamContext, store: PostgresEventStore, subjects: Subjects, ack_wait_seconds: float
    ) -> None:
        self._js = js
        self._store = store
        self._subjects = subjects
        self._ack_wait = ack_wait_seconds
        self._subs: dict[MonitorKey, Any] = {}
        self._pipelines: dict[str, str | None] = {}

    async def _subscription(self, entry: MonitorEntry) -> Any:
        sub = self._subs.get(entry.key)
        if sub is not None:
            return sub
        durable = self._subjects.monitor_consumer(entry.tenant, entry.name)
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_ack_pending=10_000,
            deliver_policy=DeliverPolicy.BY_START_TIME if entry.created_at else DeliverPolicy.NEW,
            opt_start_time=entry.created_at,
        )
        subject = self._subjects.event(entry.tenant, "run", "run_completed")
        try:
            sub = await self._js.pull_subscribe(
                subject, durable=durable, stream=self._subjects.events_stream, config=config
            )
        except Exception as exc:
            raise CheckFailed(f"cannot consume {subject}: {type(exc).__name__}: {exc}") from exc
        self._subs[entry.key] = sub
        return sub

    async def fetch(self, entry: MonitorEntry) -> tuple[list[dict[str, Any]], list[Msg]]:
        """The completions waiting for this monitor (possibly none) and their messages, to ack later."""
        sub = await self._subscription(entry)
        try:
            msgs: list[Msg] = await sub.fetch(FETCH_BATCH, timeout=0.05)
        except (TimeoutError, NatsTimeout):
            return [], []
        completions = []
        for msg in msgs:
            completion = await self._completion(msg)
            if completion is not None:
                completions.append(completion)
        return completions, msgs

    async def _completion(self, msg: Msg) -> dict[str, Any] | None:
        try:
            envelope = json.loads(msg.data)
            run_id = str(envelope["data"]["run_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable run_completed event on %s", msg.subject)
            return None
        return {
            "run_id": run_id,
            "pipeline": await self._pipeline_of(run_id),
            "status": "completed",
            "reason": envelope["data"].get("reason"),
            "completed_at": envelope.get("recorded_at"),
            "position": envelope.get("position"),
        }

    async def _pipeline_of(self, run_id: str) -> str | None:
        if run_id in self._pipelines:
            return self._pipelines[run_id]
        async with self._store.engine.connect() as conn:
            pipeline = (await conn.execute(RUN_PIPELINE, {"stream": run_stream(run_id)})).scalar()
        if len(self._pipelines) >= MAX_REMEMBERED_RUNS:
            self._pipelines.pop(next(iter(self._pipelines)))
        self._pipelines[run_id] = pipeline
        return pipeline

    async def settle(self, msgs: list[Msg], recorded: bool) -> None:
        """Ack what a recorded tick handled; nak (redeliver soon) what could not be recorded."""
        for msg in msgs:
            with contextlib.suppress(Exception):  # an unacked message is redelivered after ack_wait anyway
                await (msg.ack() if recorded else msg.nak(delay=1.0))

    async def release(self, key: MonitorKey) -> None:
        """Stop pulling for a monitor (its slot moved to another replica); the consumer stays."""
        sub = self._subs.pop(key, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def forget(self, key: MonitorKey) -> None:
        """The monitor was deleted: drop its consumer too."""
        await self.release(key)
        with contextlib.suppress(NotFoundError, Exception):
            await self._js.delete_consumer(self._subjects.events_stream, self._subjects.monitor_consumer(*key))

    async def close(self) -> None:
        """Unsubscribe everything (consumers stay for the next holder)."""
        for key in list(self._subs):
            await self.release(key)
