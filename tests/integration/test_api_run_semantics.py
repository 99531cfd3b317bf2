"""Run-semantics API against real PostgreSQL and NATS: filters, cancel, retry, dead letters, replay,
pause/resume/drain, and the CLI commands for them.

The runner that answers commands is built in parallel, so the tests start a stand-in: a real
NATS subscription on the command subjects that replies with a ``CommandReply`` (and, like the
runner, appends the command's events first). The API's mapping of those verdicts is what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import nats
import pytest
import uvicorn
from click.testing import Result
from nats.aio.msg import Msg
from typer.testing import CliRunner

from baton.cli.main import app as baton_cli
from baton.events.catalogue import (
    EventData,
    PipelineDraining,
    PipelinePaused,
    PipelineVersionCreated,
    RunCanceled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunRetried,
    RunStarted,
    StepDeadLettered,
    StepFailed,
    StepScheduled,
    TriggerReceived,
    TriggerRejected,
)
from baton.events.commands import CommandReply
from baton.events.control import PipelineControl
from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.pipeline import PipelineDefinition
from baton.events.postgres_store import PostgresEventStore
from baton.events.projections.run_summary import dead_letter_id
from baton.events.store import ANY_VERSION, NO_STREAM, append
from baton.events.subjects import Subjects
from tests.helpers import wait_for
from tests.integration.test_api import (
    BASE,
    T0,
    TENANT,
    Api,
    api_settings,
    pipeline_body,
    running_api,
)

pytestmark = pytest.mark.integration
COMMAND_TIMEOUT = 1.0
Answer = Callable[[str, dict[str, Any]], Awaitable[CommandReply | None]]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresEventStore]:
    """The test database, migrated; a store on it for appending events the way the runner does."""
    engine = make_engine(database_url, pool_size=2)
    await migrate(engine)
    try:
        yield PostgresEventStore(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def api(store: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str) -> AsyncIterator[Api]:
    settings = api_settings(database_url, nats_url, subject_prefix).model_copy(
        update={"command_timeout_seconds": COMMAND_TIMEOUT}
    )
    async with running_api(settings, store) as running:
        yield running


@dataclass
class CommandResponder:
    """A stand-in runner on the real command subjects: records each request and answers it."""

    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def command_responder(nats_url: str, subjects: Subjects, answer: Answer) -> AsyncIterator[CommandResponder]:
    """Subscribe to ``<prefix>.cmd.<tenant>.*``; ``answer`` returns the reply, or None to stay silent."""
    responder = CommandResponder()
    nc = await nats.connect(nats_url)

    async def handle(msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        body = json.loads(msg.data)
        responder.received.append((verb, body))
        reply = await answer(verb, body)
        if reply is not None:
            await msg.respond(reply.model_dump_json().encode())

    try:
        await nc.subscribe(subjects.command(TENANT, "*"), cb=handle)
        await nc.flush()
        yield responder
    finally:
        await nc.close()


# --- recording runs the way the runner would -----------------------------------------------


def definition(name: str = "orders") -> dict[str, Any]:
    return PipelineDefinition.model_validate({**pipeline_body(), "name": name}).to_document()


async def record(store: PostgresEventStore, tenant: str, run_id: str, at: datetime, *data: EventData) -> None:
    """Append run events one millisecond apart (the stream may exist already)."""
    events = [d.to_event(recorded_at=at + timedelta(milliseconds=i)) for i, d in enumerate(data)]
    await append(store, f"run-{run_id}", tenant, events, ANY_VERSION)


def created(run_id: str, tenant: str = TENANT, pipeline: str = "orders", trigger_id: str | None = None,
            **fields: Any) -> RunCreated:
    trigger = {"trigger_id": trigger_id or str(uuid.uuid4()), "type": "orders.ready", "payload": {}}
    return RunCreated(run_id=run_id, tenant=tenant, pipeline=pipeline, pipeline_version=1,
                      definition=definition(pipeline), trigger=trigger, **fields)


async def dead_lettered_run(store: PostgresEventStore, run_id: str, at: datetime = T0, tenant: str = TENANT) -> str:
    """A run whose first step ran out of attempts; returns the dead letter id."""
    await record(
        store, tenant, run_id, at,
        created(run_id, tenant),
        RunStarted(run_id=run_id),
        StepScheduled(run_id=run_id, step="fetch", index=0, kind="action", attempt=2),
        StepFailed(run_id=run_id, step="fetch", attempt=2, error="HTTP 503"),
        StepDeadLettered(run_id=run_id, step="fetch", attempts=2, reason="out of attempts", last_error="HTTP 503"),
        RunFailed(run_id=run_id, error="step fetch out of attempts", step="fetch", code="dead_lettered"),
    )
    return dead_letter_id(run_id, "fetch", 2)


def runner_like(store: PostgresEventStore) -> Answer:
    """Answers cancel and retry the way the runner does: decides from the run's stream, appends, replies."""

    async def answer(verb: str, body: dict[str, Any]) -> CommandReply:
        run_id = body["run_id"]
        history = await store.read_stream(f"run-{run_id}")
        if not history:
            return CommandReply(status=404, message=f"run {run_id} not found")
        statuses = {"run_started": "running", "run_completed": "completed", "run_failed": "failed",
                    "run_canceled": "canceled", "run_retried": "pending"}
        current = "pending"
        for event in history:
            current = statuses.get(event.type, current)
        if verb == "cancel":
            if current in ("completed", "failed", "canceled"):
                return CommandReply(status=409, message=f"run {run_id} is {current}; only an unfinished run can be "
                                                        "canceled")
            event = RunCanceled(run_id=run_id, reason=body["reason"], actor=body["actor"])
        elif verb == "retry":
            if current != "failed":
                return CommandReply(status=409, message=f"run {run_id} is {current}; only a failed run can be retried")
            event = RunRetried(run_id=run_id, steps=["fetch"], reason=body["reason"], actor=body["actor"],
                               dead_letter_id=body.get("dead_letter_id"))
        else:
            return CommandReply(status=400, message=f"unknown verb {verb}")
        await append(store, f"run-{run_id}", history[-1].tenant, [event.to_event()], history[-1].stream_version)
        return CommandReply(status=200, message=f"{verb} done", data={"run_id": run_id})

    return answer


# --- runs: filters --------------------------------------------------------------------------


async def test_runs_filter_by_status_slice_and_replay(api: Api) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    await record(api.store, TENANT, ids[0], T0, created(ids[0], slice_key="2024-05-01"), RunStarted(run_id=ids[0]))
    await record(api.store, TENANT, ids[1], T0 + timedelta(minutes=1),
                 created(ids[1], slice_key="2024-05-02", is_replay=True, replay_of="t-0"))
    await record(api.store, TENANT, ids[2], T0 + timedelta(minutes=2), created(ids[2], slice_key="2024-05-01"),
                 RunStarted(run_id=ids[2]), RunFailed(run_id=ids[2], error="boom", code="step_failed"))
    await record(api.store, "other", ids[3], T0, created(ids[3], "other", slice_key="2024-05-01"))
    await api.caught_up()

    async def listed(**params: Any) -> list[str]:
        response = await api.client.get(f"{BASE}/runs", params=params)
        assert response.status_code == 200, response.text
        return [run["run_id"] for run in response.json()["runs"]]

    assert await listed(slice_key="2024-05-01") == [ids[2], ids[0]]
    assert await listed(slice_key="2024-05-01", status="failed") == [ids[2]]
    assert await listed(is_replay="true") == [ids[1]]
    assert await listed(is_replay="false") == [ids[2], ids[0]]
    assert await listed(status="pending") == [ids[1]]
    assert await listed(slice_key="nope") == []
    row = (await api.client.get(f"{BASE}/runs", params={"is_replay": "true"})).json()["runs"][0]
    assert (row["slice_key"], row["is_replay"]) == ("2024-05-02", True)
    doc = (await api.client.get(f"{BASE}/runs/{ids[1]}")).json()
    assert (doc["is_replay"], doc["replay_of"], doc["dry_run"]) == (True, "t-0", False)


# --- runs: cancel and retry -----------------------------------------------------------------


async def test_cancel_and_retry_map_the_runner_verdicts(api: Api, nats_url: str) -> None:
    running, failed = str(uuid.uuid4()), str(uuid.uuid4())
    await record(api.store, TENANT, running, T0, created(running), RunStarted(run_id=running))
    await dead_lettered_run(api.store, failed, T0 + timedelta(minutes=1))
    await api.caught_up()

    async with command_responder(nats_url, api.subjects, runner_like(api.store)) as responder:
        canceled = await api.client.post(f"{BASE}/runs/{running}/cancel", json={"reason": "wrong input"})
        assert canceled.status_code == 200, canceled.text
        assert canceled.json() == {"status": 200, "message": "cancel done", "data": {"run_id": running}}
        # Read-your-writes: the runner's events are in the read model when the POST returns.
        doc = (await api.client.get(f"{BASE}/runs/{running}")).json()
        assert doc["status"] == "canceled"
        assert doc["canceled"]["reason"] == "wrong input"
        assert responder.received[-1] == ("cancel", {"verb": "cancel", "run_id": running, "reason": "wrong input",
                                                     "actor": "api"})

        again = await api.client.post(f"{BASE}/runs/{running}/cancel")
        assert again.status_code == 409
        assert again.json()["detail"] == f"run {running} is canceled; only an unfinished run can be canceled"

        not_failed = await api.client.post(f"{BASE}/runs/{running}/retry", json={})
        assert not_failed.status_code == 409
        assert "only a failed run can be retried" in not_failed.json()["detail"]

        retried = await api.client.post(f"{BASE}/runs/{failed}/retry", json={"reason": "fixed", "actor": "ann"})
        assert retried.status_code == 200, retried.text
        doc = (await api.client.get(f"{BASE}/runs/{failed}")).json()
        assert doc["status"] == "pending"
        assert doc["retries"][0]["actor"] == "ann"

        count = len(responder.received)
        for path in (f"{BASE}/runs/{uuid.uuid4()}/cancel", f"/v1/tenants/other/runs/{running}/retry"):
            missing = await api.client.post(path)
            assert missing.status_code == 404, path
            assert "not found" in missing.json()["detail"]
        assert len(responder.received) == count  # unknown and foreign runs never reach the runner
        bad = await api.client.post(f"{BASE}/runs/{running}/cancel", json={"reason": "x", "colour": "red"})
        assert bad.status_code == 422


async def test_commands_without_a_runner_are_503(api: Api, nats_url: str) -> None:
    run_id = str(uuid.uuid4())
    await record(api.store, TENANT, run_id, T0, created(run_id), RunStarted(run_id=run_id))
    await api.caught_up()

    nobody = await api.client.post(f"{BASE}/runs/{run_id}/cancel")
    assert nobody.status_code == 503
    assert "no runner is listening" in nobody.json()["detail"]

    async def silent(verb: str, body: dict[str, Any]) -> CommandReply | None:
        return None

    async with command_responder(nats_url, api.subjects, silent):
        started = asyncio.get_running_loop().time()
        late = await api.client.post(f"{BASE}/runs/{run_id}/cancel")
        assert late.status_code == 503
        assert f"no runner answered the cancel command within {COMMAND_TIMEOUT:g}s" in late.json()["detail"]
        assert asyncio.get_running_loop().time() - started < COMMAND_TIMEOUT + 2
    assert (await api.client.get(f"{BASE}/runs/{run_id}")).json()["status"] == "running"


# --- dead letters ---------------------------------------------------------------------------


async def test_dead_letters_list_and_redrive(api: Api, nats_url: str) -> None:
    first, second, foreign = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    first_letter = await dead_lettered_run(api.store, first, T0)
    second_letter = await dead_lettered_run(api.store, second, T0 + timedelta(minutes=1))
    foreign_letter = await dead_lettered_run(api.store, foreign, T0, tenant="other")
    await api.caught_up()

    listed = (await api.client.get(f"{BASE}/dead-letters")).json()["dead_letters"]
    assert [letter["dead_letter_id"] for letter in listed] == [second_letter, first_letter]
    assert listed[1] == {
        "dead_letter_id": f"{first}:fetch:2", "run_id": first, "pipeline": "orders", "step": "fetch",
        "reason": "out of attempts", "last_error": "HTTP 503", "attempts": 2,
        "dead_lettered_at": listed[1]["dead_lettered_at"], "redriven_at": None, "redriven_by": None,
        "redrive_reason": None,
    }
    assert (await api.client.get(f"{BASE}/dead-letters/{first_letter}")).json()["run_id"] == first

    async with command_responder(nats_url, api.subjects, runner_like(api.store)) as responder:
        redriven = await api.client.post(f"{BASE}/dead-letters/{first_letter}/redrive",
                                         json={"reason": "endpoint fixed", "actor": "ann"})
        assert redriven.status_code == 200, redriven.text
        assert responder.received[-1] == ("retry", {"verb": "retry", "run_id": first, "reason": "endpoint fixed",
                                                    "actor": "ann", "dead_letter_id": first_letter})
        again = await api.client.post(f"{BASE}/dead-letters/{first_letter}/redrive")
        assert again.status_code == 409
        assert "already re-driven" in again.json()["detail"]
        for path in (f"{BASE}/dead-letters/{foreign_letter}/redrive", f"{BASE}/dead-letters/nope/redrive"):
            assert (await api.client.post(path)).status_code == 404
        assert len(responder.received) == 1

    open_now = (await api.client.get(f"{BASE}/dead-letters")).json()["dead_letters"]
    assert [letter["dead_letter_id"] for letter in open_now] == [second_letter]
    everything = (await api.client.get(f"{BASE}/dead-letters", params={"include": "all"})).json()["dead_letters"]
    done = next(letter for letter in everything if letter["dead_letter_id"] == first_letter)
    assert (done["redriven_by"], done["redrive_reason"]) == ("ann", "endpoint fixed")
    assert done["redriven_at"] is not None
    by_run = await api.client.get(f"{BASE}/dead-letters", params={"run_id": second, "include": "all"})
    assert [letter["run_id"] for letter in by_run.json()["dead_letters"]] == [second]
    assert (await api.client.get(f"{BASE}/dead-letters", params={"include": "some"})).status_code == 422
    assert (await api.client.get(f"{BASE}/dead-letters/{foreign_letter}")).status_code == 404
    assert (await api.client.get("/v1/tenants/other/dead-letters")).json()["dead_letters"][0]["run_id"] == foreign


# --- replay ---------------------------------------------------------------------------------


async def record_trigger(store: PostgresEventStore, trigger_id: str, tenant: str = TENANT) -> None:
    received = TriggerReceived(trigger_id=trigger_id, tenant=tenant, source="shop", type="orders.ready",
                               idempotency_key=trigger_id).to_event(recorded_at=T0)
    await append(store, f"trigger-{trigger_id}", tenant, [received], NO_STREAM)


def replaying_runner(refuse: frozenset[str] = frozenset()) -> Answer:
    """Answers replay commands like the runner: the same replay id always names the same new trigger."""

    async def answer(verb: str, body: dict[str, Any]) -> CommandReply:
        if body["trigger_id"] in refuse:
            return CommandReply(status=409, message=f"trigger {body['trigger_id']} cannot be replayed")
        new = f"replay-{body['replay_id']}"
        return CommandReply(status=200, message="replayed", data={"trigger_id": new, "run_ids": [f"run-of-{new}"]})

    return answer


async def test_replay_one_trigger(api: Api, nats_url: str) -> None:
    await record_trigger(api.store, "t-1")
    await record_trigger(api.store, "t-foreign", tenant="other")
    rejected = TriggerRejected(trigger_id="t-bad", tenant=TENANT, subject="x", reason="invalid_json", detail="no")
    await append(api.store, "trigger-t-bad", TENANT, [rejected.to_event()], NO_STREAM)
    await api.caught_up()

    assert (await api.client.post(f"{BASE}/triggers/t-1/replay")).status_code == 503  # no runner yet
    async with command_responder(nats_url, api.subjects, replaying_runner()) as responder:
        dry = await api.client.post(f"{BASE}/triggers/t-1/replay", json={"dry_run": True})
        assert dry.status_code == 200, dry.text
        replay_id = dry.json()["replay_id"]
        assert dry.json() == {"status": 200, "message": "replayed", "replay_id": replay_id,
                              "data": {"trigger_id": f"replay-{replay_id}", "run_ids": [f"run-of-replay-{replay_id}"]}}
        assert responder.received[-1] == ("replay", {"verb": "replay", "trigger_id": "t-1", "replay_id": replay_id,
                                                     "dry_run": True, "actor": "api", "pipeline": None})

        named = [await api.client.post(f"{BASE}/triggers/t-1/replay", json={"replay_id": "fix-42"}) for _ in "ab"]
        assert [r.json()["data"]["trigger_id"] for r in named] == ["replay-fix-42", "replay-fix-42"]
        assert responder.received[-1][1]["dry_run"] is False

        refused = await api.client.post(f"{BASE}/triggers/t-bad/replay")
        assert refused.status_code == 409
        assert "only accepted triggers can be replayed" in refused.json()["detail"]
        for path in (f"{BASE}/triggers/t-foreign/replay", f"{BASE}/triggers/nope/replay"):
            assert (await api.client.post(path, json={})).status_code == 404
        assert len(responder.received) == 3


async def test_bulk_replay_selects_original_triggers_by_their_runs(api: Api, nats_url: str) -> None:
    plan = [  # trigger, pipeline, minutes after T0, failed?
        ("t-a", "orders", 0, True), ("t-b", "orders", 1, False), ("t-c", "invoices", 2, True),
        ("t-d", "orders", 180, True),
    ]
    for trigger_id, pipeline, minutes, fails in plan:
        await record_trigger(api.store, trigger_id)
        run_id = str(uuid.uuid4())
        end: EventData = RunFailed(run_id=run_id, error="boom") if fails else RunCompleted(run_id=run_id)
        await record(api.store, TENANT, run_id, T0 + timedelta(minutes=minutes),
                      created(run_id, pipeline=pipeline, trigger_id=trigger_id), RunStarted(run_id=run_id), end)
    replay_run = str(uuid.uuid4())  # a failed replay of t-a: never selected again
    await record(api.store, TENANT, replay_run, T0 + timedelta(minutes=5),
                 created(replay_run, trigger_id="replay-t-a", is_replay=True, replay_of="t-a"),
                 RunStarted(run_id=replay_run), RunFailed(run_id=replay_run, error="boom"))
    await api.caught_up()

    window = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat()}
    assert (await api.client.post(f"{BASE}/replays", json={"status": "failed"})).status_code == 503
    async with command_responder(nats_url, api.subjects, replaying_runner(refuse=frozenset({"t-d"}))) as responder:
        scoped = await api.client.post(
            f"{BASE}/replays", json={"pipeline": "orders", "status": "failed", "dry_run": True, **window}
        )
        assert scoped.status_code == 200, scoped.text
        summary = scoped.json()
        assert (summary["selected"], summary["replayed"], summary["failed"], summary["dry_run"]) == (1, 1, 0, True)
        assert summary["results"][0]["trigger_id"] == "t-a"
        assert responder.received[-1][1]["pipeline"] == "orders"
        assert responder.received[-1][1]["dry_run"] is True

        everything = (await api.client.post(f"{BASE}/replays", json={"status": "failed", "batch_id": "b1"})).json()
        assert [r["trigger_id"] for r in everything["results"]] == ["t-a", "t-c", "t-d"]
        assert [r["status"] for r in everything["results"]] == [200, 200, 409]
        assert (everything["replayed"], everything["failed"], everything["not_sent"]) == (2, 1, 0)
        again = (await api.client.post(f"{BASE}/replays", json={"status": "failed", "batch_id": "b1"})).json()
        assert [r["replay_id"] for r in again["results"]] == [r["replay_id"] for r in everything["results"]]

        limited = (await api.client.post(f"{BASE}/replays", json={"limit": 2})).json()
        assert [r["trigger_id"] for r in limited["results"]] == ["t-a", "t-b"]
        none = (await api.client.post(f"{BASE}/replays", json={"pipeline": "nope"})).json()
        assert (none["selected"], none["results"]) == (0, [])
    backwards = await api.client.post(f"{BASE}/replays", json={"from": window["to"], "to": window["from"]})
    assert backwards.status_code == 422
    assert (await api.client.post(f"{BASE}/replays", json={"limit": 0})).status_code == 422


# --- pause / resume / drain -----------------------------------------------------------------


async def control_entry(nats_url: str, subjects: Subjects, name: str) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(subjects.defs_bucket)
        entry = await kv.get(subjects.definition_key("control", TENANT, name))
    finally:
        await nc.close()
    assert entry.value is not None
    value: dict[str, Any] = json.loads(entry.value)
    return value


async def test_pause_resume_drain_record_events_and_control_keys(api: Api, nats_url: str) -> None:
    assert (await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body())).status_code == 201

    paused = await api.client.post(f"{BASE}/pipelines/orders/pause", json={"reason": "maintenance", "actor": "ann"})
    assert paused.status_code == 200, paused.text
    body = paused.json()
    assert (body["state"], body["changed"], body["reason"], body["actor"]) == ("paused", True, "maintenance", "ann")
    stream = await api.store.read_stream(f"pipeline-{TENANT}.orders")
    assert [e.type for e in stream] == ["pipeline_version_created", "pipeline_paused"]
    assert stream[-1].data == {"tenant": TENANT, "name": "orders", "reason": "maintenance", "actor": "ann"}
    control = await control_entry(nats_url, api.subjects, "orders")
    assert PipelineControl.model_validate(control) == PipelineControl(
        state="paused", changed_at=stream[-1].recorded_at, reason="maintenance", actor="ann",
        position=stream[-1].position,
    )
    assert body["position"] == stream[-1].position
    shown = (await api.client.get(f"{BASE}/pipelines/orders")).json()
    assert shown["state"] == "paused"
    assert shown["state_changed"]["reason"] == "maintenance"
    assert (await api.client.get(f"{BASE}/pipelines")).json()["pipelines"][0]["state"] == "paused"

    again = (await api.client.post(f"{BASE}/pipelines/orders/pause", json={"reason": "twice"})).json()
    assert (again["changed"], again["reason"]) == (False, "maintenance")  # already paused: nothing appended
    assert len(await api.store.read_stream(f"pipeline-{TENANT}.orders")) == 2

    drained = (await api.client.post(f"{BASE}/pipelines/orders/drain")).json()
    assert (drained["state"], drained["changed"], drained["actor"]) == ("draining", True, "api")
    assert (await control_entry(nats_url, api.subjects, "orders"))["state"] == "draining"
    resumed = (await api.client.post(f"{BASE}/pipelines/orders/resume", json={"reason": "done"})).json()
    assert (resumed["state"], resumed["changed"]) == ("active", True)
    assert (await control_entry(nats_url, api.subjects, "orders"))["state"] == "active"
    assert (await api.client.get(f"{BASE}/pipelines/orders")).json()["state"] == "active"
    types = [e.type for e in await api.store.read_stream(f"pipeline-{TENANT}.orders")]
    assert types == ["pipeline_version_created", "pipeline_paused", "pipeline_draining", "pipeline_resumed"]

    for path in (f"{BASE}/pipelines/nope/pause", "/v1/tenants/other/pipelines/orders/drain"):
        missing = await api.client.post(path)
        assert missing.status_code == 404, path
        assert "not found" in missing.json()["detail"]
    assert (await api.client.post(f"{BASE}/pipelines/orders/pause", json={"why": "x"})).status_code == 422


async def test_start_up_republishes_operator_states(
    store: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str
) -> None:
    """A crash between appending a pause and putting it in the bucket is healed when the API starts."""
    document = definition("late")
    await append(store, f"pipeline-{TENANT}.late", TENANT, [
        PipelineVersionCreated(tenant=TENANT, name="late", version=1, definition=document).to_event(),
        PipelinePaused(tenant=TENANT, name="late", reason="r1").to_event(),
        PipelineDraining(tenant=TENANT, name="late", reason="r2").to_event(),
    ], NO_STREAM)
    settings = api_settings(database_url, nats_url, subject_prefix)
    async with running_api(settings, store):
        control = await control_entry(nats_url, settings.subjects, "late")
    assert (control["state"], control["reason"]) == ("draining", "r2")
    assert control["position"] == (await store.read_stream(f"pipeline-{TENANT}.late"))[-1].position


# --- CLI against a real HTTP server, a stand-in runner and NATS -----------------------------


@pytest.fixture
async def api_url(api: Api) -> AsyncIterator[str]:
    """The app behind a real uvicorn socket on a free port."""
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started or task.done(), message="uvicorn started")
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def cli(api_url: str, *args: str) -> Result:
    """Run a ``baton`` command in a worker thread (it is synchronous) while the server keeps serving."""
    return await asyncio.to_thread(CliRunner().invoke, baton_cli, [*args, "--tenant", TENANT, "--api-url", api_url])


async def test_cli_operates_runs_dead_letters_replays_and_pipelines(api: Api, api_url: str, nats_url: str) -> None:
    assert (await api.client.put(f"{BASE}/pipelines/orders", json=pipeline_body())).status_code == 201
    running, failed = str(uuid.uuid4()), str(uuid.uuid4())
    await record(api.store, TENANT, running, T0, created(running, slice_key="2024-05-01"), RunStarted(run_id=running))
    letter = await dead_lettered_run(api.store, failed, T0 + timedelta(minutes=1))
    await record_trigger(api.store, "t-1")
    await api.caught_up()
    runs, replays = runner_like(api.store), replaying_runner()

    async def answer(verb: str, body: dict[str, Any]) -> CommandReply | None:
        return await (replays if verb == "replay" else runs)(verb, body)

    async with command_responder(nats_url, api.subjects, answer):
        listed = await cli(api_url, "runs", "list", "--slice-key", "2024-05-01")
        assert listed.exit_code == 0, listed.output
        assert running in listed.output and failed not in listed.output
        assert "2024-05-01" in listed.output
        only_failed = await cli(api_url, "runs", "list", "--status", "failed", "--originals", "--json")
        assert [r["run_id"] for r in json.loads(only_failed.output)["runs"]] == [failed]

        canceled = await cli(api_url, "runs", "cancel", running, "--reason", "wrong file")
        assert canceled.exit_code == 0, canceled.output
        assert "cancel done" in canceled.output
        refused = await cli(api_url, "runs", "cancel", running)
        assert refused.exit_code == 1
        assert "only an unfinished run can be canceled" in refused.output
        not_failed = await cli(api_url, "runs", "retry", running)
        assert not_failed.exit_code == 1 and "only a failed run can be retried" in not_failed.output

        letters = await cli(api_url, "dead-letters", "list")
        assert letters.exit_code == 0, letters.output
        assert letter in letters.output and "HTTP 503" in letters.output
        redriven = await cli(api_url, "dead-letters", "redrive", letter, "--reason", "fixed")
        assert redriven.exit_code == 0, redriven.output
        assert "no dead letters" in (await cli(api_url, "dead-letters", "list")).output
        assert letter in (await cli(api_url, "dead-letters", "list", "--all")).output

        replayed = await cli(api_url, "replay", "t-1", "--dry-run", "--replay-id", "r-1")
        assert replayed.exit_code == 0, replayed.output
        assert "new trigger: replay-r-1" in replayed.output
        bulk = await cli(api_url, "replay", "--pipeline", "orders", "--from", "2024-05-01", "--json")
        assert bulk.exit_code == 0, bulk.output
        assert (json.loads(bulk.output)["selected"], json.loads(bulk.output)["replayed"]) == (2, 2)
        table = await cli(api_url, "replay", "--status", "canceled", "--batch-id", "b-7")
        assert table.exit_code == 0, table.output
        assert "1 selected, 1 replayed, 0 refused, 0 not sent" in table.output
        no_filter = await cli(api_url, "replay")
        assert no_filter.exit_code == 2
        bad_time = await cli(api_url, "replay", "--from", "last tuesday")
        assert bad_time.exit_code == 2

    paused = await cli(api_url, "pipelines", "pause", "orders", "--reason", "maintenance")
    assert paused.exit_code == 0, paused.output
    assert "pipeline orders: paused" in paused.output
    assert "already" in (await cli(api_url, "pipelines", "pause", "orders")).output
    assert "paused" in (await cli(api_url, "pipelines", "list")).output
    assert "pipeline orders: draining" in (await cli(api_url, "pipelines", "drain", "orders")).output
    assert "pipeline orders: active" in (await cli(api_url, "pipelines", "resume", "orders")).output
    missing = await cli(api_url, "pipelines", "resume", "nope")
    assert missing.exit_code == 1 and "not found" in missing.output
