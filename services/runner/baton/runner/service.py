"""The run router: triggers -> runs -> steps -> results, as a long-running service.

Load, decide, append, dispatch: every message is handled by loading the run's state
(cached, or folded from its stream), calling a pure decision, appending the events
with the state's version as expected version (group-committed), and only then
dispatching work and acknowledging the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import text

from baton.events import bus
from baton.events.bus import header_safe
from baton.events.checkpoints import read_checkpoint, write_checkpoint
from baton.events.db import make_engine
from baton.events.envelope import EventMetadata
from baton.events.listener import listen_for_commits
from baton.events.messages import StepLogBatch, StepOutcome, StepProgress, WorkerReply, WorkItem
from baton.events.migrations import migrate
from baton.events.postgres_store import PostgresEventStore
from baton.events.relay import EventRelay
from baton.events.schema import checkpoints
from baton.events.store import AppendRequest, StoreUnavailable, WrongExpectedVersion
from baton.events.stream_ids import run_id_of, run_stream
from baton.events.trigger import AcceptedTrigger, TriggerRejection, validate_trigger
from baton.events.waiting import wait_any
from baton.runner.decide import Decision, on_outcome, on_progress
from baton.runner.definitions import DefinitionIndex
from baton.runner.group_commit import GroupCommitter
from baton.runner.intake import accept_trigger, reject_trigger
from baton.runner.keyed_locks import KeyedLocks
from baton.runner.run_state import RunState, fold
from baton.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

REPLY_ADAPTER: TypeAdapter[WorkerReply] = TypeAdapter(WorkerReply)
RECOVERY_CHECKPOINT = "runner-recovery"
OPEN_RUNS = text(
    "SELECT c.stream_id, c.position FROM events c"
    " WHERE c.type = 'run_created' AND c.position > :after"
    " AND NOT EXISTS (SELECT 1 FROM events t WHERE t.stream_id = c.stream_id"
    "   AND t.type IN ('run_completed', 'run_failed', 'run_canceled'))"
    " ORDER BY c.position"
)
MAX_CACHED_RUNS = 50_000


def _now() -> datetime:
    return datetime.now(UTC)


class RunnerService:
    """One runner replica: trigger intake, result handling, dispatch, recovery and the relay."""

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.subjects = settings.subjects
        self.name = f"runner-{socket.gethostname()}-{os.getpid()}"
        self.definitions = DefinitionIndex()
        self._engine = make_engine(settings.database_url)
        self.store = PostgresEventStore(self._engine, notify_channel=self.subjects.notify_channel)
        self._committer = GroupCommitter(self.store)
        self._locks = KeyedLocks()
        self._cache: dict[str, RunState] = {}
        self._dispatched_at: dict[tuple[str, str, int], float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._definitions_ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down cleanly."""
        await migrate(self._engine)
        self._nc = await bus.connect(self.settings.nats_url, self.name)
        self._js = self._nc.jetstream()
        await bus.ensure_streams(self._js, self.subjects)
        self._committer.start()
        background = [asyncio.create_task(self._watch_definitions(stop), name="definitions")]
        await self._definitions_ready.wait()
        results = await self._nc.subscribe(self.subjects.result_wildcard, queue="runner", cb=self._on_result_message)
        await self.recover()
        if self.settings.relay:
            wakeup = asyncio.Event()
            relay = EventRelay(self._engine, self._js, self.subjects)
            background.append(asyncio.create_task(relay.run(stop, wakeup), name="relay"))
            background.append(
                asyncio.create_task(
                    listen_for_commits(self.settings.database_url, self.subjects.notify_channel, wakeup, stop),
                    name="commit-listener",
                )
            )
        background.append(asyncio.create_task(self._sweep(stop), name="sweep"))
        log.info("runner %s ready (%d pipeline definitions)", self.name, len(self.definitions))
        try:
            await self._consume_triggers(stop)
        finally:
            await results.drain()  # type: ignore[no-untyped-call]
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)
            await self._committer.close()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._nc.flush()
            await self._nc.close()
            await self._engine.dispose()
            log.info("runner %s stopped", self.name)

    # --- definitions ------------------------------------------------------------------
    async def _watch_definitions(self, stop: asyncio.Event) -> None:
        kv = await bus.definitions_bucket(self._js, self.subjects)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:  # the end of the initial values: matching may start
                self._definitions_ready.set()
                continue
            self.definitions.apply_kv_entry(entry.key, entry.value, entry.operation)
            if stop.is_set():
                break
        await watcher.stop()  # type: ignore[no-untyped-call]

    # --- triggers ---------------------------------------------------------------------
    async def _consume_triggers(self, stop: asyncio.Event) -> None:
        config = ConsumerConfig(
            durable_name="runner",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.trigger_ack_wait_seconds,
            max_ack_pending=20_000,
        )
        sub = await self._js.pull_subscribe(
            self.subjects.trigger_wildcard, durable="runner", stream=self.subjects.triggers_stream, config=config
        )
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.settings.intake_batch, timeout=0.5)
                except (TimeoutError, NatsTimeout):
                    continue
                except Exception:
                    log.exception("trigger fetch failed; retrying")
                    await wait_any(stop, None, 1.0)
                    continue
                await asyncio.gather(*(self._on_trigger(msg) for msg in msgs))
        finally:
            # Unacked triggers are redelivered to the next runner; an open pull subscription
            # would make the connection drain wait out its 30 s timeout.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_trigger(self, msg: Msg) -> None:
        meta = msg.metadata
        dedup_key = (msg.headers or {}).get("Nats-Msg-Id") or f"seq:{meta.sequence.stream}"
        try:
            verdict = validate_trigger(
                self.subjects, msg.subject, msg.data, dedup_key, self.settings.max_trigger_bytes
            )
            if isinstance(verdict, AcceptedTrigger):
                await self._accept(verdict, msg.subject)
            else:
                await self._reject(verdict.trigger_id, verdict.tenant, verdict.reason, verdict.detail, msg)
            await msg.ack()
        except Exception as exc:
            if meta.num_delivered >= self.settings.max_trigger_deliveries:
                log.error("trigger %s failed %d times; dead-lettering: %s", dedup_key, meta.num_delivered, exc)
                with contextlib.suppress(Exception):  # the ack below must still happen
                    await self._dead_letter(msg, "processing_failed", f"{type(exc).__name__}: {exc}", dedup_key)
                await msg.ack()
            else:
                log.warning("trigger %s failed (delivery %d): %s", dedup_key, meta.num_delivered, exc)
                await msg.nak(delay=min(2.0**meta.num_delivered, 30.0))

    async def _accept(self, accepted: AcceptedTrigger, subject: str) -> None:
        message = accepted.message
        matches = self.definitions.match(accepted.tenant, accepted.type, message.environment, message.resource_type)
        intake = accept_trigger(accepted, matches, subject, _now())
        try:
            await self._committer.submit(intake.unit)
        except WrongExpectedVersion:
            log.debug("trigger %s already accepted; redelivery ignored", accepted.trigger_id)
            return
        for decision in intake.runs:
            self._remember(decision.state)
            await self._dispatch(decision.state, decision.dispatch)

    async def _reject(self, trigger_id: str, tenant: str | None, reason: str, detail: str, msg: Msg) -> None:
        request = reject_trigger(TriggerRejection(trigger_id, tenant, reason, detail), msg.subject, msg.data, _now())
        with contextlib.suppress(WrongExpectedVersion):  # already recorded by an earlier delivery
            await self._committer.submit([request])
        await self._dead_letter(msg, reason, detail, trigger_id)

    async def _dead_letter(self, msg: Msg, reason: str, detail: str, msg_id: str) -> None:
        headers = bus.headers_for(
            f"dlq-{msg_id}", **{"Baton-Reason": reason, "Baton-Detail": detail, "Baton-Subject": msg.subject}
        )
        await self._js.publish(self.subjects.dlq("trigger"), msg.data, headers=headers)

    # --- results ----------------------------------------------------------------------
    async def _on_result_message(self, msg: Msg) -> None:
        # Handled in its own task so one slow run never holds up the subscription.
        task = asyncio.create_task(self._on_result(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_result(self, msg: Msg) -> None:
        try:
            reply = REPLY_ADAPTER.validate_json(msg.data)
        except ValidationError as exc:
            log.warning("malformed worker reply on %s: %s", msg.subject, exc)
            with contextlib.suppress(Exception):
                await self._nc.publish(
                    self.subjects.dlq("result"), msg.data, headers={"Baton-Reason": "invalid_reply",
                                                                    "Baton-Detail": header_safe(str(exc))}
                )
            return
        if isinstance(reply, StepLogBatch):  # worker branch stop-gap: the runner core records these (issue 3)
            return
        for attempt in range(5):
            try:
                await self._handle_reply(reply)
                return
            except StoreUnavailable as exc:
                log.warning("store unavailable handling a reply for run %s: %s", reply.run_id, exc)
                await asyncio.sleep(0.2 * 2**attempt)  # backoff between retries, not synchronisation
            except Exception:
                log.exception("reply for run %s failed", reply.run_id)
                return

    async def _handle_reply(self, reply: StepProgress | StepOutcome) -> None:
        async with self._locks.hold(reply.run_id):
            for _ in range(5):
                state = await self._load(reply.run_id)
                if state is None:
                    log.warning("reply for unknown run %s ignored", reply.run_id)
                    return
                metadata = EventMetadata(
                    correlation_id=state.trigger.get("trigger_id"), causation_id=reply.worker, actor="runner"
                )
                decision = (
                    on_progress(state, reply, _now(), metadata)
                    if isinstance(reply, StepProgress)
                    else on_outcome(state, reply, _now(), metadata)
                )
                if not decision.events:
                    return
                try:
                    await self._append(state, decision)
                except WrongExpectedVersion:
                    self._cache.pop(reply.run_id, None)  # another replica moved the run: reload, decide again
                    continue
                if isinstance(reply, StepOutcome):
                    self._dispatched_at.pop((reply.run_id, reply.step, reply.attempt), None)
                await self._dispatch(decision.state, decision.dispatch)
                return

    async def _append(self, state: RunState, decision: Decision) -> None:
        await self._committer.submit([AppendRequest(state.stream_id, state.tenant, decision.events, state.version)])
        self._remember(decision.state)

    # --- state ------------------------------------------------------------------------
    def _remember(self, state: RunState) -> None:
        if state.is_terminal:
            self._cache.pop(state.run_id, None)
            return
        self._cache[state.run_id] = state
        if len(self._cache) > MAX_CACHED_RUNS:  # evict the oldest; it reloads from the store if needed
            self._cache.pop(next(iter(self._cache)))

    async def _load(self, run_id: str) -> RunState | None:
        cached = self._cache.get(run_id)
        if cached is not None:
            return cached
        events = await self.store.read_stream(run_stream(run_id))
        if not events:
            return None
        return fold(run_id, events)

    # --- dispatch ---------------------------------------------------------------------
    async def _dispatch(self, state: RunState, steps: list[str]) -> None:
        for name in steps:
            step = state.steps[name]
            definition = step.definition
            item = WorkItem(
                tenant=state.tenant,
                run_id=state.run_id,
                pipeline=state.pipeline,
                pipeline_version=state.pipeline_version,
                step=name,
                step_type="condition" if step.kind == "condition" else "action",
                uses=definition.get("uses") or "python",
                settings=definition.get("with", {}),
                attempt=step.attempt,
                idempotency_key=f"{state.run_id}:{name}:{step.attempt}",
                trigger=state.trigger,
                context=state.context,
                config=state.config,
                reply_subject=self.subjects.result(state.tenant, state.run_id),
            )
            self._dispatched_at[(state.run_id, name, step.attempt)] = time.monotonic()
            await self._nc.publish(
                self.subjects.work("managed", state.tenant, state.pipeline), item.model_dump_json().encode()
            )

    async def _sweep(self, stop: asyncio.Event) -> None:
        """Re-dispatch steps no worker picked up (core NATS drops work when no worker listens)."""
        while not stop.is_set():
            await wait_any(stop, None, max(self.settings.redispatch_after_seconds / 2, 0.5))
            deadline = time.monotonic() - self.settings.redispatch_after_seconds
            for (run_id, step, attempt), at in list(self._dispatched_at.items()):
                state = self._cache.get(run_id)
                current = state.steps.get(step) if state else None
                if current is None or current.attempt != attempt or current.status != "scheduled":
                    self._dispatched_at.pop((run_id, step, attempt), None)
                elif at < deadline and state is not None:
                    log.info("re-dispatching %s/%s attempt %d: no worker started it", run_id, step, attempt)
                    await self._dispatch(state, [step])

    # --- recovery ---------------------------------------------------------------------
    async def recover(self) -> int:
        """Re-dispatch the in-flight steps of every open run (results may have been lost while down)."""
        async with self._engine.begin() as conn:
            after = await read_checkpoint(conn, checkpoints, RECOVERY_CHECKPOINT)
            open_runs = (await conn.execute(OPEN_RUNS, {"after": after})).all()
            head = (
                await conn.execute(text("SELECT coalesce(max(position), 0) FROM events WHERE type = 'run_created'"))
            ).scalar_one()
        redispatched = 0
        for stream_id, _ in open_runs:
            run_id = run_id_of(stream_id)
            async with self._locks.hold(run_id):
                state = await self._load(run_id)
                if state is None or state.is_terminal:
                    continue
                self._remember(state)
                busy = [s.name for s in state.steps.values() if s.status in ("scheduled", "running")]
                await self._dispatch(state, busy)
                redispatched += len(busy)
        low_water = (open_runs[0][1] - 1) if open_runs else head
        async with self._engine.begin() as conn:
            await write_checkpoint(conn, checkpoints, RECOVERY_CHECKPOINT, low_water)
        if open_runs:
            log.info("recovery: %d open runs, %d steps re-dispatched", len(open_runs), redispatched)
        return redispatched
