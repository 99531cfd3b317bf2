"""A worker process stopped with SIGTERM finishes the step it is running and reports it before exiting."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from baton.events.messages import StepOutcome, StepProgress
from baton.events.subjects import Subjects
from tests.e2e.conftest import REPO
from tests.helpers import wait_for
from tests.integration.test_worker import dispatch, listen, make_item, parse_reply

pytestmark = pytest.mark.e2e


@pytest.fixture
def worker_process(
    nats_url: str, subject_prefix: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`python -m baton.runner.worker` named w-term, its output in a log file; killed if still alive at the end."""
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "BATON_NATS_URL": nats_url,
        "BATON_SUBJECT_PREFIX": subject_prefix,
        "BATON_WORKER_NAME": "w-term",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "baton.runner.worker"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_sigterm_lets_the_running_step_finish_and_report(
    worker_process: tuple[subprocess.Popen[bytes], Path], nats_url: str, subject_prefix: str, tmp_path: Path
) -> None:
    process, log_path = worker_process
    subjects = Subjects(subject_prefix)
    release = tmp_path / "release"
    nc = await nats.connect(nats_url)
    try:
        await wait_for(lambda: "serving" in log_path.read_text(), timeout=30, message="worker never served")
        # The step waits for a file the test creates after the SIGTERM (a bounded loop, not a sleep).
        command = f'i=0; while [ ! -f {release} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo done'
        item = make_item(subjects, "shell", {"command": command})
        received, at_least = await listen(nc, item.reply_subject)
        await dispatch(nc, subjects, item)
        await at_least(1)
        assert isinstance(parse_reply(received[0]), StepProgress)
        process.send_signal(signal.SIGTERM)
        await wait_for(lambda: "stopping: 1 items in flight" in log_path.read_text(), timeout=15, message="no stop")
        release.touch()
        await at_least(2)
        outcome = parse_reply(received[-1])
        assert isinstance(outcome, StepOutcome) and outcome.ok, outcome
        assert outcome.result["stdout"] == "done" and outcome.worker == "w-term"
        assert await asyncio.to_thread(process.wait, 30) == 0, log_path.read_text()
    finally:
        await nc.close()
