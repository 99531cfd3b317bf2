"""Cron schedules against real NATS and PostgreSQL: fires, missed-fire policies, replicas, live changes.

Most tests inject a clock the test moves by hand (``FakeClock``), so "two slots pass while
the scheduler is down" takes no wall-clock time; triggers are read back from the TRIGGERS
stream and decisions from the schedule's event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events import bus
from baton.events.catalogue import parse_event
from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.postgres_store import PostgresEventStore
from baton.events.stream_ids import schedule_stream
from baton.events.subjects import Subjects
from baton.scheduler.schedules import ScheduleService
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

TENANT = "acme"
T0 = datetime(2030, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)  # half a second past a whole second
LEAD = timedelta(milliseconds=300)  # slots are claimed 0.3 s ahead: the fake clock's steps decide exactly one


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def pipeline_document(name: str, **schedule: Any) -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"type": "tick.tock"},
        "steps": [{"name": "noop", "type": "action", "uses": "shell", "with": {"command": "true"}}],
        "schedule": {"cron": ["* * * * * *"], **schedule},
    }


@dataclass
class Env:
    """The test's NATS and database, and helpers to drive schedulers against them."""

    js: JetStreamContext
    kv: KeyValue
    engine: AsyncEngine
    subjects: Subjects
    store: PostgresEventStore
    stack: contextlib.AsyncExitStack
    services: list[ScheduleService] = field(default_factory=list)

    def nudge(self) -> None:
        """Wake every replica (after the fake clock moved)."""
        for service in self.services:
            service.nudge()

    async def put_pipeline(self, document: dict[str, Any], version: int = 1) -> None:
        key = self.subjects.definition_key("pipeline", TENANT, document["name"])
        body = {"tenant": TENANT, "name": document["name"], "version": version, "definition": document}
        await self.kv.put(key, json.dumps(body).encode())

    async def put_control(self, pipeline: str, state: str) -> None:
        key = self.subjects.definition_key("control", TENANT, pipeline)
        await self.kv.put(key, json.dumps({"state": state}).encode())

    async def start(
        self, clock: Callable[[], datetime], **options: Any
    ) -> tuple[ScheduleService, Callable[[], Awaitable[None]]]:
        """Start a scheduler replica; it stops when the test ends, or when the returned coroutine is awaited."""
        service = ScheduleService(self.js, self.engine, self.subjects, clock=clock, **options)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        self.services.append(service)

        async def finish() -> None:
            stop.set()
            await asyncio.wait_for(task, 10)

        self.stack.push_async_callback(finish)
        await wait_for(service.ready.is_set, message="scheduler loaded the definitions")
        return service, finish

    async def triggers(self) -> list[dict[str, Any]]:
        """Every message in the TRIGGERS stream, in order, as JSON with its Nats-Msg-Id."""
        info = await self.js.stream_info(self.subjects.triggers_stream)
        count = info.state.messages
        if not count:
            return []
        sub = await self.js.pull_subscribe(
            self.subjects.trigger_wildcard, stream=self.subjects.triggers_stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        found: list[dict[str, Any]] = []
        try:
            while len(found) < count:
                for msg in await sub.fetch(count - len(found), timeout=5):
                    found.append({**json.loads(msg.data), "msg_id": (msg.headers or {}).get("Nats-Msg-Id")})
                    await msg.ack()
        finally:
            await sub.unsubscribe()
        return found

    async def schedule_events(self, pipeline: str) -> list[tuple[str, dict[str, Any]]]:
        events = await self.store.read_stream(schedule_stream(TENANT, pipeline))
        return [(e.type, parse_event(e).model_dump(mode="json")) for e in events]

    async def fired_slots(self, pipeline: str) -> list[str]:
        return [data["slot"] for kind, data in await self.schedule_events(pipeline) if kind == "schedule_fired"]


@pytest.fixture
async def env(database_url: str, nats_url: str, subject_prefix: str) -> AsyncIterator[Env]:
    subjects = Subjects(subject_prefix)
    engine = make_engine(database_url, pool_size=4)
    await migrate(engine)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js, subjects)
    kv = await bus.definitions_bucket(js, subjects)
    try:
        async with contextlib.AsyncExitStack() as stack:
            yield Env(js, kv, engine, subjects, PostgresEventStore(engine), stack)
    finally:
        await nc.close()
        await engine.dispose()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def whole(seconds: int) -> datetime:
    """T0's second plus ``seconds`` whole seconds (slot times of an every-second schedule)."""
    return T0.replace(microsecond=0) + timedelta(seconds=seconds)


async def test_every_second_schedule_publishes_triggers_with_their_slot(env: Env) -> None:
    await env.put_pipeline(pipeline_document("ticker", payload={"source": "cron"}))
    started = datetime.now(UTC)
    await env.start(lambda: datetime.now(UTC))

    triggers = await wait_for(
        lambda: _at_least(env.triggers(), 3), timeout=15, message="three every-second triggers"
    )
    slots = [datetime.fromisoformat(t["scheduled_at"]) for t in triggers]
    assert all(s.microsecond == 0 and s > started for s in slots)
    assert [b - a for a, b in itertools.pairwise(slots)] == [timedelta(seconds=1)] * (len(slots) - 1)
    first = triggers[0]
    assert first["pipeline"] == "ticker"
    assert first["triggered_by"] == "schedule" and first["source"] == "scheduler"
    assert first["payload"] == {"source": "cron"}
    assert first["idempotency_key"] == f"schedule:ticker:{iso(slots[0])}" == first["msg_id"]
    assert "slice_key" not in first  # on-time fires have no slice
    fired = await env.fired_slots("ticker")
    assert [iso(s) for s in slots] == fired[: len(slots)]


async def _at_least(pending: Any, count: int) -> Any:
    found = await pending
    return found if len(found) >= count else None


@pytest.mark.parametrize(("policy", "expected"), [("catch_up", [2, 3]), ("skip", []), ("latest", [3])])
async def test_restart_across_two_slots_follows_the_missed_policy(env: Env, policy: str, expected: list[int]) -> None:
    clock = FakeClock(T0)
    await env.put_pipeline(pipeline_document("nightly", missed=policy))
    _, stop = await env.start(clock, misfire_grace=timedelta(milliseconds=200), fire_lead=LEAD)
    first = await wait_for(lambda: _first_event(env, "nightly", "schedule_activated"), message="activation")
    assert first["since"] == iso(T0)

    clock.advance(0.6)  # 00:00:01.1: slot 00:00:01 is due (within the grace: on time)
    env.nudge()
    await wait_for(lambda: _count(env.triggers(), 1), message="slot 1 fires on time")
    await stop()  # the scheduler goes down ...

    clock.advance(2.4)  # ... over slots 2 and 3 (00:00:03.5 now; slot 3 is older than the grace)
    await env.start(clock, misfire_grace=timedelta(milliseconds=200), fire_lead=LEAD)

    async def decided() -> bool:
        events = await env.schedule_events("nightly")
        return any(
            (kind == "schedule_fired" and data["slot"] == iso(whole(3)))
            or (kind == "schedule_skipped" and data["last_slot"] == iso(whole(3)))
            for kind, data in events
        )

    await wait_for(decided, message="the missed slots are decided")
    triggers = await env.triggers()
    slots = [t["scheduled_at"] for t in triggers]
    assert slots == [iso(whole(n)) for n in [1, *expected]]
    late = triggers[1:]
    if policy == "catch_up":
        assert [t["slice_key"] for t in late] == [iso(whole(n)) for n in expected]
    events = await env.schedule_events("nightly")
    skipped = [data for kind, data in events if kind == "schedule_skipped"]
    if policy == "skip":
        assert [(s["first_slot"], s["last_slot"], s["count"]) for s in skipped] == [
            (iso(whole(2)), iso(whole(3)), 2)
        ]
    if policy == "latest":
        assert [(s["first_slot"], s["count"]) for s in skipped] == [(iso(whole(2)), 1)]


async def _first_event(env: Env, pipeline: str, kind: str) -> dict[str, Any] | None:
    return next((data for k, data in await env.schedule_events(pipeline) if k == kind), None)


async def _count(pending: Any, count: int) -> Any:
    found = await pending
    return found if len(found) == count else None


async def test_two_replicas_fire_each_slot_exactly_once(env: Env) -> None:
    await env.put_pipeline(pipeline_document("shared"))
    await env.start(lambda: datetime.now(UTC), name="replica-a")
    await env.start(lambda: datetime.now(UTC), name="replica-b")

    triggers = await wait_for(lambda: _at_least(env.triggers(), 4), timeout=20, message="four slots fired")
    keys = [t["idempotency_key"] for t in triggers]
    assert len(keys) == len(set(keys)), keys  # one trigger per slot in the stream
    fired = await env.fired_slots("shared")
    assert len(fired) == len(set(fired)), fired  # one recorded fire per slot
    actors = {e.metadata.actor for e in await env.store.read_stream(schedule_stream(TENANT, "shared"))}
    assert actors <= {"replica-a", "replica-b"}
    activations = [k for k, _ in await env.schedule_events("shared") if k == "schedule_activated"]
    assert activations == ["schedule_activated"]


async def test_two_replicas_racing_on_the_same_instant(env: Env) -> None:
    clock = FakeClock(T0)
    await env.put_pipeline(pipeline_document("race", missed="catch_up"))
    for name in ("replica-a", "replica-b", "replica-c"):
        await env.start(clock, name=name, misfire_grace=timedelta(milliseconds=200), fire_lead=LEAD)
    for n in range(1, 6):
        clock.now = whole(n) + timedelta(milliseconds=50)
        env.nudge()  # every replica decides slot n at once
        await wait_for(lambda n=n: _count(env.triggers(), n), message=f"slot {n} fired")
    triggers = await env.triggers()
    assert [t["scheduled_at"] for t in triggers] == [iso(whole(n)) for n in range(1, 6)]
    assert await env.fired_slots("race") == [iso(whole(n)) for n in range(1, 6)]


async def test_paused_pipeline_does_not_fire_and_catches_up_on_resume(env: Env) -> None:
    clock = FakeClock(T0)
    await env.put_control("batch", "paused")
    await env.put_pipeline(pipeline_document("batch", missed="catch_up"))
    service, _ = await env.start(clock, misfire_grace=timedelta(milliseconds=200), fire_lead=LEAD)
    await wait_for(lambda: _first_event(env, "batch", "schedule_activated"), message="activation")
    clock.advance(2.0)  # slots 1 and 2 come due while paused
    env.nudge()
    await env.put_control("batch", "active")
    await wait_for(lambda: _count(env.triggers(), 2), message="missed slots caught up on resume")
    triggers = await env.triggers()
    assert [t["slice_key"] for t in triggers] == [iso(whole(1)), iso(whole(2))]

    await env.put_control("batch", "draining")

    async def draining_applied() -> bool:
        return all(sch.control == "draining" for key, sch in service.schedules.items() if key[1] == "batch")

    await wait_for(draining_applied, message="the scheduler saw the drain")  # before slot 3 comes due
    clock.now = whole(3) + timedelta(milliseconds=50)  # slot 3 due on time while draining
    env.nudge()
    skipped = await wait_for(lambda: _first_event(env, "batch", "schedule_skipped"), message="draining skips")
    assert skipped["reason"] == "pipeline draining" and skipped["first_slot"] == iso(whole(3))
    assert len(await env.triggers()) == 2


async def test_definition_changes_apply_without_restart(env: Env) -> None:
    await env.put_pipeline(pipeline_document("report", cron=["0 0 1 1 *"]))
    await env.start(lambda: datetime.now(UTC))
    await wait_for(lambda: _first_event(env, "report", "schedule_activated"), message="yearly schedule active")
    assert await env.triggers() == []

    await env.put_pipeline(pipeline_document("report", cron=["* * * * * *"]), version=2)
    await wait_for(lambda: _at_least(env.triggers(), 1), timeout=3, message="changed to every second")
    kinds = [k for k, _ in await env.schedule_events("report")]
    assert kinds.count("schedule_activated") == 2

    disabled = pipeline_document("report", cron=["* * * * * *"], enabled=False)
    await env.put_pipeline(disabled, version=3)
    await wait_for(lambda: _first_event(env, "report", "schedule_deactivated"), timeout=3, message="disabled")
    count = len(await env.fired_slots("report"))

    await env.put_pipeline(pipeline_document("report"), version=4)
    await wait_for(lambda: _more_fires(env, "report", count), timeout=3, message="re-enabled fires again")
    await env.kv.delete(env.subjects.definition_key("pipeline", TENANT, "report"))

    async def deleted() -> bool:
        events = await env.schedule_events("report")
        return [d["reason"] for k, d in events if k == "schedule_deactivated"][-1:] == ["pipeline deleted"]

    await wait_for(deleted, timeout=3, message="deleted")
    reasons = [d["reason"] for k, d in await env.schedule_events("report") if k == "schedule_activated"]
    assert reasons == ["created", "changed", "enabled"]


async def test_bad_definition_entries_do_not_stop_the_scheduler(env: Env) -> None:
    await env.kv.put(env.subjects.definition_key("pipeline", TENANT, "broken"), b"{not json")
    await env.kv.put(env.subjects.definition_key("control", TENANT, "broken"), b"[]")
    await env.put_pipeline(pipeline_document("fine"))
    await env.start(lambda: datetime.now(UTC))
    await wait_for(lambda: _at_least(env.triggers(), 1), timeout=5, message="the good schedule still fires")


async def _more_fires(env: Env, pipeline: str, than: int) -> bool:
    return len(await env.fired_slots(pipeline)) > than


async def test_a_claimed_slot_is_published_after_a_restart(env: Env) -> None:
    clock = FakeClock(T0)
    await env.put_pipeline(pipeline_document("claimed"))
    _, stop = await env.start(clock, fire_lead=timedelta(seconds=1))
    # 00:00:00.5: slot 1 is within the lead, so it is recorded now and published at 00:00:01.
    await wait_for(lambda: env.fired_slots("claimed"), message="slot 1 claimed ahead")
    await stop()  # down before the slot's due time: recorded, never published
    assert await env.triggers() == []

    clock.now = whole(1) + timedelta(milliseconds=100)
    await env.start(clock, fire_lead=timedelta(milliseconds=300))
    triggers = await wait_for(lambda: _count(env.triggers(), 1), message="the claimed slot goes out on restart")
    assert triggers[0]["scheduled_at"].replace("+00:00", "Z") == iso(whole(1))
    assert await env.fired_slots("claimed") == [iso(whole(1))]
