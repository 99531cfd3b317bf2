"""Helpers for monitor tests: definitions in the KV bucket, a monitor replica in the test loop, reading ticks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from baton.events import bus
from baton.events.postgres_store import PostgresEventStore
from baton.events.stream_ids import monitor_ticks_stream
from baton.events.subjects import Subjects
from baton.monitor.service import MonitorService
from baton.monitor.settings import MonitorSettings

TENANT = "acme"


def monitor_settings(database_url: str, nats_url: str, prefix: str, **overrides: Any) -> MonitorSettings:
    """Settings for a test replica: short leases so handovers happen within a test's patience."""
    fields: dict[str, Any] = {
        "database_url": database_url, "nats_url": nats_url, "subject_prefix": prefix,
        "lease_ttl_seconds": 3.0, "lease_slots": 8, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0,
    }
    fields.update(overrides)
    return MonitorSettings(**fields)


@contextlib.asynccontextmanager
async def running_monitor(settings: MonitorSettings) -> AsyncIterator[MonitorService]:
    """A MonitorService in this test's loop; stopped (cleanly) on exit."""
    service = MonitorService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        ready = asyncio.ensure_future(service.ready.wait())
        done, _ = await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        assert ready in done, "monitor service did not become ready"
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def nats_client(nats_url: str, subjects: Subjects) -> AsyncIterator[tuple[NatsClient, KeyValue]]:
    """A plain client with the streams declared and the definitions bucket open."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, subjects)
        yield nc, await bus.definitions_bucket(js, subjects)
    finally:
        await nc.close()


async def put_pipeline(
    kv: KeyValue, name: str, trigger_type: str, version: int = 1, enabled: bool = True, **match: Any
) -> None:
    """Put a pipeline definition as the API would (the monitor only reads its trigger match)."""
    definition = {"name": name, "trigger": {"type": trigger_type, **match}, "enabled": enabled,
                  "steps": [{"name": "s", "type": "action", "uses": "shell", "with": {"command": "true"}}]}
    value = {"tenant": TENANT, "name": name, "version": version, "definition": definition}
    await kv.put(f"pipeline.{TENANT}.{name}", json.dumps(value).encode())


async def put_monitor(kv: KeyValue, document: dict[str, Any], version: int = 1) -> None:
    """Put a monitor definition as the API would."""
    value = {"tenant": TENANT, "name": document["name"], "version": version, "definition": document,
             "created_at": datetime.now(UTC).isoformat()}
    await kv.put(f"monitor.{TENANT}.{document['name']}", json.dumps(value).encode())


async def ticks(store: PostgresEventStore, name: str) -> list[dict[str, Any]]:
    """The data of every tick of one monitor, oldest first."""
    return [e.data for e in await store.read_stream(monitor_ticks_stream(TENANT, name))]


def fired_keys(tick_list: list[dict[str, Any]]) -> list[str]:
    """Every idempotency key fired across ticks, in order."""
    return [f["idempotency_key"] for t in tick_list for f in t["fired"]]


async def trigger_bodies(nc: NatsClient, subjects: Subjects) -> list[dict[str, Any]]:
    """Every message in the TRIGGERS stream (after JetStream's de-duplication), decoded."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.triggers_stream)
    bodies = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(subjects.triggers_stream, seq)
        bodies.append(json.loads(msg.data or b"{}"))
    return bodies
