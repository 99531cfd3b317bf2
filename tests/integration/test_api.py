"""The HTTP API against real PostgreSQL and NATS: definitions, triggers, run read models, isolation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import typer
import uvicorn
from click.testing import Result
from fastapi import FastAPI
from typer.testing import CliRunner

from baton.api.app import create_app
from baton.api.queries import projected_checkpoint
from baton.api.settings import ApiSettings
from baton.cli.client_commands import apply_command, emit_command, runs_app
from baton.events.catalogue import (
    PipelineVersionCreated,
    RunCompleted,
    RunCreated,
    RunStarted,
    StepCompleted,
    StepScheduled,
    TriggerReceived,
)
from baton.events.db import make_engine
from baton.events.envelope import EventMetadata
from baton.events.migrations import migrate
from baton.events.pipeline import PipelineDefinition
from baton.events.postgres_store import PostgresEventStore
from baton.events.store import NO_STREAM, append
from baton.events.subjects import Subjects
from baton.events.trigger import trigger_id_for
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

TENANT = "acme"
BASE = f"/v1/tenants/{TENANT}"


def pipeline_body(**overrides: Any) -> dict[str, Any]:
    """A valid pipeline in its JSON form, with top-level fields replaced by ``overrides``."""
    body: dict[str, Any] = {
        "trigger": {"type": "orders.ready"},
        "config": {"threshold": 3},
        "steps": [
            {"name": "fetch", "type": "action", "uses": "http", "with": {"url": "https://example.com/orders"}},
            {"name": "enough", "type": "condition", "if": "size(context.fetch) > 0"},
            {"name": "report", "type": "action", "uses": "shell", "with": {"command": "echo done"}},
        ],
    }
    body.update(overrides)
    return body


@dataclass
class Api:
    """A running app, a client bound to it, and the infrastructure it uses."""

    client: httpx.AsyncClient
    app: FastAPI
    settings: ApiSettings
    store: PostgresEventStore

    @property
    def subjects(self) -> Subjects:
        return self.settings.subjects

    async def caught_up(self) -> None:
        """Wait until the projector has applied every committed event."""
        head = await self.store.head_position()

        async def reached() -> bool:
            return await projected_checkpoint(self.store.engine) >= head

        await wait_for(reached, message=f"projector reaches position {head}")


@pytest.fixture
async def migrated(database_url: str) -> AsyncIterator[PostgresEventStore]:
    """The test database, migrated; a store on it for appending events directly."""
    engine = make_engine(database_url, pool_size=2)
    await migrate(engine)
    try:
        yield PostgresEventStore(engine)
    finally:
        await engine.dispose()


def api_settings(database_url: str, nats_url: str, subject_prefix: str) -> ApiSettings:
    return ApiSettings(database_url=database_url, nats_url=nats_url, subject_prefix=subject_prefix)


@contextlib.asynccontextmanager
async def running_api(settings: ApiSettings, store: PostgresEventStore) -> AsyncIterator[Api]:
    """Run the app's lifespan and hand out a client that talks to it in-process."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        yield Api(client=client, app=app, settings=settings, store=store)


@pytest.fixture
async def api(
    migrated: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str
) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url, nats_url, subject_prefix), migrated) as running:
        yield running


# --- pipelines ------------------------------------------------------------------------------


async def test_put_creates_versions_only_when_the_definition_changes(api: Api) -> None:
    first = await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body())
    assert first.status_code == 201, first.text
    assert first.json() == {"name": "orders", "version": 1, "changed": True}

    again = await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body(name="orders"))
    assert again.status_code == 200, again.text
    assert again.json() == {"name": "orders", "version": 1, "changed": False}

    changed = await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body(config={"threshold": 4}))
    assert changed.status_code == 201, changed.text
    assert changed.json() == {"name": "orders", "version": 2, "changed": True}

    # Read-your-writes: no waiting between the PUT and these GETs.
    listed = await api.client.get(f"{BASE}/pipelines")
    assert listed.status_code == 200
    (row,) = listed.json()["pipelines"]
    assert row["name"] == "orders"
    assert row["version"] == 2
    assert row["enabled"] is True
    assert row["trigger_type"] == "orders.ready"
    assert row["updated_at"]

    detail = (await api.client.get(f"{BASE}/pipelines/orders")).json()
    assert detail["version"] == 2
    assert detail["definition"]["config"] == {"threshold": 4}
    assert detail["definition"]["name"] == "orders"
    assert [v["version"] for v in detail["versions"]] == [1, 2]


async def test_pipeline_reads_are_scoped_to_the_tenant(api: Api) -> None:
    assert (await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body())).status_code == 201
    assert (await api.client.get("/v1/tenants/other/pipelines/orders")).status_code == 404
    assert (await api.client.get("/v1/tenants/other/pipelines")).json() == {"pipelines": []}
    missing = await api.client.get(f"{BASE}/pipelines/nope")
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"]


def _step(index: int, **fields: Any) -> dict[str, Any]:
    return {"name": f"s{index}", **fields}


@pytest.mark.parametrize(
    ("steps", "loc_prefix", "fragment"),
    [
        pytest.param(
            [_step(0, type="action", uses="shell", with_={}), _step(1, type="teleport")],
            ["body", "steps", 1],
            "teleport",
            id="unknown-step-type",
        ),
        pytest.param(
            [
                {"name": "a", "type": "action", "uses": "shell", "with": {"command": "true"}},
                {"name": "a", "type": "action", "uses": "shell", "with": {"command": "true"}},
            ],
            ["body", "steps"],
            "duplicate step name",
            id="duplicate-names",
        ),
        pytest.param(
            [
                {"name": "a", "type": "action", "uses": "shell", "with": {"command": "true"}},
                {"name": "check", "type": "condition", "if": "context.a >"},
            ],
            ["body", "steps", 1],
            "\"if\"",
            id="bad-cel",
        ),
        pytest.param(
            [{"name": "a", "type": "action", "uses": "carrier-pigeon", "with": {}}],
            ["body", "steps", 0],
            "uses",
            id="unknown-uses",
        ),
    ],
)
async def test_malformed_definitions_are_422_naming_the_field(
    api: Api, steps: list[dict[str, Any]], loc_prefix: list[Any], fragment: str
) -> None:
    for step in steps:  # "with" is a keyword in Python; the param table spells it with_
        if "with_" in step:
            step["with"] = step.pop("with_")
    response = await api.client.put(f"{BASE}/pipelines/broken", json=pipeline_body(steps=steps))
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(
        p["loc"][: len(loc_prefix)] == loc_prefix and fragment in p["msg"] + json.dumps(p["loc"]) for p in problems
    ), problems
    assert (await api.client.get(f"{BASE}/pipelines/broken")).status_code == 404


async def test_body_name_must_match_the_path_and_tenant_must_be_valid(api: Api) -> None:
    mismatch = await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body(name="other"))
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"][0]["loc"] == ["body", "name"]

    bad_tenant = await api.client.put("/v1/tenants/Not_OK!/pipelines/orders", json=pipeline_body())
    assert bad_tenant.status_code == 422
    assert bad_tenant.json()["detail"][0]["loc"] == ["path", "tenant"]

    not_json = await api.client.put(
        f"{BASE}/pipelines/orders", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert "Traceback" not in not_json.text


async def test_definitions_land_in_the_kv_bucket(api: Api, nats_url: str) -> None:
    await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body())
    await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body(enabled=False))
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(api.subjects.defs_bucket)
        entry = await kv.get(api.subjects.definition_key("pipeline", TENANT, "orders"))
        assert entry.value is not None
        value = json.loads(entry.value)
    finally:
        await nc.close()
    assert value["tenant"] == TENANT
    assert value["name"] == "orders"
    assert value["version"] == 2
    assert value["definition"]["enabled"] is False
    assert PipelineDefinition.model_validate(value["definition"]).name == "orders"


async def test_start_up_republishes_definitions_missing_from_the_bucket(
    migrated: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str
) -> None:
    """A crash between the append and the bucket put is healed when the API starts."""
    document = PipelineDefinition.model_validate({**pipeline_body(), "name": "late"}).to_document()
    event = PipelineVersionCreated(tenant=TENANT, name="late", version=1, definition=document).to_event(
        metadata=EventMetadata(actor="api")
    )
    await append(migrated, f"pipeline-{TENANT}.late", TENANT, [event], NO_STREAM)
    settings = api_settings(database_url, nats_url, subject_prefix)
    async with running_api(settings, migrated):
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value(settings.subjects.defs_bucket)
            entry = await kv.get(settings.subjects.definition_key("pipeline", TENANT, "late"))
        finally:
            await nc.close()
    assert entry.value is not None
    assert json.loads(entry.value)["version"] == 1


# --- triggers -------------------------------------------------------------------------------


async def test_post_trigger_publishes_on_the_trigger_subject(api: Api, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    received: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()

    async def collect(msg: nats.aio.msg.Msg) -> None:
        await received.put(msg)

    try:
        await nc.subscribe(api.subjects.trigger(TENANT, "orders.ready"), cb=collect)
        await nc.flush()
        body = {"type": "orders.ready", "payload": {"order": 42}, "idempotency_key": "order-42"}
        first = await api.client.post(f"{BASE}/triggers", json=body)
        assert first.status_code == 202, first.text
        assert first.json() == {"trigger_id": trigger_id_for(TENANT, "order-42"), "idempotency_key": "order-42"}
        msg = await asyncio.wait_for(received.get(), timeout=5)
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == "order-42"
        published = json.loads(msg.data)
        assert published["type"] == "orders.ready"
        assert published["tenant"] == TENANT
        assert published["source"] == "webhook"
        assert published["triggered_by"] == "webhook"
        assert published["payload"] == {"order": 42}
        assert published["idempotency_key"] == "order-42"

        again = await api.client.post(f"{BASE}/triggers", json=body)
        assert again.json()["trigger_id"] == first.json()["trigger_id"]

        fresh = (await api.client.post(f"{BASE}/triggers", json={"type": "orders.ready"})).json()
        assert fresh["trigger_id"] == trigger_id_for(TENANT, fresh["idempotency_key"])
        assert fresh["trigger_id"] != first.json()["trigger_id"]
    finally:
        await nc.close()

    missing_type = await api.client.post(f"{BASE}/triggers", json={"payload": {}})
    assert missing_type.status_code == 422
    assert missing_type.json()["detail"][0]["loc"] == ["body", "type"]


# --- runs -----------------------------------------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


async def record_run(
    store: PostgresEventStore,
    tenant: str,
    run_id: str,
    created_at: datetime,
    pipeline: str = "orders",
    trigger_id: str = "",
    finish: bool = True,
) -> None:
    """Append a run's events the way the runner would: created, started, one step, completed."""
    definition = PipelineDefinition.model_validate({**pipeline_body(), "name": pipeline}).to_document()
    trigger = {"trigger_id": trigger_id or str(uuid.uuid4()), "type": "orders.ready", "payload": {}}
    events = [
        RunCreated(
            run_id=run_id, tenant=tenant, pipeline=pipeline, pipeline_version=1, definition=definition, trigger=trigger
        ).to_event(recorded_at=created_at),
        RunStarted(run_id=run_id).to_event(recorded_at=created_at + timedelta(milliseconds=1)),
        StepScheduled(run_id=run_id, step="fetch", index=0, kind="action").to_event(
            recorded_at=created_at + timedelta(milliseconds=2)
        ),
        StepCompleted(run_id=run_id, step="fetch", result={"rows": 7}, duration_ms=12.5).to_event(
            recorded_at=created_at + timedelta(milliseconds=3)
        ),
    ]
    if finish:
        events.append(RunCompleted(run_id=run_id).to_event(recorded_at=created_at + timedelta(milliseconds=4)))
    await append(store, f"run-{run_id}", tenant, events, NO_STREAM)


async def test_run_show_timeline_and_events(api: Api) -> None:
    run_id = str(uuid.uuid4())
    await record_run(api.store, TENANT, run_id, T0)
    await api.caught_up()

    run = await api.client.get(f"{BASE}/runs/{run_id}")
    assert run.status_code == 200, run.text
    doc = run.json()
    assert doc["status"] == "completed"
    assert doc["pipeline"] == "orders"
    assert doc["context"] == {"fetch": {"rows": 7}}
    assert [s["step"] for s in doc["steps"]] == ["fetch", "enough", "report"]
    assert [s["status"] for s in doc["steps"]] == ["completed", "pending", "pending"]

    timeline = (await api.client.get(f"{BASE}/runs/{run_id}/timeline")).json()
    assert [e["kind"] for e in timeline["entries"]] == [
        "run_created",
        "run_started",
        "step_scheduled",
        "step_completed",
        "run_completed",
    ]
    assert [e["seq"] for e in timeline["entries"]] == [1, 2, 3, 4, 5]

    raw = (await api.client.get(f"{BASE}/runs/{run_id}/events")).json()
    assert [e["stream_version"] for e in raw["events"]] == [1, 2, 3, 4, 5]
    assert raw["events"][0]["type"] == "run_created"
    assert raw["events"][0]["stream_id"] == f"run-{run_id}"
    assert raw["events"][3]["data"]["result"] == {"rows": 7}


async def test_unknown_and_foreign_runs_are_404(api: Api) -> None:
    run_id = str(uuid.uuid4())
    await record_run(api.store, "other", run_id, T0)
    await api.caught_up()
    assert (await api.client.get(f"/v1/tenants/other/runs/{run_id}")).status_code == 200
    for suffix in ("", "/timeline", "/events"):
        foreign = await api.client.get(f"{BASE}/runs/{run_id}{suffix}")
        assert foreign.status_code == 404, (suffix, foreign.text)
        assert set(foreign.json()) == {"detail"}
        unknown = await api.client.get(f"{BASE}/runs/{uuid.uuid4()}{suffix}")
        assert unknown.status_code == 404
    assert (await api.client.get(f"{BASE}/runs")).json() == {"runs": [], "next_cursor": None}


async def test_runs_list_paginates_newest_first_with_a_cursor(api: Api) -> None:
    run_ids = [str(uuid.uuid4()) for _ in range(7)]
    created = [T0 + timedelta(minutes=i) for i in range(7)]
    created[4] = created[3]  # a tie on created_at: run_id breaks it
    for run_id, at in zip(run_ids, created, strict=True):
        await record_run(api.store, TENANT, run_id, at, finish=run_id != run_ids[0])
    await record_run(api.store, "other", str(uuid.uuid4()), T0 + timedelta(hours=1))
    await api.caught_up()

    expected = [r for _, r in sorted(zip(created, run_ids, strict=True), reverse=True)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await api.client.get(f"{BASE}/runs", params=params)).json()
        pages += 1
        seen.extend(run["run_id"] for run in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == expected

    running = (await api.client.get(f"{BASE}/runs", params={"status": "running"})).json()
    assert [r["run_id"] for r in running["runs"]] == [run_ids[0]]
    assert running["runs"][0]["pipeline"] == "orders"
    by_pipeline = (await api.client.get(f"{BASE}/runs", params={"pipeline": "nope"})).json()
    assert by_pipeline["runs"] == []

    assert (await api.client.get(f"{BASE}/runs", params={"limit": 0})).status_code == 422
    assert (await api.client.get(f"{BASE}/runs", params={"limit": 501})).status_code == 422
    bad_cursor = await api.client.get(f"{BASE}/runs", params={"cursor": "not-a-cursor"})
    assert bad_cursor.status_code == 422


async def test_trigger_lookup_lists_its_runs(api: Api) -> None:
    trigger_id = trigger_id_for(TENANT, "order-7")
    run_id = str(uuid.uuid4())
    received = TriggerReceived(
        trigger_id=trigger_id,
        tenant=TENANT,
        source="shop",
        type="orders.ready",
        idempotency_key="order-7",
        triggered_by="webhook",
    ).to_event()
    await append(api.store, f"trigger-{trigger_id}", TENANT, [received], NO_STREAM)
    await record_run(api.store, TENANT, run_id, T0, trigger_id=trigger_id, finish=False)
    await api.caught_up()

    found = await api.client.get(f"{BASE}/triggers/{trigger_id}")
    assert found.status_code == 200, found.text
    doc = found.json()
    assert doc["status"] == "accepted"
    assert doc["source"] == "shop"
    assert doc["runs"] == [{"run_id": run_id, "pipeline": "orders", "status": "running"}]
    assert (await api.client.get(f"/v1/tenants/other/triggers/{trigger_id}")).status_code == 404
    assert (await api.client.get(f"{BASE}/triggers/{uuid.uuid4()}")).status_code == 404


# --- health ---------------------------------------------------------------------------------


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"nats": "ok", "postgres": "ok"}
    assert (await api.client.get("/docs")).status_code == 200
    assert "/v1/tenants/{tenant}/runs" in (await api.client.get("/openapi.json")).json()["paths"]


# --- CLI against a real HTTP server and NATS -----------------------------------------------

PIPELINES_YAML = """
name: orders
trigger: {type: orders.ready}
steps:
  - name: fetch
    type: action
    uses: http
    with: {url: "https://example.com/orders"}
---
name: invoices
trigger: {type: invoices.due}
steps:
  - {name: mail, type: action, uses: shell, with: {command: "echo mail"}}
"""

BROKEN_YAML = """
name: broken
trigger: {type: x}
steps:
  - {name: a, type: action, uses: carrier-pigeon}
"""


def cli_app() -> typer.Typer:
    """The client commands registered the way the main CLI registers them."""
    app = typer.Typer()
    app.command("apply")(apply_command)
    app.command("emit")(emit_command)
    app.add_typer(runs_app, name="runs")
    return app


async def invoke(*args: str) -> Result:
    """Run a CLI command in a worker thread (it is synchronous) while the server keeps serving."""
    return await asyncio.to_thread(CliRunner().invoke, cli_app(), list(args))


@pytest.fixture
async def served_api(api: Api) -> AsyncIterator[str]:
    """The same app behind a real uvicorn socket on a free port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started or task.done(), message="uvicorn started")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_cli_apply_and_runs(api: Api, served_api: str, tmp_path: Path) -> None:
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(PIPELINES_YAML)
    applied = await invoke("apply", str(pipelines), "--tenant", TENANT, "--api-url", served_api)
    assert applied.exit_code == 0, applied.output
    assert "orders" in applied.output
    assert "invoices" in applied.output
    again = await invoke("apply", str(pipelines), "--tenant", TENANT, "--api-url", served_api, "--json")
    assert again.exit_code == 0, again.output
    assert [(r["name"], r["version"], r["changed"]) for r in json.loads(again.output)] == [
        ("orders", 1, False),
        ("invoices", 1, False),
    ]

    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_YAML)
    rejected = await invoke("apply", str(broken), "--tenant", TENANT, "--api-url", served_api)
    assert rejected.exit_code == 1
    assert "steps[0].action: " in rejected.output
    assert "carrier-pigeon" in rejected.output

    run_id = str(uuid.uuid4())
    await record_run(api.store, TENANT, run_id, T0)
    await api.caught_up()
    listed = await invoke("runs", "list", "--tenant", TENANT, "--api-url", served_api)
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output
    assert "completed" in listed.output
    shown = await invoke("runs", "show", run_id, "--tenant", TENANT, "--api-url", served_api)
    assert shown.exit_code == 0, shown.output
    assert "fetch" in shown.output
    timeline = await invoke("runs", "timeline", run_id, "--tenant", TENANT, "--api-url", served_api, "--json")
    assert json.loads(timeline.output)["entries"][0]["kind"] == "run_created"
    missing = await invoke("runs", "show", str(uuid.uuid4()), "--tenant", TENANT, "--api-url", served_api)
    assert missing.exit_code == 1
    assert "not found" in missing.output


async def test_cli_emit_publishes_to_jetstream(api: Api, nats_url: str, subject_prefix: str) -> None:
    nc = await nats.connect(nats_url)
    received: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()

    async def collect(msg: nats.aio.msg.Msg) -> None:
        await received.put(msg)

    try:
        await nc.subscribe(api.subjects.trigger(TENANT, "orders.ready"), cb=collect)
        await nc.flush()
        args = ["emit", TENANT, "orders.ready", "--payload", '{"order": 1}', "-k", "cli-1"]
        args += ["--nats-url", nats_url, "--prefix", subject_prefix]
        emitted = await invoke(*args)
        assert emitted.exit_code == 0, emitted.output
        assert trigger_id_for(TENANT, "cli-1") in emitted.output
        msg = await asyncio.wait_for(received.get(), timeout=5)
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == "cli-1"
        assert json.loads(msg.data)["payload"] == {"order": 1}

        duplicate = await invoke(*args, "--json")
        assert json.loads(duplicate.output)["duplicate"] is True
        bad = await invoke("emit", TENANT, "orders.ready", "--payload", "[1]", "--nats-url", nats_url)
        assert bad.exit_code == 2
    finally:
        await nc.close()
