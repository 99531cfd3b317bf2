"""End-to-end fixtures: the runner, a worker and the API as real child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from baton.devstack.ports import find_free_port
from tests.helpers import wait_for_sync

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Services:
    """Handles on the service processes of one test, with their shared environment."""

    env: dict[str, str]
    api_url: str
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, module: str, **extra_env: str) -> None:
        """Start ``python -m module`` as service ``name`` (its output goes to a log file)."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**self.env, **extra_env},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        """SIGKILL a service: no shutdown code runs."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        """SIGTERM every service, SIGKILL what does not exit in time."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    def logs(self) -> str:
        """Every service's output, for failure messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.log_dir.glob("*.log")))


@contextlib.contextmanager
def running_services(
    database_url: str, nats_url: str, subject_prefix: str, log_dir: Path,
    processes: dict[str, str], **extra_env: str,
) -> Iterator[Services]:
    """Start ``processes`` (name -> module) on one database and subject prefix; stop them all on exit."""
    port = find_free_port()
    env = {
        **os.environ,
        "BATON_DATABASE_URL": database_url,
        "BATON_NATS_URL": nats_url,
        "BATON_SUBJECT_PREFIX": subject_prefix,
        "BATON_PORT": str(port),
        "BATON_TRIGGER_ACK_WAIT_SECONDS": "3",
        "BATON_REDISPATCH_AFTER_SECONDS": "2",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    svc = Services(env=env, api_url=f"http://127.0.0.1:{port}", log_dir=log_dir)
    for name, module in processes.items():
        svc.start(name, module)

    def api_ready() -> bool:
        try:
            return httpx.get(f"{svc.api_url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for_sync(api_ready, timeout=60, message="API never became ready")
        yield svc
    finally:
        svc.stop_all()


@pytest.fixture
def services(database_url: str, nats_url: str, subject_prefix: str, tmp_path: Path) -> Iterator[Services]:
    """Runner, worker and API processes sharing a fresh database and subject prefix."""
    processes = {"api": "baton.api.main", "runner": "baton.runner.main", "worker": "baton.runner.worker"}
    with running_services(database_url, nats_url, subject_prefix, tmp_path, processes) as svc:
        yield svc


def wait_seconds(deadline: float) -> float:
    """Seconds left until a monotonic deadline (never negative)."""
    return max(deadline - time.monotonic(), 0.0)
