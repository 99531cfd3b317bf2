"""Event store contract: the in-memory and PostgreSQL stores pass the same tests.

The PostgreSQL-only tests cover what only a real database can show: concurrent
appenders from separate connections, and a tail that never skips a late commit.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from baton.events.catalogue import RunStarted
from baton.events.db import make_engine
from baton.events.envelope import NewEvent
from baton.events.memory_store import InMemoryEventStore
from baton.events.migrations import migrate
from baton.events.postgres_store import PostgresEventStore
from baton.events.store import (
    ANY_VERSION,
    NO_STREAM,
    AppendRequest,
    EventStore,
    WrongExpectedVersion,
    append,
    append_unit,
)

pytestmark = pytest.mark.integration


def ev(n: int = 0) -> NewEvent:
    return RunStarted(run_id=f"r{n}").to_event()


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        yield InMemoryEventStore()
        return
    database_url = request.getfixturevalue("database_url")
    engine = make_engine(database_url)
    await migrate(engine)
    yield PostgresEventStore(engine, notify_channel="test_events")
    await engine.dispose()


@pytest.fixture
async def pg_store(database_url: str) -> AsyncIterator[PostgresEventStore]:
    engine = make_engine(database_url, pool_size=20)
    await migrate(engine)
    yield PostgresEventStore(engine)
    await engine.dispose()


async def test_append_and_read_stream(store: EventStore) -> None:
    assert await append(store, "run-a", "acme", [ev(1), ev(2)], NO_STREAM) == 2
    assert await append(store, "run-a", "acme", [ev(3)], 2) == 3
    events = await store.read_stream("run-a")
    assert [e.stream_version for e in events] == [1, 2, 3]
    assert [e.data["run_id"] for e in events] == ["r1", "r2", "r3"]
    assert {e.stream_type for e in events} == {"run"}
    assert [e.stream_version for e in await store.read_stream("run-a", from_version=3)] == [3]
    assert await store.read_stream("run-missing") == []


async def test_expected_version_conflict_is_typed(store: EventStore) -> None:
    await append(store, "run-a", "acme", [ev()], NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as caught:
        await append(store, "run-a", "acme", [ev()], NO_STREAM)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    with pytest.raises(WrongExpectedVersion):
        await append(store, "run-a", "acme", [ev()], 5)
    assert await append(store, "run-a", "acme", [ev()], ANY_VERSION) == 2


async def test_units_are_all_or_nothing_and_independent(store: EventStore) -> None:
    await append(store, "run-taken", "acme", [ev()], NO_STREAM)
    outcomes = await store.append_units(
        [
            [AppendRequest("trigger-1", "acme", [ev()], NO_STREAM), AppendRequest("run-1", "acme", [ev()], NO_STREAM)],
            [AppendRequest("trigger-2", "acme", [ev()], NO_STREAM), AppendRequest("run-taken", "acme", [ev()], 0)],
            [AppendRequest("run-3", "acme", [ev(), ev()], NO_STREAM)],
        ]
    )
    assert outcomes[0] == [1, 1]
    assert isinstance(outcomes[1], WrongExpectedVersion)
    assert outcomes[2] == [2]
    assert await store.read_stream("trigger-2") == []  # the refused unit left nothing behind
    assert len(await store.read_stream("run-taken")) == 1


async def test_same_stream_twice_in_one_unit_chains_versions(store: EventStore) -> None:
    versions = await append_unit(
        store, [AppendRequest("run-x", "acme", [ev()], NO_STREAM), AppendRequest("run-x", "acme", [ev()], 1)]
    )
    assert versions == [1, 2]


async def test_read_all_in_position_order(store: EventStore) -> None:
    for i in range(5):
        await append(store, f"run-{i}", "acme", [ev(i), ev(i)], NO_STREAM)
    first = await store.read_all(0, limit=4)
    rest = await store.read_all(first[-1].position, limit=100)
    positions = [e.position for e in first + rest]
    assert positions == sorted(positions) and len(positions) == 10
    assert await store.head_position() == positions[-1]


async def test_concurrent_appenders_one_winner_per_version(pg_store: PostgresEventStore) -> None:
    await append(pg_store, "run-hot", "acme", [ev()], NO_STREAM)

    async def contender(i: int) -> bool:
        try:
            await append(pg_store, "run-hot", "acme", [ev(i)], 1)
            return True
        except WrongExpectedVersion:
            return False

    results = await asyncio.gather(*(contender(i) for i in range(10)))
    assert results.count(True) == 1
    assert [e.stream_version for e in await pg_store.read_stream("run-hot")] == [1, 2]


async def test_tail_under_concurrent_commits_loses_nothing(pg_store: PostgresEventStore) -> None:
    """Eight writers commit concurrently while a reader tails by position: it sees every event."""
    writers, per_writer = 8, 40
    written: set[str] = set()
    seen: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def writer(w: int) -> None:
        rng = random.Random(w)
        for i in range(per_writer):
            events = [ev(i) for _ in range(rng.randint(1, 3))]
            await append(pg_store, f"run-w{w}", "acme", events, ANY_VERSION)
            written.update(str(e.event_id) for e in events)

    async def tail() -> None:
        position = 0
        while True:
            batch = await pg_store.read_all(position, limit=7)
            for event in batch:
                seen.append((event.position, str(event.event_id)))
            if batch:
                position = batch[-1].position
            elif done.is_set():
                # One final read after all writers finished: nothing may remain.
                batch = await pg_store.read_all(position, limit=10_000)
                seen.extend((e.position, str(e.event_id)) for e in batch)
                return
            else:
                await asyncio.sleep(0)  # yield to the writers; the loop itself is the wait

    tailer = asyncio.create_task(tail())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    await asyncio.wait_for(tailer, 60)
    positions = [p for p, _ in seen]
    assert positions == sorted(positions), "tail went backwards"
    assert len(positions) == len(set(positions)), "tail saw an event twice"
    assert {eid for _, eid in seen} == written, "tail skipped events that committed late"
