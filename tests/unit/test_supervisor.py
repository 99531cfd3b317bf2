"""The generic supervisor: prefixed output, restarts with backoff, ordered shutdown.

Lives beside the unit tests but spawns real (tiny Python) child processes, hence `integration`.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys

import pytest

from baton.devstack.supervisor import RestartPolicy, Supervisor
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FAST_RESTARTS = RestartPolicy(initial_delay=0.05, max_delay=0.2, stable_after=10.0)

# Installs its SIGTERM behaviour *before* announcing itself, so the test only stops it once the
# behaviour it checks is in place.
GRACEFUL = """
import signal, sys, time
name = sys.argv[1]
def bye(*_):
    print(f"bye from {name}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print(f"ready {name}", flush=True)
while True:
    time.sleep(1)
"""
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready stubborn", flush=True)
while True:
    time.sleep(1)
"""


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-u", "-c", code, *args]


def lines(output: io.StringIO) -> list[str]:
    return output.getvalue().splitlines()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_output_lines_are_prefixed_with_the_child_name() -> None:
    output = io.StringIO()
    supervisor = Supervisor(output=output, restart_policy=FAST_RESTARTS)
    supervisor.add("web", python("print('hello'); print('world'); import time; time.sleep(60)"))
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop, handle_signals=False))
    try:
        await wait_for(lambda: "world" in output.getvalue(), message="child output")
        child_lines = [line for line in lines(output) if not line.startswith("supervisor")]
        assert child_lines == ["web        | hello", "web        | world"]
        assert "\033[" not in output.getvalue()  # no colour when the output is not a TTY
    finally:
        stop.set()
        await run


async def test_a_crashing_child_is_restarted_with_its_exit_code_logged() -> None:
    output = io.StringIO()
    supervisor = Supervisor(output=output, restart_policy=FAST_RESTARTS)
    supervisor.add("crasher", python("print('boot'); raise SystemExit(3)"))
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop, handle_signals=False))
    try:
        await wait_for(lambda: supervisor.restarts_of("crasher") >= 2, message="two restarts")
        text = output.getvalue()
        assert "crasher: exited unexpectedly with code 3" in text
        assert "crasher: restart #2" in text
        assert sum(1 for line in lines(output) if re.fullmatch(r"crasher\s+\| boot", line)) >= 2
    finally:
        stop.set()
        await run


def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy(initial_delay=0.5, max_delay=4.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_stop_terminates_children_in_reverse_start_order() -> None:
    output = io.StringIO()
    supervisor = Supervisor(output=output, restart_policy=FAST_RESTARTS, stop_timeout=0.5)
    supervisor.add("first", python(GRACEFUL, "first"))
    supervisor.add("second", python(GRACEFUL, "second"))
    supervisor.add("stubborn", python(STUBBORN))
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop, handle_signals=False))
    await wait_for(
        lambda: all(f"ready {name}" in output.getvalue() for name in ("first", "second", "stubborn")),
        message="all children ready",
    )
    pids = [supervisor.pid_of(name) for name in ("first", "second", "stubborn")]
    assert all(pid is not None for pid in pids)

    stop.set()
    await asyncio.wait_for(run, timeout=10)

    text = lines(output)
    stopped = [line for line in text if ": stopped (exit code" in line]
    assert [line.split("supervisor | ")[1].split(":")[0] for line in stopped] == ["stubborn", "second", "first"]
    assert any("stubborn: did not stop" in line for line in text)  # SIGKILL after the deadline
    assert any(re.fullmatch(r"first\s+\| bye from first", line) for line in text)
    assert not any("restart #" in line for line in text)  # a requested stop is not a crash
    assert not any(pid_alive(pid) for pid in pids if pid is not None)


async def test_a_missing_executable_is_reported_and_retried() -> None:
    output = io.StringIO()
    supervisor = Supervisor(output=output, restart_policy=FAST_RESTARTS)
    supervisor.add("ghost", ["/nonexistent/baton-ghost"])
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop, handle_signals=False))
    try:
        await wait_for(lambda: supervisor.restarts_of("ghost") >= 1, message="retry after failed spawn")
        assert "failed to start '/nonexistent/baton-ghost'" in output.getvalue()
    finally:
        stop.set()
        await run
