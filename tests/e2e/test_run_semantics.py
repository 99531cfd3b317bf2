"""Run semantics end to end, every service its own process: retries, timeouts, parallel
branches, delays across a scheduler restart, cancel, retry-from-failure, dead letters,
replay, slices, backpressure and pause/resume/drain, through the API.

Also the fault test: SIGKILL a worker in the middle of a step; the step times out and
its retry runs on the other worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from baton.events.db import libpq_url
from baton.events.trigger import run_id_for, slice_run_id, trigger_id_for
from tests.e2e.conftest import Services, running_services
from tests.e2e.test_trigger_to_run import TENANT, publish
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
TERMINAL = ("completed", "failed", "canceled")


@pytest.fixture
def stack(database_url: str, nats_url: str, subject_prefix: str, tmp_path: Path) -> Iterator[Services]:
    """API, runner, scheduler and two workers, on a fresh database and subject prefix."""
    processes = {"api": "baton.api.main", "runner": "baton.runner.main", "scheduler": "baton.scheduler.main",
                 "worker": "baton.runner.worker", "worker2": "baton.runner.worker"}
    with running_services(
        database_url, nats_url, subject_prefix, tmp_path, processes, BATON_TIMER_POLL_SECONDS="0.5"
    ) as svc:
        yield svc


def py(name: str, ref: str, **extra: Any) -> dict[str, Any]:
    settings = extra.pop("with", {})
    return {"name": name, "type": "action", "uses": "python", "with": {"ref": f"tests.e2e.handlers:{ref}",
                                                                      **settings}, **extra}


async def api(stack: Services, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"{stack.api_url}/v1/tenants/{TENANT}", timeout=15) as client:
        return await client.request(method, path, **kwargs)


async def put(stack: Services, name: str, steps: list[dict[str, Any]], **extra: Any) -> str:
    trigger_type = f"{name}.go"
    body = {"name": name, "trigger": {"type": trigger_type}, "steps": steps, **extra}
    response = await api(stack, "PUT", f"/pipelines/{name}", json=body)
    assert response.status_code in (200, 201), response.text
    return trigger_type


async def trigger(nats_url: str, prefix: str, trigger_type: str, pipeline: str, **body: Any) -> str:
    """Publish a trigger; returns the run id it starts for ``pipeline``."""
    key = uuid.uuid4().hex
    await publish(nats_url, prefix, trigger_type, {"source": "e2e", **body}, key)
    if body.get("slice_key") and not body.get("rerun_slice"):
        return slice_run_id(TENANT, pipeline, body["slice_key"])
    return run_id_for(trigger_id_for(TENANT, key), pipeline)


async def run_in(stack: Services, run_id: str, statuses: tuple[str, ...], within: float = 45.0) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        response = await api(stack, "GET", f"/runs/{run_id}")
        if response.status_code == 200 and response.json()["status"] in statuses:
            return dict(response.json())
        return None

    try:
        return await wait_for(reached, timeout=within, interval=0.1, message=f"run {run_id} never got to {statuses}")
    except AssertionError:
        raise AssertionError(stack.logs()) from None


def events(database_url: str, run_id: str | None = None, types: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Events straight from the store, in position order."""
    clauses, params = [], []
    if run_id:
        clauses.append("stream_id = %s")
        params.append(f"run-{run_id}")
    if types:
        clauses.append("type = ANY(%s)")
        params.append(list(types))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            f"SELECT position, stream_id, type, data, recorded_at FROM events {where} ORDER BY position",
            params,
        ).fetchall()
    return [{"position": p, "stream": s, "type": t, "data": d, "at": a} for p, s, t, d, a in rows]


def at(entries: list[dict[str, Any]], event_type: str, **match: Any) -> datetime:
    found = [e for e in entries if e["type"] == event_type and all(e["data"].get(k) == v for k, v in match.items())]
    assert found, f"no {event_type} {match}"
    moment: datetime = found[0]["at"]
    return moment


async def test_flaky_action_succeeds_on_attempt_3_with_the_backoff_in_the_timeline(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    retry = {"max_attempts": 3, "backoff_ms": 300, "factor": 2}
    t = await put(stack, "flaky", [py("call", "flaky", retry=retry, **{"with": {"succeed_on": 3}})])
    run_id = await trigger(nats_url, subject_prefix, t, "flaky")
    run = await run_in(stack, run_id, TERMINAL)
    assert run["status"] == "completed", run
    assert run["context"]["call"]["attempt"] == 3
    assert run["context"]["call"]["key"] == f"{run_id}:call:3"
    history = events(database_url, run_id)
    retries = [e["data"] for e in history if e["type"] == "step_retry_scheduled"]
    assert [(r["attempt"], r["delay_ms"]) for r in retries] == [(2, 300), (3, 600)]
    # The backoff is a durable timer: the next attempt never starts before it is due.
    gap = at(history, "step_scheduled", attempt=2) - at(history, "step_failed", attempt=1)
    assert gap.total_seconds() >= 0.3
    timeline = (await api(stack, "GET", f"/runs/{run_id}/timeline")).json()
    kinds = [entry["kind"] for entry in (timeline["entries"] if isinstance(timeline, dict) else timeline)]
    assert kinds.count("step_retry_scheduled") == 2 and kinds.count("step_failed") == 2


async def test_a_hanging_shell_step_is_timed_out_and_its_late_result_ignored(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    hang = {"name": "hang", "type": "action", "uses": "shell", "timeout_ms": 1500,
            "with": {"command": "sleep 4; echo late", "timeout_ms": 10_000}}
    t = await put(stack, "hangs", [hang])
    run_id = await trigger(nats_url, subject_prefix, t, "hangs")
    run = await run_in(stack, run_id, TERMINAL)
    assert run["status"] == "failed"
    failed = next(e["data"] for e in events(database_url, run_id) if e["type"] == "step_failed")
    assert failed["timed_out"] is True and "timed out after 1500 ms" in failed["error"]
    # The worker finishes sleeping and reports: the runner records the result as ignored.
    await wait_for(lambda: asyncio.to_thread(events, database_url, run_id, ("step_result_ignored",)),
                   timeout=30, message="late result never recorded")


async def test_parallel_branches_run_concurrently_and_one_failing_fails_the_run(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    fan = {"name": "fan", "type": "parallel", "branches": [
        {"steps": [py("slow_a", "brief", **{"with": {"seconds": 0.5}}), py("after_a", "brief")]},
        {"steps": [py("boom", "fail")]},
        {"steps": [py("quick", "brief")]},
    ]}
    t = await put(stack, "fans", [fan, py("never", "brief")])
    run_id = await trigger(nats_url, subject_prefix, t, "fans")
    run = await run_in(stack, run_id, TERMINAL)
    assert run["status"] == "failed"
    steps = {s["step"]: s for s in run["steps"]}
    assert steps["boom"]["status"] == "failed" and steps["fan"]["status"] == "failed"
    assert steps["after_a"]["status"] == "skipped" and steps["never"]["status"] == "skipped"
    scheduled = {e["data"]["step"]: e["data"] for e in events(database_url, run_id, ("step_scheduled",))}
    assert {scheduled[s]["branch"] for s in ("slow_a", "boom", "quick")} == {0, 1, 2}
    assert all(scheduled[s]["parent"] == "fan" for s in ("slow_a", "boom", "quick"))


async def test_a_delay_survives_a_scheduler_restart_in_the_middle_of_the_wait(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    t = await put(stack, "sleepy", [{"name": "wait", "type": "delay", "delay_ms": 4000}, py("after", "brief")])
    run_id = await trigger(nats_url, subject_prefix, t, "sleepy")
    await run_in(stack, run_id, ("waiting",))
    stack.kill("scheduler")
    stack.start("scheduler", "baton.scheduler.main")
    run = await run_in(stack, run_id, TERMINAL)
    assert run["status"] == "completed"
    history = events(database_url, run_id)
    waited = at(history, "step_completed", step="wait") - at(history, "step_started", step="wait")
    assert waited.total_seconds() >= 4.0
    assert [e["type"] for e in history].count("run_resumed") == 1


async def test_cancel_during_a_delay_and_cancelling_again_is_a_conflict(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    t = await put(stack, "cancellable", [{"name": "wait", "type": "delay", "delay_ms": 600_000}, py("x", "brief")])
    run_id = await trigger(nats_url, subject_prefix, t, "cancellable")
    await run_in(stack, run_id, ("waiting",))
    response = await api(stack, "POST", f"/runs/{run_id}/cancel", json={"reason": "not needed"})
    assert response.status_code == 200, response.text
    run = await run_in(stack, run_id, ("canceled",))
    assert {s["step"]: s["status"] for s in run["steps"]} == {"wait": "skipped", "x": "skipped"}
    assert events(database_url, run_id, ("timer_canceled",))
    again = await api(stack, "POST", f"/runs/{run_id}/cancel", json={"reason": "twice"})
    assert again.status_code == 409 and "already canceled" in again.text


async def test_retry_from_failure_keeps_earlier_results_and_redrives_the_dead_letter(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    t = await put(stack, "fixable", [py("extract", "brief"), py("load", "needs_file", **{"with": {"path": str(flag)}}),
                                     py("notify", "brief")])
    run_id = await trigger(nats_url, subject_prefix, t, "fixable", payload={"n": 7})
    run = await run_in(stack, run_id, TERMINAL)
    assert run["status"] == "failed"
    letters = (await api(stack, "GET", "/dead-letters")).json()
    letters = letters["dead_letters"] if isinstance(letters, dict) else letters
    (letter,) = [d for d in letters if d["run_id"] == run_id]
    assert letter["step"] == "load" and "missing" in letter["last_error"]
    refused = await api(stack, "POST", f"/runs/{run_id}/cancel", json={})
    assert refused.status_code == 409
    flag.write_text("ok")
    redrive = await api(stack, "POST", f"/dead-letters/{letter['dead_letter_id']}/redrive", json={"reason": "fixed"})
    assert redrive.status_code == 200, redrive.text
    run = await run_in(stack, run_id, ("completed",))
    assert run["context"]["extract"] == {"n": 7}
    assert run["context"]["load"]["attempt"] == 2
    history = events(database_url, run_id)
    assert [e["data"]["step"] for e in history if e["type"] == "step_scheduled"].count("extract") == 1
    again = await api(stack, "POST", f"/runs/{run_id}/retry", json={})
    assert again.status_code == 409 and "only failed" in again.text


async def test_replay_skips_replay_unsafe_actions_and_dry_run_skips_all(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    t = await put(stack, "mailer", [py("fetch", "brief"), py("email", "brief", replay_safe=False)])
    key = uuid.uuid4().hex
    await publish(nats_url, subject_prefix, t, {"source": "e2e", "payload": {"n": 1}}, key)
    trigger_id = trigger_id_for(TENANT, key)
    original = await run_in(stack, run_id_for(trigger_id, "mailer"), TERMINAL)
    assert original["status"] == "completed"

    async def replay(dry_run: bool) -> dict[str, Any]:
        response = await api(stack, "POST", f"/triggers/{trigger_id}/replay", json={"dry_run": dry_run})
        assert response.status_code in (200, 201, 202), response.text
        (run_id,) = response.json()["data"]["runs"]
        return await run_in(stack, run_id, TERMINAL)

    replayed = await replay(False)
    assert replayed["status"] == "completed" and replayed["is_replay"] is True
    steps = {s["step"]: s["status"] for s in replayed["steps"]}
    assert steps == {"fetch": "completed", "email": "skipped"}
    dry = await replay(True)
    assert {s["step"]: s["status"] for s in dry["steps"]} == {"fetch": "skipped", "email": "skipped"}
    skipped = events(database_url, dry["run_id"], ("step_skipped",))
    assert all(e["data"]["cause"] == "dry_run" and e["data"]["would_run"]["uses"] == "python" for e in skipped)


async def test_one_run_per_slice_unless_the_trigger_asks_to_rerun_it(
    stack: Services, nats_url: str, subject_prefix: str
) -> None:
    t = await put(stack, "daily", [py("load", "brief")])
    first = await trigger(nats_url, subject_prefix, t, "daily", slice_key="2026-11-21")
    await run_in(stack, first, TERMINAL)
    assert await trigger(nats_url, subject_prefix, t, "daily", slice_key="2026-11-21") == first
    rerun = await trigger(nats_url, subject_prefix, t, "daily", slice_key="2026-11-21", rerun_slice=True)
    await run_in(stack, rerun, TERMINAL)

    async def slice_runs() -> list[str] | None:
        listed = (await api(stack, "GET", "/runs", params={"slice_key": "2026-11-21"})).json()["runs"]
        return sorted(r["run_id"] for r in listed) if len(listed) >= 2 else None

    assert await wait_for(slice_runs, timeout=10) == sorted([first, rerun])


async def test_fifty_triggers_never_exceed_two_running_and_start_in_order(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    t = await put(stack, "limited", [py("work", "brief", **{"with": {"seconds": 0.05}})], max_concurrent_runs=2)
    run_ids = [await trigger(nats_url, subject_prefix, t, "limited", payload={"n": n}) for n in range(50)]

    async def all_done() -> bool:
        done = await asyncio.to_thread(events, database_url, None, ("run_completed",))
        return len(done) == 50

    try:
        await wait_for(all_done, timeout=180, message="not every limited run finished")
    except AssertionError:
        done = len(events(database_url, None, ("run_completed",)))
        raise AssertionError(f"{done} of 50 runs completed\n{stack.logs()}") from None
    history = events(database_url, None, ("run_created", "run_started", "run_completed"))
    running, peak = 0, 0
    for event in history:
        running += {"run_started": 1, "run_completed": -1}.get(event["type"], 0)
        peak = max(peak, running)
    assert peak == 2
    created = [e["stream"] for e in history if e["type"] == "run_created"]
    started = [e["stream"] for e in history if e["type"] == "run_started"]
    assert created == [f"run-{r}" for r in run_ids] and started == created


async def test_pause_queues_resume_starts_and_drain_accepts_nothing_new(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    t = await put(stack, "operated", [py("work", "brief")])
    assert (await api(stack, "POST", "/pipelines/operated/pause", json={"reason": "maintenance"})).status_code == 200

    async def state_is(expected: str) -> bool:
        pipeline = (await api(stack, "GET", "/pipelines/operated")).json()
        return bool(pipeline.get("state") == expected or pipeline.get("operator_state") == expected)

    await wait_for(lambda: state_is("paused"), timeout=10)
    queued = await trigger(nats_url, subject_prefix, t, "operated")
    await wait_for(lambda: asyncio.to_thread(events, database_url, queued, ("run_queued",)), timeout=20)
    assert (await run_in(stack, queued, ("pending",)))["status"] == "pending"
    assert not events(database_url, queued, ("run_started",))
    assert (await api(stack, "POST", "/pipelines/operated/resume", json={})).status_code == 200
    assert (await run_in(stack, queued, TERMINAL))["status"] == "completed"
    assert (await api(stack, "POST", "/pipelines/operated/drain", json={})).status_code == 200
    await wait_for(lambda: state_is("draining"), timeout=10)
    key = uuid.uuid4().hex
    await publish(nats_url, subject_prefix, t, {"source": "e2e"}, key)

    async def received() -> dict[str, Any] | None:
        response = await api(stack, "GET", f"/triggers/{trigger_id_for(TENANT, key)}")
        return dict(response.json()) if response.status_code == 200 else None

    recorded = await wait_for(received, timeout=20)
    assert recorded["runs"] == []
    stored = events(database_url, None, ("trigger_received",))[-1]["data"]
    assert stored["skipped"][0]["reason"].startswith("pipeline draining")


@pytest.mark.fault
async def test_a_worker_killed_mid_step_times_out_and_the_retry_runs_on_the_other_worker(
    stack: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    step = py("fragile", "hang_on_first_attempt", timeout_ms=2000, retry={"max_attempts": 2, "backoff_ms": 0})
    t = await put(stack, "fragile", [step])
    run_id = await trigger(nats_url, subject_prefix, t, "fragile")

    async def started() -> dict[str, Any] | None:
        found = await asyncio.to_thread(events, database_url, run_id, ("step_started",))
        return found[0]["data"] if found else None

    first = await wait_for(started, timeout=30, message="attempt 1 never started")
    victim = next(name for name, p in stack.processes.items() if f"-{p.pid}-" in first["worker"])
    assert victim in ("worker", "worker2")
    stack.kill(victim)
    run = await run_in(stack, run_id, TERMINAL)
    assert run["status"] == "completed", run
    history = events(database_url, run_id)
    failed = next(e["data"] for e in history if e["type"] == "step_failed")
    assert failed["timed_out"] is True and failed["attempt"] == 1
    second = [e["data"] for e in history if e["type"] == "step_started" and e["data"]["attempt"] == 2]
    assert second and second[0]["worker"] != first["worker"]
