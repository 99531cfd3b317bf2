"""The worker runtime: take WorkItems from core NATS, execute them, reply with progress and outcome.

Work arrives on `<prefix>.work.managed.>` in queue group `workers`, so adding workers spreads
the load. Core NATS gives no redelivery; durability comes from the runner, which re-dispatches
from the event store. A worker therefore expects duplicates: an item already running here is
ignored, a recently finished one gets its stored outcome again without re-running, and any
other handler receives a stable `idempotency_key` to make its own side effects idempotent.

While a step runs, the log lines and telemetry its handler writes are sent at most every
`flush_seconds` as `StepLogBatch` replies; whatever is left goes in the `StepOutcome`. Only
lines that can never be dropped later (the head of the bounded log) are sent early, so the
lines of one attempt add up to the same bounded record however long the step runs.

Start one with `python -m baton.runner.worker` (settings: `baton.runner.worker_settings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from baton.events.messages import WORKER_QUEUE_GROUP, StepLogBatch, StepOutcome, StepProgress, WorkItem
from baton.events.subjects import Subjects

from .actions.context import StepContext, StepRecord, truncate_text
from .actions.registry import bound_result, execute_action
from .worker_settings import WorkerSettings

# Named explicitly: under `python -m` this module is `__main__`.
log = logging.getLogger("baton.runner.worker")

MAX_ERROR_CHARS = 8_000
DLQ_DETAIL_CHARS = 1_000
FLUSH_TIMEOUT_S = 5  # seconds; nats-py annotates flush(timeout) as int
RECONNECT_WAIT_S = 1.0

ReplyT = TypeVar("ReplyT", StepOutcome, StepLogBatch)


@dataclass
class LiveStep:
    """A step executing on this worker: what its log batches need, and the lock that orders them."""

    item: WorkItem
    ctx: StepContext
    # Held while a batch or the outcome is taken and published, so nothing is sent after the outcome.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sequence: int = 0
    finished: bool = False


class RecentOutcomes:
    """Encoded outcomes of recently finished items by idempotency key, bounded in count and bytes."""

    def __init__(self, max_items: int = 1_024, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> bytes | None:
        """The stored outcome for `key`, if still remembered."""
        return self._entries.get(key)

    def put(self, key: str, data: bytes) -> None:
        """Remember `data` for `key`, forgetting the oldest entries beyond the bounds."""
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous)
        self._entries[key] = data
        self._bytes += len(data)
        while self._entries and (len(self._entries) > self.max_items or self._bytes > self.max_bytes):
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)


def _shed(reply: ReplyT, field_name: str, count_name: str, max_bytes: int) -> tuple[ReplyT, bytes]:
    """Drop the oldest half of `reply.<field_name>` until its JSON fits, counting drops in `count_name`."""
    data = reply.model_dump_json().encode()
    items = list(getattr(reply, field_name))
    dropped: int = getattr(reply, count_name)
    while len(data) > max_bytes and items:
        cut = max(1, len(items) // 2)
        items, dropped = items[cut:], dropped + cut
        reply = reply.model_copy(update={field_name: items, count_name: dropped})
        data = reply.model_dump_json().encode()
    return reply, data


def encode_reply(reply: ReplyT, max_bytes: int) -> bytes:
    """JSON of an outcome or log batch that fits in `max_bytes`: oldest log lines go first, then samples."""
    reply, data = _shed(reply, "logs", "logs_truncated", max_bytes)
    reply, data = _shed(reply, "telemetry", "telemetry_truncated", max_bytes)
    if len(data) > max_bytes and isinstance(reply, StepOutcome):
        smaller = reply.model_copy(update={"result": bound_result(reply.result, max_bytes // 4)})
        data = smaller.model_dump_json().encode()
    return data


async def flush_confirmed(nc: NatsClient, timeout: int = FLUSH_TIMEOUT_S) -> None:  # noqa: ASYNC109 - passed to flush()
    """Return once the server has processed everything this client sent before the call."""
    # nats-py 2.16's flush() writes its PING straight to the socket while earlier SUB/PUB
    # commands may still wait in the client's pending buffer, so the PONG can come back
    # before they reach the server. The first flush lets the flusher task write that buffer
    # (it runs before the PONG can be read); the second PING then queues behind it on the
    # socket, and its PONG proves the server has seen all of it.
    await nc.flush(timeout=timeout)
    await nc.flush(timeout=timeout)


def default_worker_name() -> str:
    """`host-pid-xxxx`: unique even for several workers in one process."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    """Serves `<prefix>.work.managed.>` until its stop event is set; at most `concurrency` steps at once."""

    def __init__(
        self,
        nats_url: str,
        subjects: Subjects,
        concurrency: int = 64,
        name: str | None = None,
        *,
        drain_seconds: float = 30.0,
        flush_seconds: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if flush_seconds <= 0:
            raise ValueError("flush_seconds must be positive")
        self.nats_url = nats_url
        self.subjects = subjects
        self.concurrency = concurrency
        self.name = name or default_worker_name()
        self.drain_seconds = drain_seconds
        self.flush_seconds = flush_seconds
        self.ready = asyncio.Event()
        """Set once the subscription is registered with the server (messages published after it arrive)."""
        self.executed = 0
        self._semaphore = asyncio.Semaphore(concurrency)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, LiveStep] = {}
        self._recent = RecentOutcomes()
        self._accepting = True
        self._stopping = False
        self._closed = asyncio.Event()
        self._nc: NatsClient | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def accepting(self) -> bool:
        """True until a stop has drained the subscription; afterwards no new work is started."""
        return self._accepting

    @property
    def in_flight(self) -> int:
        """Items executing right now."""
        return len(self._in_flight)

    # --- lifecycle ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve work until `stop` is set, then drain and close; raise if NATS closes for good."""
        nc = await self._connect(stop)
        if nc is None:
            return
        self._nc = nc
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._http = httpx.AsyncClient(limits=limits)
        try:
            subject = self.subjects.work_wildcard("managed")
            subscription = await nc.subscribe(subject, queue=WORKER_QUEUE_GROUP, cb=self._on_message)
            # Core NATS drops messages nobody is subscribed to: only report ready once the
            # server has processed the SUB.
            await flush_confirmed(nc)
            self.ready.set()
            log.info(
                "worker %s serving %s (queue %s, concurrency %d)",
                self.name,
                subject,
                WORKER_QUEUE_GROUP,
                self.concurrency,
            )
            flusher = asyncio.create_task(self._flush_logs_forever(), name=f"worker {self.name} log flusher")
            try:
                await _wait_first(stop.wait(), self._closed.wait())
                if self._closed.is_set() and not stop.is_set():
                    raise RuntimeError(f"worker {self.name}: NATS connection closed unexpectedly")
                await self._shutdown(nc, subscription)
            finally:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
        finally:
            self._accepting = False
            self._stopping = True
            # Only non-empty when run() itself failed or was cancelled before a clean shutdown.
            leftovers = list(self._in_flight.values())
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
            await self._http.aclose()
            if not nc.is_closed:
                await nc.close()
            log.info("worker %s stopped after %d items", self.name, self.executed)

    async def _connect(self, stop: asyncio.Event) -> NatsClient | None:
        """Connect, retrying forever (nats-py does with max_reconnect_attempts=-1) unless `stop` is set."""

        async def on_error(exc: Exception) -> None:
            log.warning("worker %s: NATS error: %s: %s", self.name, type(exc).__name__, exc)

        async def on_disconnected() -> None:
            if self._stopping:  # closing the connection ourselves also reports a disconnect
                return
            log.warning("worker %s: disconnected from NATS; reconnecting", self.name)

        async def on_reconnected() -> None:
            log.info("worker %s: reconnected to NATS", self.name)

        async def on_closed() -> None:
            self._closed.set()

        connecting = asyncio.create_task(
            nats.connect(
                servers=[url.strip() for url in self.nats_url.split(",") if url.strip()],
                name=f"baton-worker {self.name}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
            )
        )
        try:
            await _wait_first(connecting, stop.wait())
        except asyncio.CancelledError:
            connecting.cancel()
            raise
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            log.info("worker %s: stopped before NATS connection was established", self.name)
            return None
        return connecting.result()

    async def _shutdown(self, nc: NatsClient, subscription: Subscription) -> None:
        """Stop taking work, let in-flight items finish until the drain deadline, cancel the rest."""
        self._stopping = True
        deadline = time.monotonic() + self.drain_seconds
        log.info("worker %s stopping: %d items in flight", self.name, len(self._in_flight))
        try:
            # Unsubscribes at the server, then hands already-buffered messages to the callback.
            await asyncio.wait_for(
                subscription.drain(),  # type: ignore[no-untyped-call]
                timeout=max(0.0, deadline - time.monotonic()),
            )
        except TimeoutError:
            log.warning("worker %s: buffered work not started before the drain deadline", self.name)
        except nats.errors.Error as exc:
            log.warning("worker %s: could not drain subscription: %s", self.name, exc)
        # Anything still waiting for a slot now is left to the runner's re-dispatch.
        self._accepting = False
        running = set(self._in_flight.values())
        if running:
            _, unfinished = await asyncio.wait(running, timeout=max(0.0, deadline - time.monotonic()))
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning(
                    "worker %s: cancelled %d unfinished items; the runner will re-dispatch them",
                    self.name,
                    len(unfinished),
                )
                await asyncio.gather(*unfinished, return_exceptions=True)
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await flush_confirmed(nc)

    # --- message handling -------------------------------------------------------------
    async def _on_message(self, msg: Msg) -> None:
        # nats-py calls this sequentially per subscription: blocking on the semaphore here is
        # the back-pressure that keeps at most `concurrency` items running.
        try:
            await self._accept(msg)
        except Exception:
            log.exception("worker %s: failed to accept a message on %s", self.name, msg.subject)

    async def _accept(self, msg: Msg) -> None:
        try:
            item = WorkItem.model_validate_json(msg.data)
        except ValidationError as exc:
            await self._dead_letter(msg, "invalid_work_item", str(exc))
            return
        key = item.idempotency_key
        log.debug("worker %s: received %s (%s)", self.name, key, item.uses)
        # The stored outcome is checked first: it exists from the moment the outcome is known,
        # while the task that produced it may still be publishing it.
        cached = self._recent.get(key)
        if cached is not None:
            log.info("worker %s: %s already finished here; re-sending its outcome", self.name, key)
            await self._publish(item.reply_subject, cached, flush=True)
            return
        if key in self._in_flight:
            log.info("worker %s: %s is already running here; duplicate ignored", self.name, key)
            return
        await self._semaphore.acquire()
        if not self._accepting:
            self._semaphore.release()
            return
        task = asyncio.create_task(self._execute(item), name=f"step {key}")
        self._in_flight[key] = task
        task.add_done_callback(lambda _: self._finished(key))

    def _finished(self, key: str) -> None:
        self._in_flight.pop(key, None)
        self._semaphore.release()

    async def _execute(self, item: WorkItem) -> None:
        started_at = datetime.now(UTC)
        started = time.monotonic()
        key = item.idempotency_key
        try:
            progress = StepProgress(
                run_id=item.run_id, step=item.step, attempt=item.attempt, worker=self.name, started_at=started_at
            )
            await self._publish(item.reply_subject, _encode(progress))
            ctx = StepContext.from_work_item(item)
            live = self._live[key] = LiveStep(item, ctx)
            if self._http is None:  # run() creates the client before subscribing; this is a bug guard
                raise RuntimeError("worker has no HTTP client")
            outcome = await execute_action(item, ctx, self._http)
            async with live.lock:
                live.finished = True
                rest = ctx.take_rest()
                reply = StepOutcome(
                    run_id=item.run_id,
                    step=item.step,
                    attempt=item.attempt,
                    worker=self.name,
                    ok=outcome.ok,
                    result=outcome.result,
                    error=truncate_text(outcome.error, MAX_ERROR_CHARS) if outcome.error is not None else None,
                    started_at=started_at,
                    duration_ms=(time.monotonic() - started) * 1000,
                    logs=rest.logs,
                    logs_truncated=rest.logs_truncated,
                    telemetry=rest.telemetry,
                    telemetry_truncated=rest.telemetry_truncated,
                )
                data = encode_reply(reply, self._max_payload())
                self._recent.put(key, data)
                self.executed += 1
                await self._publish(item.reply_subject, data, flush=True)
            log.debug("worker %s: %s %s", self.name, key, "ok" if outcome.ok else outcome.error)
        except asyncio.CancelledError:
            log.warning("worker %s: %s cancelled before it finished", self.name, key)
            live_step = self._live.get(key)
            if live_step is not None:
                await self._report_abandoned(live_step)
            raise
        except Exception:
            log.exception("worker %s: could not complete %s", self.name, key)
        finally:
            self._live.pop(key, None)

    async def _report_abandoned(self, live: LiveStep) -> None:
        """Send what a cancelled step logged, and why it has no outcome; the runner re-dispatches it."""
        # No outcome: a failure would spend one of the step's attempts on the worker's own
        # shutdown. The lines still reach the run's history, so its timeline says what happened.
        live.ctx.log(
            "warning",
            f"worker {self.name} stopped before the step finished; the runner will dispatch it again",
            {"worker": self.name},
        )
        async with live.lock:
            if live.finished:
                return
            live.finished = True
            rest = live.ctx.take_rest()
            live.sequence += 1
            item = live.item
            batch = StepLogBatch(
                run_id=item.run_id,
                step=item.step,
                attempt=item.attempt,
                worker=self.name,
                sequence=live.sequence,
                logs=rest.logs,
                logs_truncated=rest.logs_truncated,
                telemetry=rest.telemetry,
                telemetry_truncated=rest.telemetry_truncated,
            )
            await self._publish(item.reply_subject, encode_reply(batch, self._max_payload()), flush=True)

    # --- live logs ----------------------------------------------------------------------
    async def _flush_logs_forever(self) -> None:
        """Every `flush_seconds`, send what running steps logged since the last batch."""
        while True:
            await asyncio.sleep(self.flush_seconds)  # a rate limit, not synchronisation
            for live in list(self._live.values()):
                try:
                    await self.flush_step_logs(live)
                except Exception:
                    log.exception("worker %s: could not flush logs of %s", self.name, live.item.idempotency_key)

    async def flush_step_logs(self, live: LiveStep) -> bool:
        """Send the step's new head lines and samples as a StepLogBatch; False when there was nothing to send."""
        async with live.lock:
            if live.finished:
                return False
            record: StepRecord = live.ctx.take_live()
            if record.empty:
                return False
            live.sequence += 1
            item = live.item
            batch = StepLogBatch(
                run_id=item.run_id,
                step=item.step,
                attempt=item.attempt,
                worker=self.name,
                sequence=live.sequence,
                logs=record.logs,
                telemetry=record.telemetry,
            )
            await self._publish(item.reply_subject, encode_reply(batch, self._max_payload()))
            return True

    async def _dead_letter(self, msg: Msg, reason: str, detail: str) -> None:
        """Publish the message as received to `<prefix>.dlq.work`, with why in `Baton-*` headers."""
        log.warning("worker %s: %s on %s: %s", self.name, reason, msg.subject, truncate_text(detail, 500))
        # Same shape as the runner's dead letters: the original bytes as the body, so an
        # operator can inspect or re-publish them. Header values must be single-line.
        headers = {
            "Baton-Reason": reason,
            "Baton-Detail": " | ".join(detail.splitlines())[:DLQ_DETAIL_CHARS],
            "Baton-Subject": msg.subject,
            "Baton-Worker": self.name,
        }
        await self._publish(self.subjects.dlq("work"), msg.data, headers=headers, flush=True)

    # --- NATS -------------------------------------------------------------------------
    def _max_payload(self) -> int:
        return self._nc.max_payload if self._nc is not None and self._nc.max_payload else 1024 * 1024

    async def _publish(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None, flush: bool = False
    ) -> None:
        """Publish without ever raising: a lost reply is recovered by the runner's re-dispatch."""
        if self._nc is None:
            return
        try:
            await self._nc.publish(subject, data, headers=headers)
            if flush:
                await flush_confirmed(self._nc)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("worker %s: could not publish to %s: %s: %s", self.name, subject, type(exc).__name__, exc)


def _encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


async def _wait_first(*awaitables: Awaitable[object]) -> None:
    """Wait until the first of `awaitables` completes; cancel the helper tasks made for the others."""
    futures = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Tasks passed in belong to the caller; only the wrappers made here are cancelled.
        for future, awaitable in zip(futures, awaitables, strict=True):
            if future is not awaitable and not future.done():
                future.cancel()


async def serve(settings: WorkerSettings) -> None:
    """Run one worker with `settings` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(
        settings.nats_url,
        Subjects(settings.subject_prefix),
        concurrency=settings.worker_concurrency,
        name=settings.worker_name,
        drain_seconds=settings.worker_drain_seconds,
        flush_seconds=settings.worker_flush_seconds,
    )
    await worker.run(stop)


def main() -> None:
    """Entry point of `python -m baton.runner.worker`."""
    settings = WorkerSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
