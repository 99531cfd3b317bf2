"""The monitor service: evaluates monitors on their interval and fires triggers for their pipelines.

Per evaluation: check (I/O) -> decide (pure, ``evaluation``) -> publish the fires to
``<prefix>.trigger.<tenant>.<type>`` (JetStream, de-duplicated on the idempotency key) ->
record the tick (with the new cursor) in the store. Fires go out before the tick is
recorded: a crash in between re-fires the same keys from the old cursor, which the
runner de-duplicates, whereas the other order could lose a fire. Failed checks are error
ticks and back off exponentially; nothing a monitor does can stop the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from pydantic import ValidationError

from baton.events import bus
from baton.events.catalogue import FiredTrigger, MonitorTicked
from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.monitor import (
    EvaluateRequest,
    FileMonitor,
    GatewayReport,
    HttpMonitor,
    MonitorReply,
    ReportRequest,
    SqlMonitor,
    UpstreamMonitor,
)
from baton.events.postgres_store import PostgresEventStore
from baton.events.store import StoreUnavailable
from baton.events.trigger import TriggerMessage, trigger_id_for
from baton.monitor.checks import CheckFailed
from baton.monitor.checks.files import observe_files
from baton.monitor.checks.http import observe_http
from baton.monitor.checks.sql import SqlChecker
from baton.monitor.checks.upstream import UpstreamFeed
from baton.monitor.evaluation import Decision, Fire, MonitorCursor, backoff_seconds, bounded, decide, decide_report
from baton.monitor.index import DefinitionIndex, IndexChange, MonitorEntry, MonitorKey
from baton.monitor.leases import SlotLeases, lease_bucket, slot_of
from baton.monitor.settings import MonitorSettings
from baton.monitor.ticks import TickRecorder, load_cursor

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 200
LEASE_MARGIN_SECONDS = 0.5


def utcnow() -> datetime:
    """Wall-clock time for events (tests may inject another clock)."""
    return datetime.now(UTC)


def bounded_key(key: str) -> str:
    """An idempotency key within the trigger schema's 200 characters (long ones end in a digest)."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    return f"{key[:150]}#{hashlib.sha256(key.encode()).hexdigest()[:40]}"


@dataclass
class MonitorState:
    """What the service holds per monitor: its definition, cursor, error streak and next due time."""

    entry: MonitorEntry
    slot: int
    next_due: float = 0.0
    cursor: MonitorCursor | None = None
    cursor_epoch: int = -1
    consecutive_errors: int = 0
    removed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class Outcome:
    """A finished evaluation: the tick (None when nothing was recorded) and a verdict for requests."""

    tick: MonitorTicked | None
    status: int
    message: str


class MonitorService:
    """One monitor replica: definitions watch, slot leases, per-monitor loops and NATS requests."""

    def __init__(
        self,
        settings: MonitorSettings,
        now: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.subjects = settings.subjects
        self.replica = settings.replica_id or f"monitor-{socket.gethostname()}-{os.getpid()}"
        self.index = DefinitionIndex()
        self.states: dict[MonitorKey, MonitorState] = {}
        self.ready = asyncio.Event()
        self._now = now
        self._monotonic = monotonic
        self._engine = make_engine(settings.database_url)
        self.store = PostgresEventStore(self._engine, notify_channel=self.subjects.notify_channel)
        self.recorder = TickRecorder(self.store, self.replica)
        self._sql = SqlChecker(settings.connections)
        self._checks = asyncio.Semaphore(settings.max_concurrent_checks)
        self._stop = asyncio.Event()
        self.evaluations = 0
        self._requests: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then hand the leases back and shut down cleanly."""
        self._stop = stop
        await migrate(self._engine)
        self._nc = await bus.connect(self.settings.nats_url, self.replica)
        self._js = self._nc.jetstream()
        await bus.ensure_streams(self._js, self.subjects)
        self._http = httpx.AsyncClient(follow_redirects=True)
        self.upstream = UpstreamFeed(self._js, self.store, self.subjects, self.settings.upstream_ack_wait_seconds)
        kv = await lease_bucket(self._js, self.subjects.monitor_leases_bucket, self.settings.lease_ttl_seconds)
        self.leases = SlotLeases(
            kv, self.replica, self.settings.lease_slots, self.settings.lease_ttl_seconds,
            on_acquire=self._on_slot_acquired, on_release=self._on_slot_released, clock=self._monotonic,
        )
        self.recorder.start()
        definitions_ready = asyncio.Event()
        background = [asyncio.create_task(self._watch_definitions(stop, definitions_ready), name="definitions")]
        await definitions_ready.wait()
        requests = await self._nc.subscribe(self.subjects.monitor_request_wildcard, cb=self._on_request)
        leases_stop = asyncio.Event()
        lease_task = asyncio.create_task(self.leases.run(leases_stop), name="leases")
        await self.leases.ready.wait()
        log.info("monitor replica %s ready (%d monitors, %d slots held)", self.replica, len(self.states),
                 len(self.leases.held_slots))
        self.ready.set()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await requests.unsubscribe()
            for state in self.states.values():
                state.removed = True
                state.wake.set()
            loops = [s.task for s in self.states.values() if s.task is not None]
            if loops:
                await asyncio.wait(loops, timeout=15)
            leases_stop.set()
            await asyncio.gather(lease_task, return_exceptions=True)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.recorder.close()
            await self.upstream.close()
            await self._http.aclose()
            self._sql.close()
            with contextlib.suppress(Exception):
                await self._nc.drain()
            await self._engine.dispose()
            log.info("monitor replica %s stopped", self.replica)

    # --- definitions ----------------------------------------------------------------------
    async def _watch_definitions(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        kv = await bus.definitions_bucket(self._js, self.subjects)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:  # the end of the initial values
                ready.set()
                continue
            change = self.index.apply_kv_entry(entry.key, entry.value, entry.operation)
            if change is not None:
                await self._apply_change(change)
            if stop.is_set():
                break
        await watcher.stop()  # type: ignore[no-untyped-call]

    async def _apply_change(self, change: IndexChange) -> None:
        if change.kind == "pipeline":  # a target appeared or changed: retry its monitors soon
            for state in self.states.values():
                if state.entry.tenant == change.key[0] and state.entry.model.pipeline == change.key[1]:
                    state.next_due = min(state.next_due, self._monotonic())
                    state.wake.set()
            return
        existing = self.states.get(change.key)
        if change.entry is None:
            if existing is not None:
                existing.removed = True
                existing.wake.set()
                self.states.pop(change.key, None)
                if existing.entry.model.type == "upstream":
                    await self.upstream.forget(change.key)
            return
        if existing is None:
            slot = slot_of(change.entry.tenant, change.entry.name, self.settings.lease_slots)
            state = MonitorState(entry=change.entry, slot=slot, next_due=self._monotonic())
            self.states[change.key] = state
            state.task = asyncio.create_task(self._monitor_loop(state), name=f"monitor {change.key}")
            return
        existing.entry = change.entry
        existing.consecutive_errors = 0
        existing.next_due = min(existing.next_due, self._monotonic() + change.entry.model.interval)
        existing.wake.set()

    # --- leases ----------------------------------------------------------------------------
    async def _on_slot_acquired(self, slot: int) -> None:
        for state in self.states.values():
            if state.slot == slot:
                state.next_due = self._monotonic()
                state.wake.set()

    async def _on_slot_released(self, slot: int) -> None:
        """Wait for the slot's in-flight evaluations, so the next holder never overlaps them."""
        for key, state in list(self.states.items()):
            if state.slot == slot:
                async with state.lock:
                    state.cursor = None
                await self.upstream.release(key)

    def _lease_left(self, state: MonitorState) -> float:
        return self.leases.remaining(state.slot)

    # --- the per-monitor loop ----------------------------------------------------------------
    async def _monitor_loop(self, state: MonitorState) -> None:
        """Evaluate on the interval while this replica holds the monitor's slot; never raises."""
        loop = asyncio.get_running_loop()
        while not state.removed and not self._stop.is_set():
            delay = state.next_due - self._monotonic()
            if delay > 0:
                # A timer handle, not a task per wait: a thousand monitors wait cheaply. Shutdown,
                # definition changes and lease changes set ``wake`` too.
                state.wake.clear()
                timer = loop.call_later(delay, state.wake.set)
                try:
                    await state.wake.wait()
                finally:
                    timer.cancel()
                continue
            model = state.entry.model
            state.next_due = self._monotonic() + model.interval
            if not model.enabled or not model.evaluated_by_service or not self.leases.holds(state.slot):
                continue
            try:
                await self.evaluate(state, "interval")
            except Exception:  # a bug in one monitor must not end its loop (nor the service)
                log.exception("evaluating monitor %s/%s failed", *state.entry.key)
                state.next_due = self._monotonic() + self._backoff(state)

    def _backoff(self, state: MonitorState) -> float:
        return backoff_seconds(
            state.consecutive_errors, state.entry.model.interval,
            self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds,
        )

    # --- one evaluation ------------------------------------------------------------------------
    async def evaluate(self, state: MonitorState, cause: str, report: GatewayReport | None = None) -> Outcome:
        """Check, decide, fire and record one tick for ``state``'s monitor (serialised per monitor)."""
        async with state.lock:
            if self._lease_left(state) <= LEASE_MARGIN_SECONDS:
                return Outcome(None, 503, "this replica does not hold the monitor's lease")
            entry = state.entry
            epoch = self.leases.epochs.get(state.slot, 0)
            if state.cursor is None or state.cursor_epoch != epoch:
                # Another replica may have moved the cursor while it held the slot: reload it.
                state.cursor = MonitorCursor.resume(entry.model.type, await load_cursor(self.store, *entry.key))
                state.cursor_epoch = epoch
            started_at, started, due_base = self._now(), time.perf_counter(), self._monotonic()
            settle: list[Msg] = []
            target = self.index.pipelines.get((entry.tenant, entry.model.pipeline))
            observation: Any = None
            decision: Decision | None = None
            error: str | None = None
            skipped: str | None = None
            if target is None:
                error = f"target pipeline {entry.model.pipeline!r} does not exist"
            elif not target.enabled:
                skipped = f"target pipeline {entry.model.pipeline!r} is disabled; nothing observed"
            elif report is not None and report.error is not None:
                error = f"the gateway reported an error: {report.error}"
            else:
                try:
                    if report is not None:
                        decision = decide_report(entry.model, entry.tenant, report, state.cursor)
                    else:
                        observation, settle = await self._observe(state)
                        decision = decide(entry.model, entry.tenant, observation, state.cursor)
                    if decision.condition_error is not None:
                        error = decision.condition_error
                except CheckFailed as exc:
                    error = str(exc)
                except StoreUnavailable as exc:
                    error = f"event store unavailable: {exc}"
            fired: list[FiredTrigger] = []
            if decision is not None and error is None and decision.fires and target is not None:
                try:
                    fired = await self._publish(entry, target.trigger, decision.fires)
                except (NatsError, TimeoutError) as exc:
                    error = f"could not publish {len(decision.fires)} trigger(s): {type(exc).__name__}: {exc}"
                    fired = []
            failed = error is not None
            new_cursor = state.cursor if failed or decision is None else decision.cursor
            errors = state.consecutive_errors + 1 if failed else 0
            interval = entry.model.interval
            wait = backoff_seconds(errors, interval, self.settings.backoff_initial_seconds,
                                   self.settings.backoff_max_seconds) if failed else interval
            tick = MonitorTicked(
                tenant=entry.tenant,
                name=entry.name,
                monitor_version=entry.version,
                tick_id=str(uuid.uuid4()),
                cause=cause,
                decision="error" if failed else "skipped" if skipped else (decision.outcome if decision else "no_fire"),
                reason=error if failed and decision is None else skipped or (decision.reason if decision else ""),
                observed=decision.observed if decision is not None else bounded(observation),
                error=error,
                fired=fired,
                cursor=new_cursor.model_dump(mode="json") if new_cursor != state.cursor else None,
                started_at=started_at,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                consecutive_errors=errors,
                next_due_at=started_at + timedelta(seconds=wait) if cause != "report" else None,
                replica=self.replica,
            )
            try:
                await self.recorder.record(tick)
            except StoreUnavailable as exc:
                log.warning("monitor %s/%s: tick not recorded: %s", *entry.key, exc)
                state.consecutive_errors += 1
                state.next_due = self._monotonic() + self._backoff(state)
                await self.upstream.settle(settle, recorded=False)
                return Outcome(None, 503, f"the tick could not be recorded: {exc}")
            # Completions an error tick did not act on (e.g. their fires failed) come back later.
            await self.upstream.settle(settle, recorded=not failed)
            self.evaluations += 1
            state.cursor = new_cursor
            state.consecutive_errors = errors
            if cause != "report":  # fixed rate: the interval counts from the start of this evaluation
                state.next_due = due_base + wait
            if failed:
                log.info("monitor %s/%s: error tick (%d in a row): %s", *entry.key, errors, error)
            return Outcome(tick, 200, tick.reason)

    async def _observe(self, state: MonitorState) -> tuple[Any, list[Msg]]:
        """Run the monitor's check, cut off before the slot lease could run out."""
        model = state.entry.model
        budget = self._lease_left(state) - LEASE_MARGIN_SECONDS
        async with self._checks:
            try:
                if isinstance(model, FileMonitor):
                    return await asyncio.wait_for(observe_files(model.settings), budget), []
                if isinstance(model, HttpMonitor):
                    return await asyncio.wait_for(observe_http(self._http, model.settings), budget), []
                if isinstance(model, SqlMonitor):
                    return await asyncio.wait_for(self._sql.observe(model.connection or "", model.settings), budget), []
                if isinstance(model, UpstreamMonitor):
                    return await asyncio.wait_for(self.upstream.fetch(state.entry), budget)
            except TimeoutError as exc:
                raise CheckFailed(f"the check did not finish within the lease ({budget:.1f} s)") from exc
        raise CheckFailed(f"{model.type} monitors are not checked by the service")

    async def _publish(self, entry: MonitorEntry, match: Any, fires: list[Fire]) -> list[FiredTrigger]:
        """Publish every fire to JetStream (pipelined) and wait for all acks."""
        model = entry.model
        subject = self.subjects.trigger(entry.tenant, match.type)
        acks = []
        fired = []
        for fire in fires:
            key = bounded_key(fire.idempotency_key)
            message = TriggerMessage(
                source=f"monitor:{entry.name}",
                type=match.type,
                tenant=entry.tenant,
                environment=match.environment,
                resource_type=match.resource_type,
                payload={**model.payload, "monitor": entry.name, "monitor_type": model.type,
                         "observation": fire.observation},
                idempotency_key=key,
                triggered_by="monitor",
                pipeline=model.pipeline,
            )
            body = message.model_dump_json(exclude_none=True).encode()
            acks.append(await self._js.publish_async(
                subject, body, stream=self.subjects.triggers_stream, headers={"Nats-Msg-Id": key}
            ))
            fired.append(FiredTrigger(
                idempotency_key=key, trigger_id=trigger_id_for(entry.tenant, key), pipeline=model.pipeline,
                trigger_type=match.type, observation_key=fire.observation_key,
            ))
        await asyncio.wait_for(asyncio.gather(*acks), timeout=10)
        return fired

    # --- requests from the API -------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        # Answered in its own task: an evaluation may take seconds and must not hold up other requests.
        self._requests.add(task := asyncio.create_task(self._answer(msg)))
        task.add_done_callback(self._requests.discard)

    async def _answer(self, msg: Msg) -> None:
        """Answer an 'evaluate' or 'report' request if this replica holds the monitor; else stay silent."""
        parts = msg.subject.split(".")  # <prefix>.monitor.<verb>.<tenant>.<name>
        verb = parts[2] if len(parts) == 5 else ""
        try:
            request: EvaluateRequest | ReportRequest
            if verb == "evaluate":
                request = EvaluateRequest.model_validate_json(msg.data)
            elif verb == "report":
                request = ReportRequest.model_validate_json(msg.data)
            else:
                return
        except ValidationError as exc:
            await self._reply(msg, MonitorReply(status=400, message=f"bad request: {exc.errors()[:3]}"))
            return
        slot = slot_of(request.tenant, request.name, self.settings.lease_slots)
        if not self.leases.holds(slot) or not msg.reply:
            return  # the holder of the slot answers
        state = self.states.get((request.tenant, request.name))
        if state is None:
            unknown = "the monitor service does not know this monitor (yet)"
            await self._reply(msg, MonitorReply(status=404, message=unknown))
            return
        try:
            reply = await self._handle(state, request)
        except Exception as exc:
            log.exception("request for monitor %s/%s failed", request.tenant, request.name)
            reply = MonitorReply(status=500, message=f"{type(exc).__name__}: {exc}")
        await self._reply(msg, reply)

    async def _handle(self, state: MonitorState, request: EvaluateRequest | ReportRequest) -> MonitorReply:
        model = state.entry.model
        if isinstance(request, ReportRequest):
            if model.evaluated_by_service:
                return MonitorReply(
                    status=409, message=f"monitor {model.name!r} is evaluated by the service; it takes no reports"
                )
            outcome = await self.evaluate(state, "report", request.report)
        else:
            if not model.evaluated_by_service:
                why = "report monitors fire only from gateway reports" if model.type == "report" else \
                    "runs_on is 'gateway': only gateway reports are evaluated"
                return MonitorReply(status=202, message=f"skipped: {why}")
            outcome = await self.evaluate(state, "manual")
        tick = outcome.tick.model_dump(mode="json") if outcome.tick is not None else None
        return MonitorReply(status=outcome.status, message=outcome.message, tick=tick)

    async def _reply(self, msg: Msg, reply: MonitorReply) -> None:
        with contextlib.suppress(Exception):  # the requester may have given up
            await msg.respond(reply.model_dump_json().encode())
