"""Lifecycle hooks for integrators: a failed run reaches a plain NATS subscriber, as docs/hooks.md shows.

The runner and worker run as processes; the subscribers below use nothing but nats-py: a core
subscription, a durable JetStream pull consumer on the EVENTS stream, and the example script
examples/alert_on_failure.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from baton.events.subjects import Subjects
from baton.events.trigger import run_id_for, trigger_id_for
from tests.e2e.conftest import REPO, Services
from tests.e2e.test_trigger_to_run import TENANT, finished_run, pipeline, publish, put_pipeline
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


async def test_run_failed_reaches_core_and_jetstream_subscribers_and_the_example(
    services: Services, nats_url: str, subject_prefix: str
) -> None:
    subjects = Subjects(subject_prefix)
    put_pipeline(
        services,
        pipeline(
            "nightly-export",
            [{"name": "export", "type": "action", "uses": "shell", "with": {"command": "echo 'no space' >&2; exit 4"}}],
            trigger_type="export.due",
        ),
    )
    nc = await nats.connect(nats_url)
    try:
        # Core NATS: at-most-once, only while connected; fine for a live dashboard.
        live: list[Msg] = []

        async def on_event(msg: Msg) -> None:
            live.append(msg)

        await nc.subscribe(f"{subject_prefix}.evt.*.run.run_failed", cb=on_event)
        await nc.flush()

        key = uuid.uuid4().hex
        await publish(nats_url, subject_prefix, "export.due", {"source": "cron"}, key)
        run_id = run_id_for(trigger_id_for(TENANT, key), "nightly-export")
        run = await finished_run(services, run_id)
        assert run["status"] == "failed", run

        await wait_for(lambda: bool(live), timeout=15, message="run_failed on the core subscription")
        assert live[0].subject == subjects.event(TENANT, "run", "run_failed")

        # JetStream: a durable pull consumer on the EVENTS stream, filtered to one event type.
        js = nc.jetstream()
        consumer = await js.pull_subscribe(
            f"{subject_prefix}.evt.{TENANT}.run.run_failed",
            durable="alerts",
            stream=subjects.events_stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        (msg,) = await consumer.fetch(batch=1, timeout=10)
        await msg.ack()
        event: dict[str, Any] = json.loads(msg.data)
        assert msg.data == live[0].data
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == event["event_id"]
        assert msg.headers["Baton-Stream"] == f"run-{run_id}" == event["stream_id"]
        assert (event["type"], event["tenant"], event["stream_type"]) == ("run_failed", TENANT, "run")
        assert event["data"]["run_id"] == run_id and event["data"]["step"] == "export"
        assert "exited with code 4" in event["data"]["error"] and "no space" in event["data"]["error"]
        assert {"position", "stream_version", "schema_version", "metadata", "recorded_at"} <= set(event)
    finally:
        await nc.close()

    # The runnable example from docs/hooks.md, as an operator would start it.
    example = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "examples" / "alert_on_failure.py"),
        "--nats-url", nats_url, "--prefix", subject_prefix, "--tenant", TENANT,
        "--deliver", "all", "--max-alerts", "1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(example.communicate(), timeout=30)
    finally:
        if example.returncode is None:
            example.kill()
            await example.wait()
    assert example.returncode == 0, stderr.decode()
    alert = json.loads(stdout.decode().strip())
    assert alert["alert"] == "run_failed" and alert["run_id"] == run_id and alert["step"] == "export"
    assert alert["event_id"] == event["event_id"]
