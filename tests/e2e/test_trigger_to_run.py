"""End to end with every service as its own process: a plain NATS client starts runs.

Also the fault test: SIGKILL the runner with 200 triggers in flight, restart it, and
every trigger still ends in exactly one terminal run with no duplicated events.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import nats
import psycopg
import pytest

from baton.events.db import libpq_url
from baton.events.subjects import Subjects
from baton.events.trigger import run_id_for, trigger_id_for
from tests.e2e.conftest import Services
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

TENANT = "acme"


def pipeline(name: str, steps: list[dict[str, Any]], trigger_type: str = "orders.ready") -> dict[str, Any]:
    return {"name": name, "trigger": {"type": trigger_type}, "config": {"region": "eu"}, "steps": steps}


def put_pipeline(services: Services, definition: dict[str, Any]) -> None:
    response = httpx.put(
        f"{services.api_url}/v1/tenants/{TENANT}/pipelines/{definition['name']}", json=definition, timeout=10
    )
    assert response.status_code in (200, 201), response.text


async def publish(nats_url: str, prefix: str, trigger_type: str, body: dict[str, Any], msg_id: str) -> None:
    """Publish like any outside program would: a plain nats-py JetStream publish."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.publish(
            Subjects(prefix).trigger(TENANT, trigger_type), json.dumps(body).encode(), headers={"Nats-Msg-Id": msg_id}
        )
    finally:
        await nc.close()


async def api_get(services: Services, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(base_url=services.api_url, timeout=5) as client:
        response = await client.get(f"/v1/tenants/{TENANT}{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def finished_run(services: Services, run_id: str, within: float = 30.0) -> dict[str, Any]:
    async def terminal() -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{services.api_url}/v1/tenants/{TENANT}/runs/{run_id}")
        if response.status_code == 200 and response.json()["status"] in ("completed", "failed", "canceled"):
            return dict(response.json())
        return None

    try:
        return await wait_for(terminal, timeout=within, interval=0.1, message=f"run {run_id} never finished")
    except AssertionError:
        raise AssertionError(services.logs()) from None


async def test_nats_trigger_runs_to_completion_and_api_shows_it(
    services: Services, nats_url: str, subject_prefix: str
) -> None:
    put_pipeline(
        services,
        pipeline(
            "orders-sync",
            [
                {"name": "extract", "type": "action", "uses": "shell", "with": {"command": "echo 42"}},
                {"name": "big_enough", "type": "condition", "if": "trigger.payload.amount > 100"},
                {"name": "load", "type": "action", "uses": "python", "with": {"ref": "baton.examples.handlers:record"}},
            ],
        ),
    )
    key = uuid.uuid4().hex
    await publish(nats_url, subject_prefix, "orders.ready", {"source": "shop", "payload": {"amount": 250}}, key)
    run_id = run_id_for(trigger_id_for(TENANT, key), "orders-sync")
    run = await finished_run(services, run_id)
    assert run["status"] == "completed", run
    assert run["context"]["extract"]["stdout"] == "42"
    assert run["context"]["load"]["amount"] == 250
    timeline = await api_get(services, f"/runs/{run_id}/timeline")
    kinds = [entry["kind"] for entry in (timeline["entries"] if isinstance(timeline, dict) else timeline)]
    assert kinds[:3] == ["run_created", "run_started", "step_scheduled"]
    assert kinds[-1] == "run_completed"
    events = await api_get(services, f"/runs/{run_id}/events")
    raw = events["events"] if isinstance(events, dict) else events
    assert [e["stream_version"] for e in raw] == list(range(1, len(raw) + 1))
    trigger = await api_get(services, f"/triggers/{trigger_id_for(TENANT, key)}")
    assert [r["run_id"] for r in trigger["runs"]] == [run_id]
    # The same trigger again (same Nats-Msg-Id) makes no second set of runs.
    await publish(nats_url, subject_prefix, "orders.ready", {"source": "shop", "payload": {"amount": 250}}, key)
    runs = await api_get(services, "/runs", pipeline="orders-sync")
    assert [r["run_id"] for r in runs["runs"]] == [run_id]


async def test_failing_shell_step_fails_the_run_with_the_error(
    services: Services, nats_url: str, subject_prefix: str
) -> None:
    put_pipeline(
        services,
        pipeline(
            "breaks",
            [
                {"name": "boom", "type": "action", "uses": "shell", "with": {"command": "echo oops >&2; exit 3"}},
                {"name": "never", "type": "action", "uses": "shell", "with": {"command": "echo unreachable"}},
            ],
            trigger_type="breaks.now",
        ),
    )
    key = uuid.uuid4().hex
    await publish(nats_url, subject_prefix, "breaks.now", {"source": "test"}, key)
    run = await finished_run(services, run_id_for(trigger_id_for(TENANT, key), "breaks"))
    assert run["status"] == "failed"
    assert run["error"]["step"] == "boom"
    assert "3" in run["error"]["message"] and "oops" in run["error"]["message"]
    steps = {s["step"]: s["status"] for s in run["steps"]}
    assert steps == {"boom": "failed", "never": "skipped"}


async def test_false_condition_completes_early(services: Services, nats_url: str, subject_prefix: str) -> None:
    put_pipeline(
        services,
        pipeline(
            "gated",
            [
                {"name": "gate", "type": "condition", "if": "trigger.payload.amount > 100"},
                {"name": "expensive", "type": "action", "uses": "shell", "with": {"command": "echo ran"}},
            ],
            trigger_type="gated.check",
        ),
    )
    key = uuid.uuid4().hex
    await publish(nats_url, subject_prefix, "gated.check", {"source": "test", "payload": {"amount": 5}}, key)
    run = await finished_run(services, run_id_for(trigger_id_for(TENANT, key), "gated"))
    assert run["status"] == "completed"
    assert "gate was false" in run["reason"]
    assert {s["step"]: s["status"] for s in run["steps"]} == {"gate": "completed", "expensive": "skipped"}


async def test_bad_trigger_is_rejected_with_a_record_and_a_dlq_message(
    services: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    subjects = Subjects(subject_prefix)
    nc = await nats.connect(nats_url)
    try:
        dlq = await nc.subscribe(subjects.dlq("trigger"))
        subject = subjects.trigger(TENANT, "orders.ready")
        await nc.jetstream().publish(subject, b"{not json", headers={"Nats-Msg-Id": "x1"})
        message = await dlq.next_msg(timeout=20)
        assert message.headers and message.headers["Baton-Reason"] == "invalid_json"
        assert message.data == b"{not json"
    finally:
        await nc.close()
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute("SELECT data->>'reason' FROM events WHERE type = 'trigger_rejected'").fetchall()
    assert rows == [("invalid_json",)]


@pytest.mark.fault
async def test_runner_sigkill_with_200_triggers_in_flight(
    services: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    put_pipeline(
        services,
        pipeline(
            "steady",
            [
                {"name": "one", "type": "action", "uses": "python", "with": {"ref": "baton.examples.handlers:record"}},
                {"name": "two", "type": "action", "uses": "shell", "with": {"command": "echo two"}},
            ],
            trigger_type="load.test",
        ),
    )
    keys = [f"fault-{i}-{uuid.uuid4().hex[:6]}" for i in range(200)]
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    subject = Subjects(subject_prefix).trigger(TENANT, "load.test")
    acks = [
        await js.publish_async(subject, json.dumps({"source": "fault", "payload": {"amount": i}}).encode(),
                               headers={"Nats-Msg-Id": key})
        for i, key in enumerate(keys)
    ]
    for ack in acks:
        await ack
    await nc.close()

    def terminal_counts() -> list[tuple[str, int]]:
        with psycopg.connect(libpq_url(database_url)) as conn:
            return conn.execute(
                "SELECT stream_id, count(*) FROM events WHERE type IN ('run_completed', 'run_failed') GROUP BY 1"
            ).fetchall()

    await wait_for(lambda: len(terminal_counts()) >= 10, timeout=60, message="no runs finished before the kill")
    services.kill("runner")
    finished_at_kill = len(terminal_counts())
    assert finished_at_kill < 200, "the kill came too late to test anything"
    services.start("runner-restarted", "baton.runner.main")
    await wait_for(lambda: len(terminal_counts()) == 200, timeout=120, interval=0.25,
                   message=f"not every trigger finished after the restart\n{services.logs()}")

    expected_runs = {f"run-{run_id_for(trigger_id_for(TENANT, key), 'steady')}" for key in keys}
    counts = dict(terminal_counts())
    assert set(counts) == expected_runs
    assert set(counts.values()) == {1}, "a run has two terminal events"
    with psycopg.connect(libpq_url(database_url)) as conn:
        duplicated = conn.execute(
            "SELECT stream_id, type, data->>'step', data->>'attempt', count(*) FROM events"
            " WHERE stream_type = 'run' GROUP BY 1, 2, 3, 4 HAVING count(*) > 1"
        ).fetchall()
        statuses = conn.execute(
            "SELECT count(*) FROM events WHERE type = 'run_completed'"
        ).fetchone()
        triggers = conn.execute(
            "SELECT count(*), count(DISTINCT stream_id) FROM events WHERE type = 'trigger_received'"
        ).fetchone()
    assert duplicated == [], f"duplicated events: {duplicated[:5]}"
    assert statuses == (200,)
    assert triggers == (200, 200)
