"""Monitors through the HTTP API and the CLI, with a real monitor service behind NATS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats
import pytest

from baton.events.postgres_store import PostgresEventStore
from tests.helpers import wait_for
from tests.integration.monitoring import monitor_settings, running_monitor, trigger_bodies
from tests.integration.test_api import (
    Api,
    api,
    api_settings,
    invoke,
    migrated,
    pipeline_body,
    running_api,
    served_api,
)

pytestmark = pytest.mark.integration

TENANT = "acme"
BASE = f"/v1/tenants/{TENANT}"
__all__ = ["api", "migrated", "served_api"]  # fixtures this module uses


def file_monitor(directory: Path, **fields: Any) -> dict[str, Any]:
    return {"type": "file", "pipeline": "orders", "interval": "1h",
            "settings": {"directory": str(directory), "glob": "*.csv"}, **fields}


async def put_pipeline(api: Api, name: str = "orders") -> None:
    response = await api.client.put(f"{BASE}/pipelines/{name}", json=pipeline_body())
    assert response.status_code in (200, 201), response.text


async def bucket_entry(api: Api, name: str) -> dict[str, Any] | None:
    kv = await api.app.state.resources.js.key_value(api.subjects.defs_bucket)
    try:
        entry = await kv.get(f"monitor.{TENANT}.{name}")
    except Exception:
        return None
    return json.loads(entry.value) if entry.value else None


async def test_put_validates_the_definition_and_its_pipeline(api: Api, tmp_path: Path) -> None:
    missing = await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path))
    assert missing.status_code == 422
    (problem,) = missing.json()["detail"]
    assert problem["loc"] == ["body", "pipeline"] and "'orders' does not exist" in problem["msg"]

    await put_pipeline(api)
    bad = await api.client.put(f"{BASE}/monitors/landing", json={"type": "file", "pipeline": "orders", "settings": {}})
    assert bad.status_code == 422
    assert ["body", "file", "settings", "directory"] in [p["loc"] for p in bad.json()["detail"]]
    upstream = await api.client.put(
        f"{BASE}/monitors/chain", json={"type": "upstream", "pipeline": "orders", "settings": {"pipeline": "nope"}}
    )
    assert upstream.status_code == 422
    assert upstream.json()["detail"][0]["loc"] == ["body", "settings", "pipeline"]
    other_name = await api.client.put(f"{BASE}/monitors/landing", json={**file_monitor(tmp_path), "name": "x"})
    assert other_name.status_code == 422


async def test_versions_list_get_delete_and_the_bucket(api: Api, tmp_path: Path) -> None:
    await put_pipeline(api)
    first = await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path))
    assert (first.status_code, first.json()) == (201, {"name": "landing", "version": 1, "changed": True})
    same = await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path))
    assert (same.status_code, same.json()["version"]) == (200, 1)
    changed = await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path, interval=5))
    assert (changed.status_code, changed.json()["version"]) == (201, 2)

    doc = (await api.client.get(f"{BASE}/monitors/landing")).json()
    assert doc["version"] == 2 and doc["type"] == "file" and doc["pipeline"] == "orders"
    assert doc["definition"]["interval"] == 5 and [v["version"] for v in doc["versions"]] == [1, 2]
    assert [m["name"] for m in (await api.client.get(f"{BASE}/monitors")).json()["monitors"]] == ["landing"]
    assert (await api.client.get("/v1/tenants/other/monitors/landing")).status_code == 404
    entry = await bucket_entry(api, "landing")
    assert entry is not None and entry["version"] == 2 and entry["created_at"]

    deleted = await api.client.delete(f"{BASE}/monitors/landing")
    assert deleted.status_code == 200
    assert (await api.client.get(f"{BASE}/monitors/landing")).status_code == 404
    assert (await api.client.delete(f"{BASE}/monitors/landing")).status_code == 404
    assert await bucket_entry(api, "landing") is None
    again = await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path, interval=5))
    assert (again.status_code, again.json()["version"]) == (201, 3)


async def test_startup_heals_the_bucket(
    api: Api, migrated: PostgresEventStore, database_url: str, nats_url: str, subject_prefix: str, tmp_path: Path
) -> None:
    await put_pipeline(api)
    assert (await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path))).status_code == 201
    kv = await api.app.state.resources.js.key_value(api.subjects.defs_bucket)
    await kv.delete(f"monitor.{TENANT}.landing")  # as if the API crashed between append and put
    async with running_api(api_settings(database_url, nats_url, subject_prefix), migrated) as second:
        assert (await bucket_entry(second, "landing") or {}).get("version") == 1


async def test_evaluate_now_ticks_and_cursor_with_a_running_monitor_service(
    api: Api, database_url: str, nats_url: str, subject_prefix: str, tmp_path: Path
) -> None:
    await put_pipeline(api)
    (tmp_path / "a.csv").write_text("a")
    assert (await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path))).status_code == 201
    no_service = await api.client.post(f"{BASE}/monitors/landing/evaluate")
    assert no_service.status_code == 503 and "no monitor service" in no_service.json()["detail"]

    async with running_monitor(monitor_settings(database_url, nats_url, subject_prefix)):
        # The interval is an hour: after the first tick, only "evaluate now" ticks.
        await wait_for(lambda: _ticks(api, "landing", 1), message="first tick")
        (tmp_path / "b.csv").write_text("b")
        now = await api.client.post(f"{BASE}/monitors/landing/evaluate")
        assert now.status_code == 200, now.text
        result = now.json()
        assert result["status"] == "evaluated" and result["tick"]["cause"] == "manual"
        assert [f["observation_key"].split("|")[0] for f in result["tick"]["fired"]] == ["b.csv"]
        quiet = (await api.client.post(f"{BASE}/monitors/landing/evaluate")).json()
        assert quiet["tick"]["decision"] == "no_fire"

    await api.caught_up()
    page = (await api.client.get(f"{BASE}/monitors/landing/ticks", params={"limit": 2})).json()
    assert [t["cause"] for t in page["ticks"]] == ["manual", "manual"]
    assert page["ticks"][0]["seq"] > page["ticks"][1]["seq"] and page["next_before"] == page["ticks"][1]["seq"]
    rest = (await api.client.get(f"{BASE}/monitors/landing/ticks", params={"before": page["next_before"]})).json()
    assert [t["cause"] for t in rest["ticks"]] == ["interval"] and rest["next_before"] is None
    doc = (await api.client.get(f"{BASE}/monitors/landing")).json()
    assert sorted(s.split("|")[0] for s in doc["cursor"]["seen"]) == ["a.csv", "b.csv"]
    assert doc["fires"] == 2 and doc["ticks"] == 3 and doc["last_tick"]["decision"] == "no_fire"

    gateway = {"type": "file", "pipeline": "orders", "runs_on": "gateway", "settings": {"directory": "/remote"}}
    assert (await api.client.put(f"{BASE}/monitors/remote", json=gateway)).status_code == 201
    skipped = (await api.client.post(f"{BASE}/monitors/remote/evaluate")).json()
    assert skipped["status"] == "skipped" and "gateway" in skipped["message"]


async def test_gateway_report_fires_through_the_monitor_service(
    api: Api, database_url: str, nats_url: str, subject_prefix: str, tmp_path: Path
) -> None:
    await put_pipeline(api)
    report_monitor = {"type": "report", "pipeline": "orders", "condition": "report.observation.rows > 0"}
    assert (await api.client.put(f"{BASE}/monitors/nightly", json=report_monitor)).status_code == 201
    assert (await api.client.put(f"{BASE}/monitors/landing", json=file_monitor(tmp_path))).status_code == 201
    url = f"/api/agent/monitors/{TENANT}.nightly/report"
    async with running_monitor(monitor_settings(database_url, nats_url, subject_prefix)):
        fired = await api.client.post(url, json={"report_id": "n-1", "observation": {"rows": 12}, "gateway": "gw1"})
        assert fired.status_code == 200, fired.text
        tick = fired.json()["tick"]
        assert tick["cause"] == "report" and tick["decision"] == "fire" and len(tick["fired"]) == 1
        repeat = (await api.client.post(url, json={"report_id": "n-1", "observation": {"rows": 12}})).json()
        assert repeat["tick"]["fired"] == [] and "already handled" in repeat["tick"]["reason"]
        empty = (await api.client.post(url, json={"report_id": "n-2", "observation": {"rows": 0}})).json()
        assert empty["tick"]["decision"] == "no_fire"
        failed = (await api.client.post(url, json={"report_id": "n-3", "error": "disk offline"})).json()
        assert failed["tick"]["decision"] == "error" and "disk offline" in failed["tick"]["error"]
        managed = await api.client.post(f"/api/agent/monitors/{TENANT}.landing/report", json={"observation": {}})
        assert managed.status_code == 409
        unknown = await api.client.post(f"/api/agent/monitors/{TENANT}.nope/report", json={"observation": {}})
        assert unknown.status_code == 404
    nc = await nats.connect(nats_url)
    try:
        bodies = await trigger_bodies(nc, api.subjects)
    finally:
        await nc.close()
    (body,) = bodies
    assert body["payload"]["observation"]["report"]["gateway"] == "gw1" and body["pipeline"] == "orders"


async def test_cli_apply_accepts_monitor_documents(api: Api, served_api: str, tmp_path: Path) -> None:
    await put_pipeline(api)
    file = tmp_path / "monitors.yaml"
    file.write_text(
        f"kind: monitor\nname: landing\ntype: file\npipeline: orders\ninterval: 30s\n"
        f"settings: {{directory: {tmp_path}}}\n---\n"
        "monitor:\n  name: nightly\n  type: report\n  pipeline: orders\n"
    )
    applied = await invoke("apply", str(file), "--tenant", TENANT, "--api-url", served_api, "--json")
    assert applied.exit_code == 0, applied.output
    assert [(r["kind"], r["name"], r["version"]) for r in json.loads(applied.output)] == [
        ("monitor", "landing", 1), ("monitor", "nightly", 1)
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: monitor\nname: bad\ntype: sql\npipeline: orders\nsettings: {query: select 1}\n")
    rejected = await invoke("apply", str(broken), "--tenant", TENANT, "--api-url", served_api)
    assert rejected.exit_code == 1 and "connection" in rejected.output


async def _ticks(api: Api, name: str, count: int) -> bool:
    from baton.events.stream_ids import monitor_ticks_stream

    return len(await api.store.read_stream(monitor_ticks_stream(TENANT, name))) >= count


async def test_upstream_monitor_chains_two_pipelines_through_the_runner(
    api: Api, database_url: str, nats_url: str, subject_prefix: str
) -> None:
    import asyncio

    from baton.runner.service import RunnerService
    from baton.runner.settings import RunnerSettings
    from baton.runner.worker import Worker

    def pipeline(trigger_type: str) -> dict[str, Any]:
        return {"trigger": {"type": trigger_type},
                "steps": [{"name": "work", "type": "action", "uses": "shell", "with": {"command": "echo ok"}}]}

    for name, trigger_type in (("extract", "extract.go"), ("load", "load.go")):
        assert (await api.client.put(f"{BASE}/pipelines/{name}", json=pipeline(trigger_type))).status_code == 201
    chained = {"type": "upstream", "pipeline": "load", "interval": 1, "settings": {"pipeline": "extract"}}
    assert (await api.client.put(f"{BASE}/monitors/after-extract", json=chained)).status_code == 201

    stop = asyncio.Event()
    runner = RunnerService(RunnerSettings(database_url=database_url, nats_url=nats_url, subject_prefix=subject_prefix))
    worker = Worker(nats_url, api.subjects, name="w-chain")
    tasks = [asyncio.create_task(runner.run(stop)), asyncio.create_task(worker.run(stop))]
    try:
        async with running_monitor(monitor_settings(database_url, nats_url, subject_prefix)):
            sent = await api.client.post(f"{BASE}/triggers", json={"type": "extract.go", "payload": {"day": 1}})
            assert sent.status_code == 202, sent.text

            async def load_run() -> dict[str, Any] | None:
                await api.caught_up()
                runs = (await api.client.get(f"{BASE}/runs", params={"pipeline": "load"})).json()["runs"]
                done = [r for r in runs if r["status"] == "completed"]
                return done[0] if done else None

            load = await wait_for(load_run, timeout=60, message="the load pipeline ran after extract")
            extract = (await api.client.get(f"{BASE}/runs", params={"pipeline": "extract"})).json()["runs"]
            assert len(extract) == 1
            detail = (await api.client.get(f"{BASE}/runs/{load['run_id']}")).json()
            trigger = detail["trigger"]
            assert trigger["triggered_by"] == "monitor" and trigger["source"] == "monitor:after-extract"
            assert trigger["payload"]["observation"]["upstream"]["run_id"] == extract[0]["run_id"]
            # A completion fires once: more ticks, no second load run.
            count = len(await api.store.read_stream("monitor_ticks-acme.after-extract"))
            await wait_for(lambda: _ticks(api, "after-extract", count + 2), message="more ticks")
            await api.caught_up()
            assert len((await api.client.get(f"{BASE}/runs", params={"pipeline": "load"})).json()["runs"]) == 1
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
