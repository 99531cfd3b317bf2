"""Durable timers in the scheduler: real NATS, real PostgreSQL, the service in this test's loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events.bus import ensure_streams
from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.subjects import Subjects
from baton.events.timers import TimerFired
from baton.scheduler.service import SchedulerService
from baton.scheduler.settings import SchedulerSettings
from baton.scheduler.timers import TimerService
from tests.helpers import wait_for
from tests.timer_helpers import (
    cancel_timer,
    due_in,
    fired_ids,
    fired_in_stream,
    raw,
    set_timer,
    stream_messages,
)

pytestmark = pytest.mark.integration

RunningScheduler = Callable[[], AbstractAsyncContextManager[TimerService]]


@pytest.fixture
def subjects(subject_prefix: str) -> Subjects:
    return Subjects(subject_prefix)


@pytest.fixture
def settings(database_url: str, nats_url: str, subject_prefix: str) -> SchedulerSettings:
    return SchedulerSettings(
        database_url=database_url, nats_url=nats_url, subject_prefix=subject_prefix, timer_poll_seconds=0.5
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NatsClient]:
    """A plain nats-py client playing the runner's part."""
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def js(client: NatsClient, subjects: Subjects) -> JetStreamContext:
    js = client.jetstream()
    await ensure_streams(js, subjects)
    return js


@pytest.fixture
def running_scheduler(settings: SchedulerSettings) -> RunningScheduler:
    """Start a scheduler replica in this loop; on exit, stop it and require a clean finish."""

    @asynccontextmanager
    async def start() -> AsyncIterator[TimerService]:
        service = SchedulerService(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        try:
            await wait_for(lambda: service.components or task.done(), timeout=30, message="scheduler never started")
            if task.done():
                task.result()  # surface a start-up failure
            timers = service.components[0]
            assert isinstance(timers, TimerService)
            yield timers
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    return start


async def fired_count_is(js: JetStreamContext, subjects: Subjects, count: int) -> list[TimerFired]:
    """Wait until ``count`` fires are stored on the stream, then return them."""

    async def enough() -> list[TimerFired] | None:
        fired = await fired_in_stream(js, subjects)
        return fired if len(fired) >= count else None

    return await wait_for(enough, timeout=20, interval=0.05, message=f"{count} timers fired")


async def timer_row(engine: AsyncEngine, timer_id: str) -> dict[str, object] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT * FROM scheduler_timers WHERE timer_id = :t"), {"t": timer_id})
        ).mappings().first()
    return dict(row) if row else None


async def test_a_timer_fires_at_about_its_due_time_with_its_payload(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects, engine: AsyncEngine
) -> None:
    async with running_scheduler():
        due = due_in(0.4)
        await set_timer(js, subjects, "run-1:delay:wait", due, {"run_id": "run-1", "purpose": "delay"})
        [fired] = await fired_count_is(js, subjects, 1)

    assert fired.timer_id == "run-1:delay:wait"
    assert fired.tenant == "acme"
    assert fired.payload == {"run_id": "run-1", "purpose": "delay"}
    assert fired.due_at == due
    # Never early; how late is the benchmark's business, this only rules out "much later".
    assert timedelta(0) <= fired.fired_at - fired.due_at < timedelta(seconds=5)
    row = await timer_row(engine, "run-1:delay:wait")
    assert row is not None and row["fired_at"] is not None and not row["canceled"]


async def test_cancel_prevents_the_fire(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects
) -> None:
    async with running_scheduler():
        await set_timer(js, subjects, "doomed", due_in(0.3))
        await cancel_timer(js, subjects, "doomed")
        await set_timer(js, subjects, "sentinel", due_in(0.6))  # due later: once it fired, "doomed" had its chance
        fired = await fired_count_is(js, subjects, 1)
    assert fired_ids(fired) == ["sentinel"]


async def test_a_set_after_its_cancel_stays_canceled(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects, engine: AsyncEngine
) -> None:
    # Two replicas may process a cancel before the set it cancels: the tombstone wins.
    await cancel_timer(js, subjects, "late-set")
    await set_timer(js, subjects, "late-set", due_in(-1))
    await set_timer(js, subjects, "sentinel", due_in(0.3))
    async with running_scheduler():
        fired = await fired_count_is(js, subjects, 1)
    assert fired_ids(fired) == ["sentinel"]
    row = await timer_row(engine, "late-set")
    assert row is not None and row["canceled"] and row["fired_at"] is None


async def test_a_duplicate_set_fires_once_even_after_the_fire(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects
) -> None:
    async with running_scheduler() as timers:
        # Different Nats-Msg-Ids, so JetStream does not drop the repeat: the scheduler must.
        await set_timer(js, subjects, "twice", due_in(0.3), msg_id="set:twice")
        await set_timer(js, subjects, "twice", due_in(0.3), msg_id="set:twice-again")
        await fired_count_is(js, subjects, 1)
        await set_timer(js, subjects, "twice", due_in(0), msg_id="set:twice-after-fire")
        await set_timer(js, subjects, "sentinel", due_in(0.2))
        fired = await fired_count_is(js, subjects, 2)
        assert timers.fired == 2  # counted at publish: a repeat absorbed by JetStream would still show here
    assert fired_ids(fired) == ["twice", "sentinel"]


async def test_timers_set_while_the_scheduler_is_down_fire_when_it_starts(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects
) -> None:
    await set_timer(js, subjects, "overdue", due_in(-5))
    await set_timer(js, subjects, "soon", due_in(1.0))
    async with running_scheduler():
        fired = await fired_count_is(js, subjects, 2)
    assert fired_ids(fired) == ["overdue", "soon"]


async def test_pending_timers_survive_a_restart(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects, engine: AsyncEngine
) -> None:
    async with running_scheduler():
        await set_timer(js, subjects, "across-restart", due_in(2.0))
        await wait_for(lambda: timer_row(engine, "across-restart"), message="timer stored")
    assert await fired_in_stream(js, subjects) == []  # stopped before it was due
    async with running_scheduler():
        [fired] = await fired_count_is(js, subjects, 1)
    assert fired.timer_id == "across-restart"
    assert fired.fired_at >= fired.due_at


async def test_two_replicas_fire_each_timer_exactly_once(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects, engine: AsyncEngine
) -> None:
    async with running_scheduler() as first, running_scheduler() as second:
        for i in range(50):
            await set_timer(js, subjects, f"t{i:02d}", due_in(0.3 + i * 0.02))
        fired = await fired_count_is(js, subjects, 50)

        async def all_marked() -> bool:
            async with engine.connect() as conn:
                pending = await conn.execute(text("SELECT count(*) FROM scheduler_timers WHERE fired_at IS NULL"))
                return pending.scalar_one() == 0

        await wait_for(all_marked, message="every timer marked fired")
        published = first.fired + second.fired
    assert sorted(fired_ids(fired)) == [f"t{i:02d}" for i in range(50)]
    assert len(fired) == 50
    assert published == 50  # not one repeat, even one JetStream would have absorbed


async def test_malformed_requests_are_dead_lettered_and_the_service_carries_on(
    running_scheduler: RunningScheduler, js: JetStreamContext, subjects: Subjects
) -> None:
    await js.publish(subjects.timer_set, b"{not json", headers={"Nats-Msg-Id": "bad-json"})
    await js.publish(subjects.timer_set, raw({"timer_id": "no-due", "tenant": "acme"}), headers={"Nats-Msg-Id": "b2"})
    await js.publish(
        subjects.timer_set,
        raw({"timer_id": "nul", "tenant": "acme", "due_at": "2030-01-01T00:00:00Z", "payload": {"x": "a\u0000b"}}),
        headers={"Nats-Msg-Id": "b3"},
    )
    await js.publish(subjects.timer_cancel, raw({"id": "wrong-field"}), headers={"Nats-Msg-Id": "b4"})
    async with running_scheduler():
        await set_timer(js, subjects, "after-the-bad-ones", due_in(0.2))
        fired = await fired_count_is(js, subjects, 1)

        async def dead_letters() -> list[tuple[bytes, dict[str, str]]] | None:
            found = await stream_messages(js, subjects.dlq_stream, subjects.dlq("timer"))
            return found if len(found) >= 4 else None

        dlq = await wait_for(dead_letters, message="4 dead letters")
    assert fired_ids(fired) == ["after-the-bad-ones"]
    assert dlq[0][0] == b"{not json"
    assert {h["Baton-Reason"] for _, h in dlq} == {"invalid_timer"}
    assert all(h["Baton-Detail"] and h["Baton-Subject"] for _, h in dlq)
    assert "NUL" in dlq[2][1]["Baton-Detail"]
