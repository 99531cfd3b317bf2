"""The relay: committed events reach JetStream in position order, exactly once per event id."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events.bus import ensure_streams
from baton.events.catalogue import RunStarted
from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.postgres_store import PostgresEventStore
from baton.events.relay import EventRelay
from baton.events.schema import checkpoints
from baton.events.store import NO_STREAM, AppendRequest
from baton.events.subjects import Subjects

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def stream_messages(nc: Client, subjects: Subjects) -> list[tuple[str, dict[str, object], str]]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.events_stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.events_stream, seq)
        found.append((msg.subject, json.loads(msg.data or b"{}"), (msg.headers or {}).get("Nats-Msg-Id", "")))
    return found


async def test_relay_publishes_in_order_and_survives_a_crash_before_its_checkpoint(
    engine: AsyncEngine, nc: Client, subject_prefix: str
) -> None:
    subjects = Subjects(subject_prefix)
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    store = PostgresEventStore(engine)
    units = [
        [AppendRequest(f"run-r{i}", "acme", [RunStarted(run_id=f"r{i}").to_event()], NO_STREAM)] for i in range(25)
    ]
    await store.append_units(units)
    relay = EventRelay(engine, js, subjects, batch_size=10)

    published = 0
    while (count := await relay.relay_once()) > 0:
        published += count
    assert published == 25

    messages = await stream_messages(nc, subjects)
    stored = await store.read_all(0, 100)
    assert [m[2] for m in messages] == [str(e.event_id) for e in stored]
    assert [m[1]["position"] for m in messages] == [e.position for e in stored]
    assert {m[0] for m in messages} == {subjects.event("acme", "run", "run_started")}

    # A crash after publishing but before the checkpoint committed: the relay starts over
    # from an older checkpoint; JetStream drops the repeats by Nats-Msg-Id.
    async with engine.begin() as conn:
        await conn.execute(update(checkpoints).where(checkpoints.c.name == "relay").values(position=0))
    while await relay.relay_once() > 0:
        pass
    assert len(await stream_messages(nc, subjects)) == 25

    await store.append_units([[AppendRequest("run-late", "acme", [RunStarted(run_id="late").to_event()], NO_STREAM)]])
    assert await relay.relay_once() == 1
    (late,) = await store.read_stream("run-late")
    assert [m[2] for m in await stream_messages(nc, subjects)][-1] == str(late.event_id)
