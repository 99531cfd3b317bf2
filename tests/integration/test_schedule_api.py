"""Schedules through the API: backfill (48 hourly slots, repeated), the schedule list and a history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.postgres_store import PostgresEventStore
from baton.events.stream_ids import schedule_stream
from baton.scheduler.schedules import ScheduleService
from tests.helpers import wait_for
from tests.integration.test_api import Api, api_settings, running_api

pytestmark = pytest.mark.integration

TENANT = "acme"
BASE = f"/v1/tenants/{TENANT}"


def scheduled(cron: str, **schedule: Any) -> dict[str, Any]:
    return {
        "trigger": {"type": "reports.due"},
        "steps": [{"name": "noop", "type": "action", "uses": "shell", "with": {"command": "true"}}],
        "schedule": {"cron": cron, **schedule},
    }


@pytest.fixture
async def api(database_url: str, nats_url: str, subject_prefix: str) -> AsyncIterator[Api]:
    engine = make_engine(database_url, pool_size=2)
    await migrate(engine)
    try:
        async with running_api(api_settings(database_url, nats_url, subject_prefix), PostgresEventStore(engine)) as a:
            yield a
    finally:
        await engine.dispose()


async def stream_triggers(api: Api) -> list[dict[str, Any]]:
    js = api.app.state.resources.js
    count = (await js.stream_info(api.subjects.triggers_stream)).state.messages
    if not count:
        return []
    sub = await js.pull_subscribe(
        api.subjects.trigger_wildcard, stream=api.subjects.triggers_stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    found: list[dict[str, Any]] = []
    try:
        while len(found) < count:
            found.extend(json.loads(m.data) for m in await sub.fetch(count - len(found), timeout=5))
    finally:
        await sub.unsubscribe()
    return found


async def test_backfill_48_hourly_slots_once_and_repeating_adds_none(api: Api) -> None:
    assert (await api.client.put(f"{BASE}/pipelines/hourly", json=scheduled("0 * * * *"))).status_code == 201
    body = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-02T23:00:00Z", "rate": 500}

    first = await api.client.post(f"{BASE}/pipelines/hourly/backfill", json=body)
    assert first.status_code == 202, first.text
    result = first.json()
    assert (result["count"], result["published"], result["duplicates"]) == (48, 48, 0)

    triggers = await stream_triggers(api)
    assert len(triggers) == 48
    slices = [t["slice_key"] for t in triggers]
    assert len(set(slices)) == 48
    assert slices[0] == "2025-01-01T00:00:00Z" and slices[-1] == "2025-01-02T23:00:00Z"
    assert {t["pipeline"] for t in triggers} == {"hourly"}
    assert all(t["idempotency_key"] == f"backfill:hourly:{t['slice_key']}" for t in triggers)
    assert all(t["scheduled_at"].replace("+00:00", "Z") == t["slice_key"] for t in triggers)

    again = await api.client.post(f"{BASE}/pipelines/hourly/backfill", json=body)
    assert again.status_code == 202
    assert (again.json()["published"], again.json()["duplicates"]) == (0, 48)
    assert len(await stream_triggers(api)) == 48
    assert [s["trigger_id"] for s in again.json()["slots"]] == [s["trigger_id"] for s in result["slots"]]

    await api.caught_up()
    history = (await api.client.get(f"{BASE}/schedules/hourly/history")).json()
    assert [e["kind"] for e in history["entries"]] == ["backfilled", "backfilled"]
    assert history["entries"][0]["count"] == 48


async def test_backfill_is_refused_clearly(api: Api) -> None:
    no_schedule = scheduled("0 * * * *")
    del no_schedule["schedule"]
    assert (await api.client.put(f"{BASE}/pipelines/plain", json=no_schedule)).status_code == 201
    assert (await api.client.put(f"{BASE}/pipelines/minutely", json=scheduled("* * * * *"))).status_code == 201
    window = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-02T00:00:00Z"}
    missing = await api.client.post(f"{BASE}/pipelines/nope/backfill", json=window)
    assert missing.status_code == 404
    plain = await api.client.post(f"{BASE}/pipelines/plain/backfill", json=window)
    assert plain.status_code == 409 and "no schedule" in plain.json()["detail"]
    backwards = await api.client.post(
        f"{BASE}/pipelines/minutely/backfill", json={"from": window["to"], "to": window["from"]}
    )
    assert backwards.status_code == 422 and "before" in backwards.json()["detail"]
    huge = await api.client.post(
        f"{BASE}/pipelines/minutely/backfill", json={"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"}
    )
    assert huge.status_code == 422 and "smaller" in huge.json()["detail"]
    assert await stream_triggers(api) == []


async def test_schedule_list_shows_next_fires_and_last_outcome(api: Api, database_url: str, nats_url: str) -> None:
    put = await api.client.put(f"{BASE}/pipelines/ticker", json=scheduled("* * * * * *", timezone="Europe/Berlin"))
    assert put.status_code == 201
    put = await api.client.put(f"{BASE}/pipelines/yearly", json=scheduled("0 0 1 1 *", enabled=False))
    assert put.status_code == 201

    engine = make_engine(database_url, pool_size=2)
    nc = await nats.connect(nats_url)
    stop = asyncio.Event()
    service = ScheduleService(nc.jetstream(), engine, api.subjects)
    task = asyncio.create_task(service.run(stop))
    try:
        store = PostgresEventStore(engine)

        async def fired() -> bool:
            events = await store.read_stream(schedule_stream(TENANT, "ticker"))
            return any(e.type == "schedule_fired" for e in events)

        await wait_for(fired, timeout=10, message="the every-second schedule fired")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await nc.close()
        await engine.dispose()

    await api.caught_up()
    listing = (await api.client.get(f"{BASE}/schedules")).json()["schedules"]
    assert [s["pipeline"] for s in listing] == ["ticker", "yearly"]
    ticker, yearly = listing
    assert ticker["timezone"] == "Europe/Berlin" and ticker["enabled"]
    now = datetime.now(UTC)
    nexts = [datetime.fromisoformat(n.replace("Z", "+00:00")) for n in ticker["next_fires"]]
    assert len(nexts) == 3 and nexts[0] > now - timedelta(seconds=1)
    assert ticker["last_outcome"]["kind"] == "fired" and ticker["fires"] >= 1
    assert yearly["enabled"] is False and yearly["next_fires"] == [] and yearly["last_outcome"] is None

    history = (await api.client.get(f"{BASE}/schedules/ticker/history", params={"limit": 500})).json()
    kinds = [e["kind"] for e in history["entries"]]
    assert kinds[-1] == "activated" and "fired" in kinds
    fired_entry = next(e for e in history["entries"] if e["kind"] == "fired")
    assert fired_entry["fire_kind"] == "on_time" and fired_entry["trigger_id"]
    assert (await api.client.get("/v1/tenants/other/schedules/ticker/history")).status_code == 404
    assert (await api.client.get("/v1/tenants/other/schedules")).json() == {"schedules": []}
