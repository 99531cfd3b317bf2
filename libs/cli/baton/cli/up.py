"""``baton up``: the whole system on a laptop, no Docker needed.

Starts a real nats-server (JetStream) and a real PostgreSQL from their PyPI packages
under a data directory (unless NATS_URL / DATABASE_URL point at existing servers),
runs migrations, then supervises the runner, scheduler, worker(s), API and monitor service as child processes
with prefixed logs, restart on crash and a clean shutdown on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import yaml

from baton.devstack.ports import PortInUseError, ensure_port_free
from baton.devstack.stack import DevStack
from baton.devstack.supervisor import Supervisor
from baton.events.db import make_engine
from baton.events.migrations import migrate

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "hello.yaml"


async def _migrate(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def _apply_example(api_url: str, tenant: str, deadline_seconds: float = 60.0) -> None:
    """Wait for the API to be ready, then PUT the example pipeline (best effort, reported)."""
    if not EXAMPLE.exists():
        return
    document = yaml.safe_load(EXAMPLE.read_text())
    deadline = time.monotonic() + deadline_seconds
    with httpx.Client(base_url=api_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    response = client.put(f"/v1/tenants/{tenant}/pipelines/{document['name']}", json=document)
                    print(f"up | example pipeline {document['name']!r} applied for tenant {tenant!r}: "
                          f"{response.status_code} {response.text}", flush=True)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)  # polling the API's readiness at a human pace
    print("up | the API did not become ready; example pipeline not applied", flush=True)


def run_up(
    data_dir: Path,
    nats_port: int,
    pg_port: int,
    api_port: int,
    workers: int,
    example: bool,
    tenant: str = "demo",
) -> int:
    """Start everything and block until Ctrl-C; returns the process exit code."""
    nats_url = os.environ.get("BATON_NATS_URL") or os.environ.get("NATS_URL")
    database_url = os.environ.get("BATON_DATABASE_URL") or os.environ.get("DATABASE_URL")
    stack: DevStack | None = None
    try:
        ensure_port_free("127.0.0.1", api_port, "BATON_API_PORT (or --api-port)")
        if not (nats_url and database_url):
            data_dir.mkdir(parents=True, exist_ok=True)
            stack = DevStack(data_dir=data_dir.resolve(), nats_port=nats_port, pg_port=pg_port)
            print(f"up | starting nats-server on :{nats_port} and PostgreSQL on :{pg_port} in {data_dir}", flush=True)
            stack.start()
            nats_url = nats_url or stack.nats_url
            database_url = database_url or stack.database_url
    except PortInUseError as exc:
        print(f"up | error: {exc}", file=sys.stderr)
        return 2
    if not (nats_url and database_url):  # unreachable: the embedded stack supplied both
        return 2
    try:
        asyncio.run(_migrate(database_url))
        env = {
            **os.environ,
            "BATON_NATS_URL": nats_url,
            "BATON_DATABASE_URL": database_url,
            "BATON_PORT": str(api_port),
            "PYTHONUNBUFFERED": "1",
        }
        supervisor = Supervisor()
        python = sys.executable
        supervisor.add("runner", [python, "-m", "baton.runner.main"], env)
        supervisor.add("scheduler", [python, "-m", "baton.scheduler.main"], env)
        for index in range(workers):
            name = f"worker{index + 1}" if workers > 1 else "worker"
            supervisor.add(name, [python, "-m", "baton.runner.worker"], env)
        supervisor.add("api", [python, "-m", "baton.api.main"], env)
        supervisor.add("monitor", [python, "-m", "baton.monitor.main"], env)
        api_url = f"http://127.0.0.1:{api_port}"
        print(f"up | NATS {nats_url}  PostgreSQL {database_url}", flush=True)
        print(f"up | API {api_url}  (OpenAPI: {api_url}/docs)  Ctrl-C stops everything", flush=True)

        async def main() -> None:
            stop = asyncio.Event()
            supervised = asyncio.create_task(supervisor.run(stop))
            if example:
                await asyncio.to_thread(_apply_example, api_url, tenant)
            await supervised

        asyncio.run(main())
    finally:
        if stack is not None:
            print("up | stopping PostgreSQL and nats-server", flush=True)
            stack.stop()
    return 0
