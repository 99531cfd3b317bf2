"""Durable timers: store the runner's requests, fire each timer when it comes due.

Intake: a durable pull consumer on the TIMERS stream (set and cancel subjects, shared by
every replica) records each batch in ``scheduler_timers`` and acks only after the commit.
Firing: the nearest due times are planned in memory (``DueTimes``), so the loop sleeps
until exactly the next due time, or until a request for an earlier timer arrives; a poll
of the table every ``timer_poll_seconds`` is the backstop for timers armed through another
replica. Due rows are claimed with ``FOR UPDATE SKIP LOCKED``, published (pipelined, then
every ack awaited) with ``Nats-Msg-Id = fired:<timer_id>``, and marked fired in the same
transaction. A crash between publish and commit fires again with the same id: JetStream
drops the repeat inside its window, and the runner ignores a fire it no longer waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from baton.events import bus
from baton.events.subjects import Subjects
from baton.events.timers import TimerCancel, TimerFired, TimerRequest
from baton.events.waiting import wait_any
from baton.scheduler.due_times import DueTimes
from baton.scheduler.settings import SchedulerSettings
from baton.scheduler.timer_messages import RejectedTimerMessage, parse_timer_message
from baton.scheduler.timer_store import DueTimer, claim_due, nearest_due, purge_done, store_requests

log = logging.getLogger(__name__)

CONSUMER = "scheduler-timers"
PUBLISH_ACK_TIMEOUT_SECONDS = 10.0
PURGE_EVERY_SECONDS = 3600.0

Parsed = TimerRequest | TimerCancel


def fired_msg_id(timer_id: str) -> str:
    """The JetStream de-duplication id of a timer's fire: the same for every repeat."""
    return f"fired:{timer_id}"


class TimerService:
    """One replica's share of the durable timers: intake plus firing (a scheduler component)."""

    name = "timers"

    def __init__(
        self, engine: AsyncEngine, js: JetStreamContext, subjects: Subjects, settings: SchedulerSettings
    ) -> None:
        self._engine = engine
        self._js = js
        self._subjects = subjects
        self._settings = settings
        self._plan = DueTimes(settings.timer_memory_limit)
        self._wakeup = asyncio.Event()
        self._firing: set[asyncio.Task[None]] = set()
        self._idle_connections: list[AsyncConnection] = []
        self._claim_again = False  # a batch came back full or failed: claim again without a planned due time
        self._failures = 0
        self.fired = 0  # timers this replica published (a figure for logs and tests)

    async def run(self, stop: asyncio.Event) -> None:
        """Take requests and fire timers until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._consume(stop), name="timer-intake")
            group.create_task(self._fire_loop(stop), name="timer-firing")

    # --- intake -----------------------------------------------------------------------
    async def _consume(self, stop: asyncio.Event) -> None:
        subjects = self._subjects
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._settings.timer_ack_wait_seconds,
            max_ack_pending=20_000,
            filter_subjects=[subjects.timer_set, subjects.timer_cancel],
        )
        sub = None
        try:
            while sub is None and not stop.is_set():
                try:
                    sub = await self._js.pull_subscribe(
                        subjects.timer_set, durable=CONSUMER, stream=subjects.timers_stream, config=config
                    )
                except Exception:
                    log.exception("cannot bind the timer consumer; retrying")
                    await wait_any(stop, None, 1.0)
            while sub is not None and not stop.is_set():
                try:
                    msgs = await sub.fetch(self._settings.timer_intake_batch, timeout=0.5)
                except (TimeoutError, NatsTimeout):
                    continue
                except Exception:
                    log.exception("timer request fetch failed; retrying")
                    await wait_any(stop, None, 1.0)
                    continue
                await self.handle_requests(msgs)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):  # unacked requests are redelivered to a replica
                    await sub.unsubscribe()

    async def handle_requests(self, msgs: list[Msg]) -> None:
        """Record a batch of set/cancel messages in one transaction, then ack them."""
        accepted: list[tuple[Msg, Parsed]] = []
        for msg in msgs:
            parsed = parse_timer_message(self._subjects, msg.subject, msg.data)
            if isinstance(parsed, RejectedTimerMessage):
                await self._reject(msg, parsed.reason, parsed.detail)
            else:
                accepted.append((msg, parsed))
        if not accepted:
            return
        try:
            async with self._engine.begin() as conn:
                await store_requests(conn, [p for _, p in accepted])
        except (OperationalError, InterfaceError) as exc:
            log.warning("timer store unavailable (%s); %d requests will be redelivered", exc, len(accepted))
            await asyncio.gather(*(self._nak(msg) for msg, _ in accepted))
            return
        except DBAPIError:
            # The database refused something in the batch: store one at a time to find it.
            for msg, parsed in accepted:
                await self._store_one(msg, parsed)
            return
        for _, parsed in accepted:
            self._plan_request(parsed)
        await asyncio.gather(*(msg.ack() for msg, _ in accepted))

    async def _store_one(self, msg: Msg, parsed: Parsed) -> None:
        try:
            async with self._engine.begin() as conn:
                await store_requests(conn, [parsed])
        except (OperationalError, InterfaceError) as exc:
            log.warning("timer store unavailable (%s); request %s will be redelivered", exc, parsed.timer_id)
            await self._nak(msg)
            return
        except DBAPIError as exc:
            await self._reject(msg, "unstorable_timer", str(exc.orig or exc))
            return
        self._plan_request(parsed)
        await msg.ack()

    async def _nak(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):  # if even the nak fails, ack_wait redelivers it
            await msg.nak(delay=2.0)

    async def _reject(self, msg: Msg, reason: str, detail: str) -> None:
        """Log, dead-letter and ack a message that can never be accepted (acked only once dead-lettered)."""
        log.warning("timer message on %s rejected (%s): %s", msg.subject, reason, detail)
        headers = bus.headers_for(
            f"dlq-timer-{msg.metadata.sequence.stream}",
            **{"Baton-Reason": reason, "Baton-Detail": detail, "Baton-Subject": msg.subject},
        )
        try:
            await self._js.publish(self._subjects.dlq("timer"), msg.data, headers=headers)
        except Exception as exc:
            log.warning("dead-lettering failed (%s); the message will be redelivered", exc)
            await self._nak(msg)
            return
        await msg.ack()

    def _plan_request(self, parsed: Parsed) -> None:
        if isinstance(parsed, TimerCancel):
            self._plan.discard(parsed.timer_id)
            return
        # Timers due after the next poll are planned by that poll; keeping them out bounds memory.
        horizon = time.time() + 2 * self._settings.timer_poll_seconds
        due = parsed.due_at.timestamp()
        if due <= horizon and self._plan.add(parsed.timer_id, due):
            self._wakeup.set()  # earlier than anything planned: re-arm the sleep

    # --- firing -----------------------------------------------------------------------
    async def _fire_loop(self, stop: asyncio.Event) -> None:
        try:
            await self._fire_until(stop)
        finally:
            if self._firing:
                await asyncio.wait(self._firing, timeout=PUBLISH_ACK_TIMEOUT_SECONDS + 5)
            while self._idle_connections:
                await self._discard_connection(self._idle_connections.pop())

    async def _fire_until(self, stop: asyncio.Event) -> None:
        poll = self._settings.timer_poll_seconds
        next_poll = 0.0  # the first pass loads what is pending (a restart fires overdue timers at once)
        next_purge = time.monotonic() + 60.0
        backoff = 0.1
        while not stop.is_set():
            self._wakeup.clear()
            try:
                if time.monotonic() >= next_poll:
                    await self._refresh_plan()
                    next_poll = time.monotonic() + poll
                if time.monotonic() >= next_purge:
                    await self._purge()
                    next_purge = time.monotonic() + PURGE_EVERY_SECONDS
                backoff = 0.1
            except Exception:
                log.exception("timer table poll failed; retrying in %.1fs", backoff)
                await wait_any(stop, None, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            slot_free = len(self._firing) < self._settings.timer_fire_concurrency
            next_due = self._plan.next_due()
            now = time.time()
            if slot_free and (self._claim_again or (next_due is not None and next_due <= now)):
                self._start_batch(now)
                continue
            delay = next_poll - time.monotonic()
            if slot_free and next_due is not None:
                delay = min(delay, next_due - now)
            if delay > 0:  # a finished batch sets the wake-up too, freeing its slot
                await wait_any(stop, self._wakeup, delay)

    async def _refresh_plan(self) -> None:
        until = datetime.now(UTC) + timedelta(seconds=2 * self._settings.timer_poll_seconds)
        async with self._engine.connect() as conn:
            rows = await nearest_due(conn, until, self._settings.timer_memory_limit)
        for timer_id, due_at in rows:
            self._plan.add(timer_id, due_at.timestamp())

    def _start_batch(self, now: float) -> None:
        """Claim and fire what is due at ``now`` in a task of its own.

        Batches overlap (up to ``timer_fire_concurrency``): a timer coming due while an earlier
        batch waits for its acks is claimed at once by the next one (SKIP LOCKED keeps them apart).
        """
        self._plan.pop_due(now)
        self._claim_again = False
        task = asyncio.create_task(self._fire_task(datetime.fromtimestamp(now, UTC)), name="timer-batch")
        self._firing.add(task)
        task.add_done_callback(self._firing.discard)

    async def _fire_task(self, now: datetime) -> None:
        try:
            await self._fire_batch(now)
        except Exception:
            self._failures += 1
            backoff = min(0.1 * 2 ** (self._failures - 1), 5.0)
            log.exception("firing timers failed; they stay armed, retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)  # holds this slot: a broken database is not hammered
            self._claim_again = True
        else:
            self._failures = 0
        finally:
            self._wakeup.set()

    async def _fire_batch(self, now: datetime) -> int:
        conn = await self._firing_connection()
        try:
            async with conn.begin():
                fired_at = datetime.now(UTC)
                due = await claim_due(conn, now, fired_at, self._settings.timer_fire_batch)
                if len(due) >= self._settings.timer_fire_batch:
                    # More may be due than one batch holds: let the next batch claim them while
                    # this one publishes (the rows claimed here stay locked, so it skips them).
                    self._claim_again = True
                    self._wakeup.set()
                if due:
                    await self._publish_fires(due, fired_at)
        except BaseException:
            await self._discard_connection(conn)  # a fresh one next time, whatever state this one is in
            raise
        self._idle_connections.append(conn)
        self.fired += len(due)
        return len(due)

    async def _firing_connection(self) -> AsyncConnection:
        """A connection kept for firing: no pool checkout (and ping) on the hot path."""
        if self._idle_connections:
            return self._idle_connections.pop()
        conn = await self._engine.connect()
        # Losing a "fired" mark in a database crash only means a repeat fire (same msg id),
        # which the design absorbs anyway; not waiting for its WAL flush keeps fires on time.
        await conn.execute(text("SET synchronous_commit = off"))
        await conn.commit()
        return conn

    async def _discard_connection(self, conn: AsyncConnection) -> None:
        with contextlib.suppress(Exception):
            await conn.close()

    async def _publish_fires(self, due: list[DueTimer], fired_at: datetime) -> None:
        """Publish every fire without waiting between them, then await all the acks."""
        subject = self._subjects.timer_fired
        acks = []
        for timer in due:
            body = TimerFired(
                timer_id=timer.timer_id,
                tenant=timer.tenant,
                due_at=timer.due_at,
                fired_at=fired_at,
                payload=timer.payload,
            )
            headers = {"Nats-Msg-Id": fired_msg_id(timer.timer_id)}
            acks.append(await self._js.publish_async(subject, body.model_dump_json().encode(), headers=headers))
        # A lost ack raises here: the transaction rolls back and the rows stay armed for the next pass.
        await asyncio.wait_for(asyncio.gather(*acks), PUBLISH_ACK_TIMEOUT_SECONDS)

    async def _purge(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(hours=self._settings.timer_retention_hours)
        async with self._engine.begin() as conn:
            purged = await purge_done(conn, cutoff)
        if purged:
            log.info("purged %d fired or canceled timers older than %s", purged, cutoff.isoformat())
