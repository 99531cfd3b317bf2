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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import text

from baton.events import bus
from baton.events.bus import header_safe
from baton.events.catalogue import TriggerReceived, parse_event
from baton.events.checkpoints import read_checkpoint, write_checkpoint
from baton.events.commands import CancelRun, CommandReply, ReplayTrigger, RetryRun
from baton.events.db import make_engine
from baton.events.envelope import EventMetadata
from baton.events.group_commit import GroupCommitter
from baton.events.listener import listen_for_commits
from baton.events.messages import StepLogBatch, StepOutcome, StepProgress, WorkerReply, WorkItem
from baton.events.migrations import migrate
from baton.events.postgres_store import PostgresEventStore
from baton.events.relay import EventRelay
from baton.events.schema import checkpoints
from baton.events.store import AppendRequest, StoreUnavailable, WrongExpectedVersion
from baton.events.stream_ids import run_id_of, run_stream, trigger_stream
from baton.events.timers import TimerCancel, TimerFired, TimerRequest
from baton.events.trigger import (
    AcceptedTrigger,
    TriggerMessage,
    TriggerRejection,
    run_id_for,
    slice_run_id,
    trigger_id_for,
    validate_trigger,
)
from baton.events.waiting import wait_any
from baton.runner.admission import Admission, Limits
from baton.runner.decide import (
    Decision,
    Rejected,
    busy_steps,
    cancel_run,
    on_log_batch,
    on_outcome,
    on_progress,
    on_timer,
    queue_run,
    retry_run,
    start_run,
)
from baton.runner.definitions import DefinitionIndex
from baton.runner.intake import MatchPlan, TriggerIntake, accept_trigger, reject_trigger
from baton.runner.keyed_locks import KeyedLocks
from baton.runner.run_state import RunState, Timer, fold
from baton.runner.settings import RunnerSettings

log = logging.getLogger(__name__)

REPLY_ADAPTER: TypeAdapter[WorkerReply] = TypeAdapter(WorkerReply)
RECOVERY_CHECKPOINT = "runner-recovery"
# Runs created (or retried) past the low-water mark whose last terminal event, if any,
# is older than their last retry: they are open.
OPEN_RUNS = text(
    "SELECT c.stream_id, c.position FROM events c"
    " WHERE c.type = 'run_created'"
    " AND (c.position > :after OR c.stream_id IN ("
    "   SELECT r.stream_id FROM events r WHERE r.type = 'run_retried' AND r.position > :after))"
    " AND NOT EXISTS (SELECT 1 FROM events t WHERE t.stream_id = c.stream_id"
    "   AND t.type IN ('run_completed', 'run_failed', 'run_canceled')"
    "   AND t.position > coalesce((SELECT max(x.position) FROM events x"
    "     WHERE x.stream_id = c.stream_id AND x.type = 'run_retried'), 0))"
    " ORDER BY c.position"
)
STREAM_EXISTS = text("SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = :s)")
COMMANDS: dict[str, type[CancelRun] | type[RetryRun] | type[ReplayTrigger]] = {
    "cancel": CancelRun,
    "retry": RetryRun,
    "replay": ReplayTrigger,
}
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
        self._admission = Admission(self._limits)
        self._timer_sent_at: dict[str, float] = {}

    def _limits(self, tenant: str, pipeline: str) -> Limits:
        current = self.definitions.get(tenant, pipeline)
        return Limits(
            pipeline_max=current.model.max_concurrent_runs if current else None,
            tenant_max=self.settings.tenant_limit(tenant),
            paused=self.definitions.control(tenant, pipeline).state == "paused",
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        commands = await self._nc.subscribe(self.subjects.command_wildcard, queue="runner", cb=self._on_command)
        await self.recover()
        background.append(asyncio.create_task(self._consume_timers(stop), name="timers"))
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
            await commands.drain()  # type: ignore[no-untyped-call]
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
            changed = self.definitions.apply_kv_entry(entry.key, entry.value, entry.operation)
            if changed is not None and self._definitions_ready.is_set():
                self._pump(changed[0])  # resumed, or a raised limit: queued runs may start
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

    async def _accept(
        self, accepted: AcceptedTrigger, subject: str, replay_of: str | None = None, dry_run: bool = False
    ) -> TriggerIntake | None:
        """Record an accepted trigger and start (or queue) its runs; None when it was already recorded."""
        message = accepted.message
        matches = self.definitions.match(
            accepted.tenant, accepted.type, message.environment, message.resource_type, message.pipeline
        )
        for _ in range(5):
            plans: list[MatchPlan] = []
            for match in matches:
                plans.append(await self._plan(accepted, match, replay_of))
            reserved = [plan.run_id for plan in plans if plan.run_id is not None]
            intake = accept_trigger(accepted, plans, subject, _now(), replay_of, dry_run)
            try:
                await self._committer.submit(intake.unit)
            except WrongExpectedVersion:
                for run_id in reserved:
                    self._admission.forget(run_id)
                if await self._stream_exists(trigger_stream(accepted.trigger_id)):
                    log.debug("trigger %s already accepted; redelivery ignored", accepted.trigger_id)
                    return None
                continue  # another trigger took one of the slices meanwhile: plan again
            for decision in intake.runs:
                self._admission.mark_stored(decision.state.run_id)
                await self._effects(None, decision)
            if any(d.state.status == "pending" for d in intake.runs):
                self._pump(accepted.tenant)  # a slot may have freed while the queued runs were being stored
            return intake
        raise RuntimeError(f"trigger {accepted.trigger_id}: runs kept conflicting")

    async def _plan(self, accepted: AcceptedTrigger, match: Any, replay_of: str | None) -> MatchPlan:
        message = accepted.message
        tenant = accepted.tenant
        if self.definitions.control(tenant, match.name).state == "draining":
            return MatchPlan(match, None, skip_reason="pipeline draining: it accepts no new runs")
        run_id = run_id_for(accepted.trigger_id, match.name)
        if message.slice_key is not None and not message.rerun_slice and replay_of is None:
            run_id = slice_run_id(tenant, match.name, message.slice_key)
            if await self._stream_exists(run_stream(run_id)):
                return MatchPlan(
                    match, None, existing_run=run_id,
                    skip_reason=f"slice {message.slice_key!r} already has run {run_id}; "
                    "send rerun_slice: true to run it again",
                )
        queued = self._admission.admit(tenant, match.name, run_id, stored=False)
        return MatchPlan(match, run_id, queued_reason=queued)

    async def _stream_exists(self, stream_id: str) -> bool:
        async with self._engine.connect() as conn:
            return bool((await conn.execute(STREAM_EXISTS, {"s": stream_id})).scalar_one())

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

    async def _handle_reply(self, reply: WorkerReply) -> None:
        async with self._locks.hold(reply.run_id):
            for _ in range(5):
                state = await self._load(reply.run_id)
                if state is None:
                    log.warning("reply for unknown run %s ignored", reply.run_id)
                    return
                metadata = EventMetadata(
                    correlation_id=state.trigger.get("trigger_id"), causation_id=reply.worker, actor="runner"
                )
                if isinstance(reply, StepProgress):
                    decision = on_progress(state, reply, _now(), metadata)
                elif isinstance(reply, StepLogBatch):
                    decision = on_log_batch(state, reply, _now(), metadata)
                else:
                    decision = on_outcome(state, reply, _now(), metadata)
                if not decision.events:
                    return
                try:
                    await self._append(state, decision)
                except WrongExpectedVersion:
                    self._cache.pop(reply.run_id, None)  # another replica moved the run: reload, decide again
                    continue
                if isinstance(reply, StepOutcome):
                    self._dispatched_at.pop((reply.run_id, reply.step, reply.attempt), None)
                await self._effects(state, decision)
                return

    async def _decide_and_apply(
        self, run_id: str, decide: Callable[[RunState], Decision | None], metadata: EventMetadata | None = None
    ) -> tuple[RunState | None, Decision | None]:
        """Load, decide, append (reloading on conflict) and carry out the effects, under the run's lock."""
        async with self._locks.hold(run_id):
            for _ in range(5):
                state = await self._load(run_id)
                if state is None:
                    return None, None
                decision = decide(state)
                if decision is None or not decision.events:
                    return state, decision
                try:
                    await self._append(state, decision)
                except WrongExpectedVersion:
                    self._cache.pop(run_id, None)
                    continue
                await self._effects(state, decision)
                return state, decision
        raise RuntimeError(f"run {run_id}: kept conflicting with another writer")

    async def _append(self, state: RunState, decision: Decision) -> None:
        await self._committer.submit([AppendRequest(state.stream_id, state.tenant, decision.events, state.version)])
        self._remember(decision.state)

    async def _effects(self, before: RunState | None, decision: Decision) -> None:
        """After an append: dispatch work, arm and disarm timers, free the slot of a run that ended."""
        state = decision.state
        self._remember(state)
        await self._dispatch(state, decision.dispatch_now)
        await self._send_timers(state, decision.timers_to_set, decision.timers_to_cancel)
        if state.is_terminal and (before is None or not before.is_terminal):
            key = self._admission.forget(state.run_id)
            if key is not None:
                self._pump(key[0])

    # --- backpressure -----------------------------------------------------------------
    def _pump(self, tenant: str) -> None:
        """Start the queued runs of ``tenant`` that have a slot now (their slots are taken here)."""
        for run_id, _ in self._admission.startable(tenant):
            self._spawn(self._start_queued(run_id))

    async def _start_queued(self, run_id: str) -> None:
        metadata = EventMetadata(actor="runner", causation_id="admission")
        try:
            state, _ = await self._decide_and_apply(run_id, lambda s: start_run(s, _now(), metadata))
        except Exception:
            log.exception("starting queued run %s failed; it stays queued", run_id)
            key = self._admission.forget(run_id)
            if key is not None:
                self._admission.enqueue(key[0], key[1], run_id)
            return
        if state is None or (state.status != "pending" and state.is_terminal):
            self._admission.forget(run_id)

    # --- timers -----------------------------------------------------------------------
    async def _send_timers(self, state: RunState, arm: list[Timer], disarm: list[Timer], resend: bool = False) -> None:
        futures = []
        for timer in arm:
            request = TimerRequest(
                timer_id=timer.timer_id, tenant=state.tenant, due_at=timer.due_at,
                payload={"run_id": state.run_id, "purpose": timer.purpose, "step": timer.step,
                         "attempt": timer.attempt},
            )
            # A re-send needs its own message id, or JetStream's dedup window would drop it.
            msg_id = f"set:{timer.timer_id}" + (f":{time.time_ns()}" if resend else "")
            self._timer_sent_at[timer.timer_id] = time.monotonic()
            futures.append(await self._js.publish_async(
                self.subjects.timer_set, request.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id}
            ))
        for timer in disarm:
            self._timer_sent_at.pop(timer.timer_id, None)
            futures.append(await self._js.publish_async(
                self.subjects.timer_cancel, TimerCancel(timer_id=timer.timer_id).model_dump_json().encode(),
                headers={"Nats-Msg-Id": f"cancel:{timer.timer_id}"},
            ))
        if futures:
            results = await asyncio.gather(*futures, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("timer request for run %s not confirmed (the sweep re-sends it): %s",
                                state.run_id, result)

    async def _consume_timers(self, stop: asyncio.Event) -> None:
        config = ConsumerConfig(
            durable_name="runner-timers", ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=30, max_ack_pending=20_000, filter_subject=self.subjects.timer_fired,
        )
        sub = await self._js.pull_subscribe(
            self.subjects.timer_fired, durable="runner-timers", stream=self.subjects.timers_stream, config=config
        )
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except (TimeoutError, NatsTimeout):
                    continue
                except Exception:
                    log.exception("timer fetch failed; retrying")
                    await wait_any(stop, None, 1.0)
                    continue
                await asyncio.gather(*(self._on_timer_fired(msg) for msg in msgs))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_timer_fired(self, msg: Msg) -> None:
        try:
            fired = TimerFired.model_validate_json(msg.data)
            run_id = str(fired.payload["run_id"])
        except (ValidationError, KeyError) as exc:
            log.warning("malformed timer fire: %s", exc)
            with contextlib.suppress(Exception):
                await self._js.publish(self.subjects.dlq("timer"), msg.data, headers={
                    "Baton-Reason": "invalid_timer_fire", "Baton-Detail": header_safe(str(exc))})
            await msg.ack()
            return
        metadata = EventMetadata(actor="runner", causation_id=fired.timer_id)
        try:
            await self._decide_and_apply(run_id, lambda s: on_timer(s, fired.timer_id, _now(), metadata))
        except Exception as exc:
            log.warning("timer %s for run %s failed: %s; redelivery retries it", fired.timer_id, run_id, exc)
            await msg.nak(delay=1.0)
            return
        self._timer_sent_at.pop(fired.timer_id, None)
        await msg.ack()

    # --- operator commands ------------------------------------------------------------
    async def _on_command(self, msg: Msg) -> None:
        self._spawn(self._handle_command(msg))

    async def _handle_command(self, msg: Msg) -> None:
        try:
            reply = await asyncio.wait_for(self._command(msg), self.settings.command_timeout_seconds)
        except Rejected as exc:
            reply = CommandReply(status=exc.status, message=str(exc))
        except ValidationError as exc:
            reply = CommandReply(status=400, message=f"invalid command: {exc}")
        except Exception as exc:
            log.exception("command on %s failed", msg.subject)
            reply = CommandReply(status=500, message=f"command failed: {type(exc).__name__}: {exc}")
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply.model_dump_json().encode())

    async def _command(self, msg: Msg) -> CommandReply:
        tail = msg.subject[len(self.subjects.prefix) + len(".cmd."):]
        tenant, _, verb = tail.partition(".")
        model = COMMANDS.get(verb)
        if model is None:
            raise Rejected(f"unknown command {verb!r}; known: {', '.join(COMMANDS)}", 400)
        command = model.model_validate_json(msg.data)
        metadata = EventMetadata(actor=command.actor or "operator", causation_id=f"cmd:{verb}")
        if isinstance(command, ReplayTrigger):
            return await self._replay(tenant, command)
        state = await self._load(command.run_id)
        if state is None or state.tenant != tenant:
            raise Rejected(f"run {command.run_id} not found", 404)
        if isinstance(command, CancelRun):
            return await self._cancel(command, metadata)
        return await self._retry(command, metadata)

    async def _cancel(self, command: CancelRun, metadata: EventMetadata) -> CommandReply:
        await self._decide_and_apply(
            command.run_id, lambda state: cancel_run(state, command.reason, command.actor, _now(), metadata)
        )
        return CommandReply(status=200, message=f"run {command.run_id} canceled",
                            data={"run_id": command.run_id, "status": "canceled"})

    async def _retry(self, command: RetryRun, metadata: EventMetadata) -> CommandReply:
        run_id = command.run_id

        def decide(state: RunState) -> Decision:
            decision = retry_run(state, command.reason, command.actor, _now(), metadata, command.dead_letter_id)
            reason = self._admission.admit(state.tenant, state.pipeline, run_id, stored=False)
            follow = (
                start_run(decision.state, _now(), metadata)
                if reason is None
                else queue_run(decision.state, reason, _now(), metadata)
            )
            decision.events.extend(follow.events)
            decision.dispatch.extend(follow.dispatch)
            decision.state = follow.state
            return decision

        try:
            state, decision = await self._decide_and_apply(run_id, decide)
        except Rejected:
            raise
        except Exception:
            self._admission.forget(run_id)
            raise
        self._admission.mark_stored(run_id)
        if state is not None:
            self._pump(state.tenant)
        status = decision.state.status if decision else "unknown"
        return CommandReply(status=200, message=f"run {run_id} retried from its first failed step",
                            data={"run_id": run_id, "status": status})

    async def _replay(self, tenant: str, command: ReplayTrigger) -> CommandReply:
        original = await self._received(command.trigger_id)
        if original is None or original.tenant != tenant:
            raise Rejected(f"trigger {command.trigger_id} not found", 404)
        message = TriggerMessage(
            source=original.source, resource_type=original.resource_type, resource_id=original.resource_id,
            environment=original.environment, payload=original.payload, triggered_by="replay",
            idempotency_key=f"replay:{command.replay_id}", pipeline=command.pipeline or original.pipeline,
            slice_key=original.slice_key, scheduled_at=original.scheduled_at,
        )
        replay_id = trigger_id_for(tenant, f"replay\x00{command.replay_id}")
        accepted = AcceptedTrigger(replay_id, tenant, original.type, message, message.idempotency_key or "")
        await self._accept(accepted, original.subject or "", replay_of=original.trigger_id, dry_run=command.dry_run)
        recorded = await self._received(replay_id)
        runs = [run.run_id for run in recorded.runs] if recorded else []
        skipped = [s.model_dump() for s in recorded.skipped] if recorded else []
        return CommandReply(
            status=200, message=f"trigger {command.trigger_id} replayed into {len(runs)} run(s)"
            + (" (dry run)" if command.dry_run else ""),
            data={"trigger_id": replay_id, "replay_of": original.trigger_id, "runs": runs, "skipped": skipped,
                  "dry_run": command.dry_run},
        )

    async def _received(self, trigger_id: str) -> TriggerReceived | None:
        for event in await self.store.read_stream(trigger_stream(trigger_id)):
            if event.type == "trigger_received":
                parsed = parse_event(event)
                assert isinstance(parsed, TriggerReceived)
                return parsed
        return None

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
                partition_key=state.slice_key,
            )
            self._dispatched_at[(state.run_id, name, step.attempt)] = time.monotonic()
            await self._nc.publish(
                self.subjects.work("managed", state.tenant, state.pipeline), item.model_dump_json().encode()
            )

    async def _sweep(self, stop: asyncio.Event) -> None:
        """Re-dispatch steps no worker picked up (core NATS drops work when no worker listens),
        re-send timers the scheduler has not fired long after they were due, and start queued
        runs whose slot freed without a wake-up (a raised limit, a failed start)."""
        while not stop.is_set():
            await wait_any(stop, None, max(self.settings.redispatch_after_seconds / 2, 0.5))
            for tenant in self._admission.tenants_with_queue():
                self._pump(tenant)
            await self._resend_overdue_timers()
            deadline = time.monotonic() - self.settings.redispatch_after_seconds
            for (run_id, step, attempt), at in list(self._dispatched_at.items()):
                state = self._cache.get(run_id)
                current = state.steps.get(step) if state else None
                if current is None or current.attempt != attempt or current.status != "scheduled":
                    self._dispatched_at.pop((run_id, step, attempt), None)
                elif at < deadline and state is not None:
                    log.info("re-dispatching %s/%s attempt %d: no worker started it", run_id, step, attempt)
                    await self._dispatch(state, [step])

    async def _resend_overdue_timers(self) -> None:
        late = self.settings.timer_resend_after_seconds
        now = _now()
        for state in list(self._cache.values()):
            overdue = [
                t for t in state.timers.values()
                if (now - t.due_at).total_seconds() > late
                and time.monotonic() - self._timer_sent_at.get(t.timer_id, 0.0) > late
            ]
            if overdue:
                log.info("re-sending %d overdue timer(s) of run %s", len(overdue), state.run_id)
                await self._send_timers(state, overdue, [], resend=True)

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
                if state.status == "pending":
                    self._admission.enqueue(state.tenant, state.pipeline, run_id)
                    continue
                self._admission.activate(state.tenant, state.pipeline, run_id)
                busy = busy_steps(state)
                await self._dispatch(state, busy)
                await self._send_timers(state, list(state.timers.values()), [], resend=True)
                redispatched += len(busy)
        for tenant in self._admission.tenants_with_queue():
            self._pump(tenant)
        low_water = (open_runs[0][1] - 1) if open_runs else head
        async with self._engine.begin() as conn:
            await write_checkpoint(conn, checkpoints, RECOVERY_CHECKPOINT, low_water)
        if open_runs:
            log.info("recovery: %d open runs, %d steps re-dispatched", len(open_runs), redispatched)
        return redispatched
