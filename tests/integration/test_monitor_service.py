"""The monitor service against real NATS and PostgreSQL: file, http, sql and upstream monitors, errors, replicas."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.postgres_store import PostgresEventStore
from baton.events.subjects import Subjects
from tests.helpers import wait_for
from tests.integration.monitoring import (
    fired_keys,
    monitor_settings,
    nats_client,
    put_monitor,
    put_pipeline,
    running_monitor,
    ticks,
    trigger_bodies,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresEventStore]:
    engine = make_engine(database_url, pool_size=2)
    await migrate(engine)
    try:
        yield PostgresEventStore(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def subjects(subject_prefix: str) -> Subjects:
    return Subjects(subject_prefix)


def file_monitor(directory: Path, **fields: Any) -> dict[str, Any]:
    return {"name": "landing", "type": "file", "pipeline": "ingest", "interval": 1,
            "settings": {"directory": str(directory), "glob": "*.csv"}, **fields}


async def test_each_new_file_triggers_exactly_once_across_a_restart(
    store: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str, subjects: Subjects,
    tmp_path: Path,
) -> None:
    (tmp_path / "a.csv").write_text("1")
    (tmp_path / "ignored.txt").write_text("x")
    settings = monitor_settings(database_url, nats_url, subject_prefix)
    async with nats_client(nats_url, subjects) as (nc, kv):
        await put_pipeline(kv, "ingest", "files.landed", environment="prod")
        await put_monitor(kv, file_monitor(tmp_path, payload={"team": "data"}))
        async with running_monitor(settings):
            await wait_for(lambda: _fired(store, 1), message="a.csv fired")
            (tmp_path / "b.csv").write_text("22")
            (tmp_path / "c.csv").write_text("333")
            await wait_for(lambda: _fired(store, 3), message="b.csv and c.csv fired")
            seen = len(await ticks(store, "landing"))
            await wait_for(lambda: _tick_count_above(store, seen + 1), message="two more quiet ticks")
        # A new replica resumes from the recorded cursor: nothing fires again.
        async with running_monitor(settings.model_copy(update={"replica_id": "second"})):
            before = len(await ticks(store, "landing"))
            await wait_for(lambda: _tick_count_above(store, before + 1), message="ticks after restart")
            (tmp_path / "d.csv").write_text("4444")
            await wait_for(lambda: _fired(store, 4), message="d.csv fired")
        recorded = await ticks(store, "landing")
        keys = fired_keys(recorded)
        assert len(keys) == len(set(keys)) == 4
        assert sorted(k.split(":file:")[1].split("|")[0] for k in keys) == ["a.csv", "b.csv", "c.csv", "d.csv"]
        bodies = await trigger_bodies(nc, subjects)
        assert len(bodies) == 4
        first = bodies[0]
        assert first["triggered_by"] == "monitor" and first["pipeline"] == "ingest"
        assert first["source"] == "monitor:landing" and first["environment"] == "prod"
        assert first["payload"]["team"] == "data" and first["payload"]["observation"]["file"]["name"] == "a.csv"
        quiet = [t for t in recorded if t["decision"] == "no_fire"]
        assert quiet and all(t["reason"].startswith("no new files") for t in quiet)
        assert all(t["duration_ms"] >= 0 and t["replica"] for t in recorded)


async def _fired(store: PostgresEventStore, count: int) -> bool:
    return len(fired_keys(await ticks(store, "landing"))) >= count


async def _tick_count_above(store: PostgresEventStore, count: int, name: str = "landing") -> bool:
    return len(await ticks(store, name)) > count


# --- http -------------------------------------------------------------------------------------


class _Endpoint:
    """A loopback HTTP server whose answer the test sets: (status, JSON body)."""

    def __init__(self, port: int = 0) -> None:
        self.answer: tuple[int, Any] = (200, {"ready": False})
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests += 1
                status, body = endpoint.answer
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/status"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Endpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def endpoint(port: int = 0) -> Iterator[_Endpoint]:
    with _Endpoint(port) as running:
        yield running


async def test_http_monitor_fires_on_a_json_condition_once_per_change(
    store: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str, subjects: Subjects
) -> None:
    settings = monitor_settings(database_url, nats_url, subject_prefix)
    with endpoint() as server:
        async with nats_client(nats_url, subjects) as (nc, kv):
            await put_pipeline(kv, "export", "export.ready")
            await put_monitor(kv, {
                "name": "api-ready", "type": "http", "pipeline": "export", "interval": 1,
                "settings": {"url": server.url},
                "condition": "response.status == 200 && response.json.ready == true",
            })
            async with running_monitor(settings):
                await wait_for(lambda: _tick_count_above(store, 1, "api-ready"), message="two ticks")
                assert fired_keys(await ticks(store, "api-ready")) == []
                server.answer = (200, {"ready": True, "batch": 7})
                await wait_for(lambda: _fired_count(store, "api-ready", 1), message="fired when ready")
                count = len(await ticks(store, "api-ready"))
                await wait_for(lambda: _tick_count_above(store, count + 1, "api-ready"), message="more ticks")
                assert len(fired_keys(await ticks(store, "api-ready"))) == 1  # unchanged: no refire
            bodies = await trigger_bodies(nc, subjects)
    assert [b["payload"]["observation"]["json"] for b in bodies] == [{"ready": True, "batch": 7}]
    quiet = [t for t in await ticks(store, "api-ready") if t["decision"] == "no_fire"]
    assert any("condition is false" in t["reason"] for t in quiet)
    assert any("unchanged" in t["reason"] for t in quiet)


async def test_an_unreachable_target_records_error_ticks_with_backoff_and_recovers(
    store: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str, subjects: Subjects
) -> None:
    from baton.devstack.ports import find_free_port

    port = find_free_port()
    settings = monitor_settings(database_url, nats_url, subject_prefix)
    async with nats_client(nats_url, subjects) as (_, kv):
        await put_pipeline(kv, "export", "export.ready")
        await put_monitor(kv, {"name": "flaky", "type": "http", "pipeline": "export", "interval": 1,
                               "settings": {"url": f"http://127.0.0.1:{port}/status", "timeout_ms": 500}})
        async with running_monitor(settings) as service:
            await wait_for(lambda: _errors_in_a_row(store, 3), timeout=20, message="three error ticks")
            errors = [t for t in await ticks(store, "flaky") if t["decision"] == "error"]
            assert "ConnectError" in errors[0]["error"] and errors[0]["fired"] == []
            assert [t["consecutive_errors"] for t in errors[:3]] == [1, 2, 3]
            # Backoff: the service is still alive and keeps trying; each error pushes the next check out.
            gaps = [(datetime.fromisoformat(t["next_due_at"]) - datetime.fromisoformat(t["started_at"]))
                    .total_seconds() for t in errors[:3]]
            assert gaps == sorted(gaps) and gaps[0] >= 1.0
            with endpoint(port) as server:
                server.answer = (200, {"ok": True})
                await wait_for(lambda: _fired_count(store, "flaky", 1), timeout=20, message="recovered and fired")
            assert service.ready.is_set()
    last = (await ticks(store, "flaky"))[-1]
    assert last["consecutive_errors"] == 0


async def _fired_count(store: PostgresEventStore, name: str, count: int) -> bool:
    return len(fired_keys(await ticks(store, name))) >= count


async def _errors_in_a_row(store: PostgresEventStore, count: int) -> bool:
    recorded = await ticks(store, "flaky")
    return bool(recorded) and recorded[-1]["consecutive_errors"] >= count


# --- sql --------------------------------------------------------------------------------------


async def test_sql_monitor_fires_when_the_query_reaches_the_threshold(
    store: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str, subjects: Subjects
) -> None:
    from sqlalchemy import text

    async with store.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE public.orders (id int PRIMARY KEY)"))
    settings = monitor_settings(database_url, nats_url, subject_prefix, connections={"shop": database_url})
    async with nats_client(nats_url, subjects) as (nc, kv):
        await put_pipeline(kv, "bill", "orders.batch")
        await put_monitor(kv, {"name": "orders-waiting", "type": "sql", "pipeline": "bill", "interval": 1,
                               "connection": "shop", "threshold": 2,
                               "settings": {"query": "SELECT count(*) AS n FROM public.orders"}})
        async with running_monitor(settings):
            async with store.engine.begin() as conn:
                await conn.execute(text("INSERT INTO public.orders VALUES (1)"))
            await wait_for(lambda: _reason_seen(store, "orders-waiting", "1 < threshold 2"), message="below")
            async with store.engine.begin() as conn:
                await conn.execute(text("INSERT INTO public.orders VALUES (2), (3)"))
            await wait_for(lambda: _fired_count(store, "orders-waiting", 1), message="fired at 3 rows")
            count = len(await ticks(store, "orders-waiting"))
            await wait_for(lambda: _tick_count_above(store, count + 1, "orders-waiting"), message="more ticks")
        bodies = await trigger_bodies(nc, subjects)
    assert len(bodies) == 1 and bodies[0]["payload"]["observation"]["value"] == 3


async def _reason_seen(store: PostgresEventStore, name: str, fragment: str) -> bool:
    return any(fragment in t["reason"] for t in await ticks(store, name))


# --- replicas ---------------------------------------------------------------------------------


async def test_two_replicas_split_the_monitors_and_never_evaluate_one_at_the_same_time(
    store: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str, subjects: Subjects,
    tmp_path: Path,
) -> None:
    names = [f"m{i}" for i in range(12)]
    async with nats_client(nats_url, subjects) as (nc, kv):
        await put_pipeline(kv, "ingest", "files.landed")
        for name in names:
            folder = tmp_path / name
            folder.mkdir()
            (folder / "one.csv").write_text(name)
            await put_monitor(kv, {**file_monitor(folder), "name": name})
        first = monitor_settings(database_url, nats_url, subject_prefix, replica_id="alpha")
        second = monitor_settings(database_url, nats_url, subject_prefix, replica_id="beta")
        async with running_monitor(first) as alpha:
            async with running_monitor(second) as beta:
                await wait_for(lambda: _all_ticked_by(store, names, "beta", "alpha"), timeout=30,
                               message="both replicas evaluate monitors")
                assert alpha.leases.held_slots.isdisjoint(beta.leases.held_slots)
            # beta stopped cleanly: alpha takes every monitor over.
            mark = {name: len(await ticks(store, name)) for name in names}
            await wait_for(lambda: _all_ticked_since(store, names, mark, "alpha"), timeout=30,
                           message="alpha took over beta's monitors")
        bodies = await trigger_bodies(nc, subjects)
    per_monitor = {name: await ticks(store, name) for name in names}
    for name, recorded in per_monitor.items():
        spans = sorted(
            (datetime.fromisoformat(t["started_at"]).timestamp(),
             datetime.fromisoformat(t["started_at"]).timestamp() + t["duration_ms"] / 1000, t["replica"])
            for t in recorded
        )
        for (_, end, who), (start, _, other) in itertools.pairwise(spans):
            assert start >= end or who == other, f"{name}: {who} and {other} overlapped"
        assert len(fired_keys(recorded)) == 1, f"{name} fired {fired_keys(recorded)}"
    assert len(bodies) == len(names)


async def _all_ticked_by(store: PostgresEventStore, names: list[str], *replicas: str) -> bool:
    seen: set[str] = set()
    for name in names:
        recorded = await ticks(store, name)
        if not recorded:
            return False
        seen.update(t["replica"] for t in recorded)
    return seen >= set(replicas)


async def _all_ticked_since(store: PostgresEventStore, names: list[str], mark: dict[str, int], replica: str) -> bool:
    for name in names:
        recent = (await ticks(store, name))[mark[name]:]
        if not any(t["replica"] == replica for t in recent):
            return False
    return True
