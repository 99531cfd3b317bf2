"""Cron schedules as a scheduler component: fire each pipeline's slots as triggers, record every decision.

Load, decide, append, publish. Definitions and operator state arrive from the NATS KV
bucket (``pipeline.<t>.<name>``, ``control.<t>.<name>``); each schedule's last decided
slot is folded from its event stream. ``fire_lead`` (1 s) before a slot is due the
replica appends ``schedule_fired`` with the stream's version as expected version
(the claim); at the due time it publishes the pre-serialised trigger (``Nats-Msg-Id``
= the slot's idempotency key), so the commit is not part of the lateness. Two replicas
deciding the same slot conflict in the event store: exactly one records it and only
that one publishes. A crash between the claim and the publish is healed on start:
recent fires are published again (or queued to their slot), and JetStream (within its
2-minute window) and the runner (deterministic trigger ids beyond it) drop repeats.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events import bus
from baton.events.catalogue import (
    EventData,
    ScheduleActivated,
    ScheduleDeactivated,
    ScheduleFired,
    ScheduleSkipped,
)
from baton.events.control import PipelineControl
from baton.events.cron import CronSchedule
from baton.events.envelope import EventMetadata, NewEvent, utcnow
from baton.events.missed import SkippedRange, plan_missed
from baton.events.pipeline import PipelineDefinition
from baton.events.postgres_store import PostgresEventStore
from baton.events.schedule import ScheduleSpec, SlotTrigger, slot_trigger
from baton.events.store import AppendRequest, WrongExpectedVersion
from baton.events.stream_ids import schedule_stream
from baton.events.subjects import Subjects
from baton.events.waiting import wait_any
from baton.scheduler.schedule_state import ScheduleHistory, fold_history

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_WAIT_SECONDS = 5.0
MAX_DECIDE_ATTEMPTS = 5


@dataclass
class Schedule:
    """One live schedule: the pipeline's spec, its folded history and its next due slot."""

    tenant: str
    pipeline: str
    version: int
    trigger_type: str
    spec: ScheduleSpec
    cron: CronSchedule
    history: ScheduleHistory = field(default_factory=ScheduleHistory)
    control: str = "active"
    next_due: datetime | None = None
    prepared: SlotTrigger | None = None  # next_due's trigger, serialised ahead so a fire only appends and publishes

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.pipeline)

    @property
    def stream_id(self) -> str:
        return schedule_stream(self.tenant, self.pipeline)


@dataclass(frozen=True)
class _Decision:
    """Events one schedule appends in a round, and the triggers to publish once they are durable."""

    schedule: Schedule
    events: list[NewEvent]
    triggers: list[SlotTrigger]


class ScheduleService:
    """Fires every enabled pipeline schedule; run one or more replicas with ``run(stop)``."""

    def __init__(
        self,
        js: JetStreamContext,
        engine: AsyncEngine,
        subjects: Subjects,
        *,
        clock: Clock = utcnow,
        misfire_grace: timedelta = timedelta(seconds=1),
        republish_horizon: timedelta = timedelta(seconds=120),
        fire_lead: timedelta = timedelta(seconds=1),
        name: str = "scheduler",
    ) -> None:
        self._js = js
        self.subjects = subjects
        self.store = PostgresEventStore(engine, notify_channel=subjects.notify_channel)
        self._clock = clock
        self._grace = misfire_grace
        self._republish_horizon = republish_horizon
        self._lead = fire_lead
        # Claimed slots waiting for their due time: (slot, idempotency key, trigger).
        self._outbox: list[tuple[datetime, str, SlotTrigger]] = []
        # Claimed schedules whose next slot is still to be computed (a few per round, so a large
        # claim never delays the publishes due meanwhile).
        self._replan: list[Schedule] = []
        self.name = name
        self.schedules: dict[tuple[str, str], Schedule] = {}
        self._controls: dict[tuple[str, str], str] = {}
        self._changes: asyncio.Queue[tuple[str, bytes | None, str | None]] = asyncio.Queue()
        self._heap: list[tuple[datetime, str, str]] = []
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()
        self._initial_loaded = False

    def nudge(self) -> None:
        """Re-evaluate now (after an injected clock moved on)."""
        self._wake.set()

    # --- loop ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Watch definitions and fire due slots until ``stop`` is set."""
        kv = await bus.definitions_bucket(self._js, self.subjects)
        watcher = asyncio.create_task(self._watch(kv, stop), name="schedule-definitions")
        backoff = 0.1
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self._apply_changes()
                    await self._claim_due()
                    await self._publish_due()
                    self._replan_some()
                    backoff = 0.1
                except Exception:
                    log.exception("schedule round failed; retrying in %.1fs", backoff)
                    await wait_any(stop, None, backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if watcher.done() and not stop.is_set():
                    watcher.result()  # the watch ended: raise its error instead of going deaf
                await wait_any(stop, self._wake, self._seconds_to_next_due())
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, kv: KeyValue, stop: asyncio.Event) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    await self._changes.put(("", None, "READY"))
                else:
                    await self._changes.put((entry.key, entry.value, entry.operation))
                self._wake.set()
                if stop.is_set():
                    break
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _seconds_to_next_due(self) -> float:
        """Until the next claim (a slot ``fire_lead`` ahead) or the next claimed slot's due time."""
        wake: datetime | None = self._outbox[0][0] if self._outbox else None
        while self._heap:
            due, tenant, pipeline = self._heap[0]
            schedule = self.schedules.get((tenant, pipeline))
            if schedule is None or schedule.next_due != due:
                heapq.heappop(self._heap)  # stale: the schedule changed or went away
                continue
            claim_at = due - self._lead
            wake = claim_at if wake is None else min(wake, claim_at)
            break
        if wake is None:
            return MAX_WAIT_SECONDS
        return min(max((wake - self._clock()).total_seconds(), 0.0), MAX_WAIT_SECONDS)

    # --- definitions and operator state -----------------------------------------------------
    async def _apply_changes(self) -> None:
        while not self._changes.empty():
            key, value, operation = self._changes.get_nowait()
            if operation == "READY":
                self._initial_loaded = True
                self.ready.set()
                continue
            kind, _, rest = key.partition(".")
            tenant, _, name = rest.partition(".")
            if not tenant or not name:
                continue
            deleted = operation in ("DEL", "PURGE") or not value
            if kind == "pipeline":
                await self._on_definition(tenant, name, None if deleted else value)
            elif kind == "control":
                await self._on_control(tenant, name, None if deleted else value)

    async def _on_definition(self, tenant: str, name: str, value: bytes | None) -> None:
        parsed = _parse_definition(tenant, name, value)
        current = self.schedules.get((tenant, name))
        if parsed is None:
            if current is not None:
                await self._deactivate(current, "pipeline deleted" if value is None else "schedule disabled")
            return
        version, definition, spec = parsed
        if current is not None and current.version > version:
            return
        schedule = Schedule(tenant, name, version, definition.trigger.type, spec, spec.cron_schedule())
        schedule.control = self._controls.get((tenant, name), "active")
        if current is not None:
            schedule.history = current.history
        else:
            schedule.history = await self._load_history(schedule)
            await self._republish_recent(schedule)
        self.schedules[schedule.key] = schedule
        now = self._clock()
        for _ in range(MAX_DECIDE_ATTEMPTS):
            history = schedule.history
            if history.active and history.signature == spec.signature():
                break
            reason = "created" if history.activated_at is None else ("changed" if history.active else "enabled")
            event = ScheduleActivated(
                tenant=tenant, pipeline=name, pipeline_version=version, cron=list(spec.cron),
                timezone=spec.timezone, missed=spec.missed, since=now, reason=reason,
            )
            if await self._append_one(schedule, [self._event(event, now)]):
                break
        if schedule.control == "active":
            await self._settle_missed(schedule)
        self._plan_next(schedule)

    async def _on_control(self, tenant: str, name: str, value: bytes | None) -> None:
        state = "active"
        if value:
            try:
                state = PipelineControl.model_validate_json(value).state
            except ValidationError as exc:
                log.error("ignoring malformed control entry for %s/%s: %s", tenant, name, exc)
                return
        previous = self._controls.get((tenant, name), "active")
        self._controls[(tenant, name)] = state
        schedule = self.schedules.get((tenant, name))
        if schedule is None:
            return
        schedule.control = state
        if state == "active" and previous == "paused":
            await self._settle_missed(schedule)  # slots that came due while paused follow the policy
        self._plan_next(schedule)

    async def _deactivate(self, schedule: Schedule, reason: str) -> None:
        self.schedules.pop(schedule.key, None)
        now = self._clock()
        for _ in range(MAX_DECIDE_ATTEMPTS):
            if not schedule.history.active:
                return
            event = ScheduleDeactivated(tenant=schedule.tenant, pipeline=schedule.pipeline, reason=reason)
            if await self._append_one(schedule, [self._event(event, now)]):
                return

    # --- deciding ---------------------------------------------------------------------------
    async def _settle_missed(self, schedule: Schedule) -> None:
        """Apply the missed-fire policy to slots between the anchor and now (rounds until none is left)."""
        for _ in range(10_000):
            now = self._clock()
            anchor = schedule.history.anchor()
            if anchor is None:
                return
            spec = schedule.spec
            plan = plan_missed(schedule.cron, spec.missed, spec.catch_up_window, anchor, now - self._grace, now)
            if plan.skipped is None and not plan.fire:
                return
            kind = "catch_up" if spec.missed == "catch_up" else "latest"
            decision = self._decide(schedule, plan.fire, kind, now, plan.skipped)
            if await self._commit([decision]) and not plan.more:
                return

    async def _claim_due(self) -> None:
        """Decide the slots due within ``fire_lead``: record them now, publish them at their due time.

        Recording ahead keeps the event-store commit out of the lateness: at the due time
        only pre-serialised messages go out.
        """
        now = self._clock()
        due: list[tuple[Schedule, datetime]] = []
        while self._heap and self._heap[0][0] - self._lead <= now:
            due_at, tenant, pipeline = heapq.heappop(self._heap)
            schedule = self.schedules.get((tenant, pipeline))
            if schedule is not None and schedule.next_due == due_at:
                schedule.next_due = None
                due.append((schedule, due_at))
        if not due:
            return
        decisions: list[_Decision] = []
        late: list[Schedule] = []
        for schedule, slot in due:
            if schedule.control == "paused":
                continue  # the slot is missed and settled on resume
            if now - slot > self._grace:
                late.append(schedule)  # the loop fell behind: the missed-fire policy decides
            elif schedule.control == "draining":
                skipped = SkippedRange(slot, slot, 1, True, "pipeline draining")
                decisions.append(self._decide(schedule, [], "on_time", now, skipped))
            else:
                decisions.append(self._decide(schedule, [slot], "on_time", now, None))
        await self._commit(decisions, publish=False)
        for schedule in late:
            await self._settle_missed(schedule)
        self._replan.extend(schedule for schedule, _ in due)

    def _replan_some(self, batch: int = 25) -> None:
        chunk, self._replan = self._replan[:batch], self._replan[batch:]
        for schedule in chunk:
            self._plan_next(schedule)
        if self._replan:
            self._wake.set()

    def _decide(
        self, schedule: Schedule, slots: list[datetime], kind: str, now: datetime, skipped: SkippedRange | None
    ) -> _Decision:
        events: list[NewEvent] = []
        if skipped is not None:
            data: EventData = ScheduleSkipped(
                tenant=schedule.tenant, pipeline=schedule.pipeline, first_slot=skipped.first,
                last_slot=skipped.last, count=skipped.count, count_exact=skipped.count_exact, reason=skipped.reason,
            )
            events.append(self._event(data, now))
        triggers = []
        for slot in slots:
            prepared = schedule.prepared
            trigger = (
                prepared
                if kind == "on_time" and prepared is not None and prepared.slot == slot
                else slot_trigger(
                    self.subjects, schedule.tenant, schedule.pipeline, schedule.trigger_type, slot,
                    schedule.spec.payload, with_slice=kind == "catch_up",
                )
            )
            fired = ScheduleFired(
                tenant=schedule.tenant, pipeline=schedule.pipeline, slot=slot, kind=kind,
                trigger_id=trigger.trigger_id, idempotency_key=trigger.idempotency_key,
                trigger_type=schedule.trigger_type, slice_key=trigger.slice_key, fired_at=max(slot, now),
            )
            events.append(self._event(fired, now, trigger.trigger_id))
            triggers.append(trigger)
        return _Decision(schedule, events, triggers)

    async def _publish_due(self) -> None:
        now = self._clock()
        ready: list[SlotTrigger] = []
        while self._outbox and self._outbox[0][0] <= now:
            ready.append(heapq.heappop(self._outbox)[2])
        await self._publish(ready)

    async def _commit(self, decisions: list[_Decision], publish: bool = True) -> bool:
        """Append every decision in one transaction; the winners' triggers are published (or queued to their slot).

        Returns False when any lost to another replica (its history is reloaded so the caller may decide again).
        """
        decisions = [d for d in decisions if d.events]
        if not decisions:
            return True
        units = [
            [AppendRequest(d.schedule.stream_id, d.schedule.tenant, d.events, d.schedule.history.version)]
            for d in decisions
        ]
        outcomes = await self.store.append_units(units)
        publishes = []
        all_won = True
        for decision, outcome in zip(decisions, outcomes, strict=True):
            schedule = decision.schedule
            if isinstance(outcome, WrongExpectedVersion):
                all_won = False
                await self._reload(schedule)
                continue
            publishes.extend(decision.triggers)
        if publish:
            await self._publish(publishes)
        else:
            for trigger in publishes:
                heapq.heappush(self._outbox, (trigger.slot, trigger.idempotency_key, trigger))
        for decision, outcome in zip(decisions, outcomes, strict=True):
            if not isinstance(outcome, WrongExpectedVersion):
                decision.schedule.history.version = outcome[0]
                for event in decision.events:
                    _fold_new(decision.schedule.history, event)
        return all_won

    async def _append_one(self, schedule: Schedule, events: list[NewEvent]) -> bool:
        return await self._commit([_Decision(schedule, events, [])])

    async def _publish(self, triggers: list[SlotTrigger]) -> None:
        if not triggers:
            return
        # Pipelined: every message is sent before the first acknowledgement is awaited.
        pending = [
            self._js.publish_async(t.subject, t.body, headers={"Nats-Msg-Id": t.idempotency_key}) for t in triggers
        ]
        results = await asyncio.gather(*pending, return_exceptions=True)
        for trigger, result in zip(triggers, results, strict=True):
            if isinstance(result, BaseException):
                # Recorded but not published: the next start republishes recent fires.
                log.error("publishing %s failed: %s", trigger.idempotency_key, result)

    def _plan_next(self, schedule: Schedule) -> None:
        if self.schedules.get(schedule.key) is not schedule or schedule.control == "paused":
            schedule.next_due = None
            return
        after = schedule.history.anchor() or self._clock()
        schedule.next_due = schedule.cron.next_fire(after)
        schedule.prepared = None
        if schedule.next_due is not None:
            schedule.prepared = slot_trigger(
                self.subjects, schedule.tenant, schedule.pipeline, schedule.trigger_type, schedule.next_due,
                schedule.spec.payload,
            )
            heapq.heappush(self._heap, (schedule.next_due, schedule.tenant, schedule.pipeline))
        self._wake.set()

    # --- history ---------------------------------------------------------------------------
    async def _load_history(self, schedule: Schedule) -> ScheduleHistory:
        return fold_history(await self.store.read_stream(schedule.stream_id))

    async def _reload(self, schedule: Schedule) -> None:
        newer = await self.store.read_stream(schedule.stream_id, from_version=schedule.history.version + 1)
        fold_history(newer, schedule.history)

    async def _republish_recent(self, schedule: Schedule) -> None:
        """Publish again the fires of the last couple of minutes: one may have been recorded but not sent.

        A fire claimed for a slot still ahead is queued for its due time instead.
        """
        now = self._clock()
        horizon = now - self._republish_horizon
        recent = [
            slot_trigger(
                self.subjects, f.tenant, f.pipeline, f.trigger_type, f.slot, schedule.spec.payload,
                with_slice=f.slice_key is not None,
            )
            for f in schedule.history.recent_fires
            if f.fired_at >= horizon
        ]
        for trigger in recent:
            if trigger.slot > now:
                heapq.heappush(self._outbox, (trigger.slot, trigger.idempotency_key, trigger))
        await self._publish([t for t in recent if t.slot <= now])

    def _event(self, data: EventData, now: datetime, correlation_id: str | None = None) -> NewEvent:
        return data.to_event(EventMetadata(actor=self.name, correlation_id=correlation_id), recorded_at=now)


def _fold_new(history: ScheduleHistory, event: NewEvent) -> None:
    """Fold an event this replica just appended, without reading it back."""
    from baton.events.envelope import StoredEvent

    history.apply(
        StoredEvent(
            position=0, event_id=event.event_id, stream_id="schedule-", stream_type="schedule",
            stream_version=history.version, tenant="", type=event.type, schema_version=event.schema_version,
            data=event.data, metadata=event.metadata, recorded_at=event.recorded_at,
        )
    )


def _parse_definition(
    tenant: str, name: str, value: bytes | None
) -> tuple[int, PipelineDefinition, ScheduleSpec] | None:
    """The (version, definition, schedule) of a KV value when it has an enabled schedule, else None."""
    if value is None:
        return None
    try:
        body: Any = json.loads(value)
        definition = PipelineDefinition.model_validate(body["definition"])
        version = int(body["version"])
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        log.error("ignoring malformed definition entry %s/%s: %s", tenant, name, exc)
        return None
    spec = definition.schedule
    if spec is None or not spec.enabled or not definition.enabled:
        return None
    return version, definition, spec
