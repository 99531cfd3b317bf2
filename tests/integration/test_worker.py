"""The worker against a real NATS server: replies, queue-group sharing, duplicates, DLQ, graceful stop."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from baton.events.messages import StepLogBatch, StepOutcome, StepProgress, WorkItem
from baton.events.subjects import Subjects
from baton.runner.worker import Worker, flush_confirmed
from tests.helpers import wait_for
from tests.integration import handlers

pytestmark = pytest.mark.integration

HANDLERS = "tests.integration.handlers"
TENANT = "acme"

RunningWorker = Callable[..., AbstractAsyncContextManager[tuple[Worker, asyncio.Task[None], asyncio.Event]]]


@pytest.fixture
def subjects(subject_prefix: str) -> Subjects:
    return Subjects(subject_prefix)


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NatsClient]:
    """A plain nats-py client playing the runner's part."""
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def running_worker(nats_url: str, subjects: Subjects) -> RunningWorker:
    """Start a Worker in this test's loop; on exit, stop it and require a clean finish."""

    @asynccontextmanager
    async def start(**options: Any) -> AsyncIterator[tuple[Worker, asyncio.Task[None], asyncio.Event]]:
        worker = Worker(nats_url, subjects, **options)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.wait_for(worker.ready.wait(), timeout=15)
            yield worker, task, stop
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    return start


def make_item(subjects: Subjects, uses: str, settings: dict[str, Any], **extra: Any) -> WorkItem:
    """A WorkItem for a fresh run, replying on that run's result subject."""
    run_id = extra.pop("run_id", f"r-{uuid.uuid4().hex[:10]}")
    step = extra.pop("step", "s1")
    attempt = extra.pop("attempt", 1)
    fields: dict[str, Any] = {
        "tenant": TENANT,
        "run_id": run_id,
        "pipeline": "demo",
        "pipeline_version": 1,
        "step": step,
        "step_type": "action",
        "uses": uses,
        "settings": settings,
        "attempt": attempt,
        "idempotency_key": f"{run_id}:{step}:{attempt}",
        "trigger": {"n": 2},
        "context": {"earlier": {"v": 1}},
        "config": {"env": "test"},
        "reply_subject": subjects.result(TENANT, run_id),
    }
    fields.update(extra)
    return WorkItem.model_validate(fields)


async def dispatch(nc: NatsClient, subjects: Subjects, item: WorkItem) -> None:
    """Publish `item` the way the runner does."""
    await nc.publish(subjects.work("managed", item.tenant, item.pipeline), item.model_dump_json().encode())
    await flush_confirmed(nc)


async def listen(nc: NatsClient, subject: str) -> tuple[list[Msg], Callable[[int], Awaitable[list[Msg]]]]:
    """Collect every message on `subject`; the returned coroutine waits until `n` have arrived."""
    received: list[Msg] = []

    async def collect(msg: Msg) -> None:
        received.append(msg)

    await nc.subscribe(subject, cb=collect)
    await flush_confirmed(nc)  # the worker's replies must find this subscription in place

    async def at_least(n: int) -> list[Msg]:
        await wait_for(lambda: len(received) >= n, timeout=15, message=f"{n} messages on {subject}")
        return received

    return received, at_least


def parse_reply(msg: Msg) -> StepProgress | StepOutcome | StepLogBatch:
    data = json.loads(msg.data)
    if data["kind"] == "started":
        return StepProgress.model_validate(data)
    if data["kind"] == "logs":
        return StepLogBatch.model_validate(data)
    return StepOutcome.model_validate(data)


async def test_python_step_reports_progress_then_outcome(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    async with running_worker(name="w-one") as _:
        item = make_item(subjects, "python", {"ref": f"{HANDLERS}:add", "a": 2, "b": 40})
        _, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        first, second = [parse_reply(msg) for msg in await at_least(2)]
    assert isinstance(first, StepProgress)
    assert (first.run_id, first.step, first.attempt, first.worker) == (item.run_id, "s1", 1, "w-one")
    assert isinstance(second, StepOutcome)
    assert second.ok and second.error is None
    assert second.result == {"sum": 42}
    assert second.started_at == first.started_at and second.duration_ms >= 0


async def test_async_handler_receives_the_items_inputs(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    async with running_worker():
        item = make_item(subjects, "python", {"ref": f"{HANDLERS}:echo"}, attempt=3)
        _, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        outcome = parse_reply((await at_least(2))[1])
    assert isinstance(outcome, StepOutcome) and outcome.ok, outcome
    assert outcome.result == {
        "trigger": {"n": 2},
        "run": {"id": item.run_id, "pipeline": "demo", "pipeline_version": 1, "tenant": TENANT},
        "step": "s1",
        "results": {"earlier": {"v": 1}},
        "config": {"env": "test"},
        "attempt": 3,
        "idempotency_key": f"{item.run_id}:s1:3",
    }


async def test_failures_and_logs_travel_in_the_outcome(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    async with running_worker():
        failing = make_item(subjects, "python", {"ref": f"{HANDLERS}:explode"})
        chatty = make_item(subjects, "python", {"ref": f"{HANDLERS}:chatty"})
        _, failing_replies = await listen(client, failing.reply_subject)
        _, chatty_replies = await listen(client, chatty.reply_subject)
        await dispatch(client, subjects, failing)
        await dispatch(client, subjects, chatty)
        failed = parse_reply((await failing_replies(2))[1])
        logged = parse_reply((await chatty_replies(2))[1])
    assert isinstance(failed, StepOutcome) and not failed.ok
    assert failed.error == f"python: {HANDLERS}:explode raised ValueError: boom in s1"
    assert isinstance(logged, StepOutcome) and logged.ok and logged.result == "done"
    assert [(line.level, line.message, line.data) for line in logged.logs] == [
        ("info", "line 0", {"index": 0}),
        ("info", "line 1", {"index": 1}),
        ("info", "line 2", {"index": 2}),
        ("warning", "careful", None),
    ]


async def test_two_workers_share_a_queue_group_without_running_an_item_twice(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    received, at_least = await listen(client, subjects.result_wildcard)
    async with running_worker(name="w-a"), running_worker(name="w-b"):
        items = [make_item(subjects, "python", {"ref": f"{HANDLERS}:record"}) for _ in range(20)]
        for item in items:
            await dispatch(client, subjects, item)
        await at_least(40)
    replies = [parse_reply(msg) for msg in received]
    outcomes = [reply for reply in replies if isinstance(reply, StepOutcome)]
    assert len(outcomes) == 20 and all(outcome.ok for outcome in outcomes)
    assert sorted(outcome.run_id for outcome in outcomes) == sorted(item.run_id for item in items)
    assert all(handlers.EXECUTIONS[item.idempotency_key] == 1 for item in items)
    # The chance that one worker of two receives all 20 items is about 2 in a million.
    assert {outcome.worker for outcome in outcomes} == {"w-a", "w-b"}


async def test_redelivered_item_is_answered_without_running_again(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    async with running_worker():
        item = make_item(subjects, "python", {"ref": f"{HANDLERS}:record"})
        received, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        await at_least(2)
        await dispatch(client, subjects, item)  # the runner re-dispatching after a lost reply
        await at_least(3)
    replies = [parse_reply(msg) for msg in received]
    assert [type(reply) for reply in replies] == [StepProgress, StepOutcome, StepOutcome]
    assert replies[1] == replies[2]
    assert handlers.EXECUTIONS[item.idempotency_key] == 1


async def test_duplicate_of_an_item_in_flight_is_ignored(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    gate = uuid.uuid4().hex
    handlers.GATES[gate] = asyncio.Event()
    async with running_worker():
        item = make_item(subjects, "python", {"ref": f"{HANDLERS}:gated"}, trigger={"gate": gate})
        received, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        await at_least(1)
        await dispatch(client, subjects, item)
        # One subscription hands messages to the worker in order: once this later item is
        # answered, the duplicate before it has been dealt with.
        sentinel = make_item(subjects, "python", {"ref": f"{HANDLERS}:add", "a": 0, "b": 0})
        _, sentinel_replies = await listen(client, sentinel.reply_subject)
        await dispatch(client, subjects, sentinel)
        await sentinel_replies(2)
        handlers.GATES[gate].set()
        await at_least(2)
    # The stopped worker confirmed its publishes with the server, which queued them to this
    # client ahead of the PONG that ends this flush: every reply it ever sent is in `received`.
    await flush_confirmed(client)
    assert [type(parse_reply(msg)) for msg in received] == [StepProgress, StepOutcome]


async def test_malformed_work_goes_to_the_dlq_and_the_worker_carries_on(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    dead, dead_at_least = await listen(client, subjects.dlq("work"))
    async with running_worker(name="w-dlq"):
        await client.publish(subjects.work("managed", TENANT, "demo"), b'{"kind": "work", "run_id": ')
        await client.publish(subjects.work("managed", TENANT, "demo"), b'{"kind": "work"}')
        await flush_confirmed(client)
        await dead_at_least(2)
        item = make_item(subjects, "python", {"ref": f"{HANDLERS}:add", "a": 1, "b": 1})
        _, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        outcome = parse_reply((await at_least(2))[1])
    assert [msg.data for msg in dead] == [b'{"kind": "work", "run_id": ', b'{"kind": "work"}']
    headers = [msg.headers or {} for msg in dead]
    assert [h.get("Baton-Reason") for h in headers] == ["invalid_work_item", "invalid_work_item"]
    assert headers[0]["Baton-Subject"] == subjects.work("managed", TENANT, "demo")
    assert headers[0]["Baton-Worker"] == "w-dlq"
    assert "Invalid JSON" in headers[0]["Baton-Detail"]
    assert "tenant" in headers[1]["Baton-Detail"]  # says which fields are missing
    assert isinstance(outcome, StepOutcome) and outcome.ok and outcome.result == {"sum": 2}


async def test_stop_waits_for_in_flight_items(client: NatsClient, subjects: Subjects, nats_url: str) -> None:
    gate = uuid.uuid4().hex
    handlers.GATES[gate] = asyncio.Event()
    worker = Worker(nats_url, subjects, name="w-stop", drain_seconds=30)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), timeout=15)
    item = make_item(subjects, "python", {"ref": f"{HANDLERS}:gated"}, trigger={"gate": gate})
    received, at_least = await listen(client, item.reply_subject)
    await dispatch(client, subjects, item)
    await at_least(1)  # started
    stop.set()
    # The worker lets go of the subscription at once but keeps running while its item is in flight.
    await wait_for(lambda: not worker.accepting, timeout=10, message="subscription drained")
    assert worker.in_flight == 1 and not task.done()
    with pytest.raises(nats.errors.NoRespondersError):
        # No subscriber is left on the work subject: the server answers "no responders".
        await client.request(subjects.work("managed", TENANT, "demo"), b"{}", timeout=5)
    handlers.GATES[gate].set()
    await asyncio.wait_for(task, timeout=15)
    outcome = parse_reply(received[1])
    assert isinstance(outcome, StepOutcome) and outcome.ok and outcome.result == "released"


async def test_stop_cancels_items_that_outlive_the_drain_deadline(
    client: NatsClient, subjects: Subjects, nats_url: str
) -> None:
    gate = uuid.uuid4().hex
    handlers.GATES[gate] = asyncio.Event()  # never set
    worker = Worker(nats_url, subjects, name="w-deadline", drain_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), timeout=15)
    item = make_item(subjects, "python", {"ref": f"{HANDLERS}:gated"}, trigger={"gate": gate})
    received, at_least = await listen(client, item.reply_subject)
    await dispatch(client, subjects, item)
    await at_least(1)
    stop.set()
    await asyncio.wait_for(task, timeout=15)
    # No outcome: the item is left for the runner to re-dispatch rather than reported as failed;
    # a last log batch says why, so the run's history explains the missing result.
    await flush_confirmed(client)
    replies = [parse_reply(msg) for msg in received]
    assert [type(reply) for reply in replies] == [StepProgress, StepLogBatch]
    last = replies[1]
    assert isinstance(last, StepLogBatch)
    assert [line.level for line in last.logs] == ["warning"]
    assert "w-deadline stopped before the step finished" in last.logs[0].message
    assert worker.in_flight == 0


# --- handler inputs, structured logs, telemetry, live batches ------------------------------


@pytest.fixture
def header_echo() -> Iterator[str]:
    """A local HTTP server that answers with the Idempotency-Key header it received."""

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = (self.headers.get("idempotency-key") or "<none>").encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_shell_and_http_steps_receive_the_attempt_identity(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker, header_echo: str
) -> None:
    command = 'echo "$BATON_RUN_ID $BATON_STEP $BATON_ATTEMPT $BATON_IDEMPOTENCY_KEY $BATON_PARTITION_KEY"'
    async with running_worker():
        shell = make_item(subjects, "shell", {"command": command}, attempt=3, partition_key="2026-11-22")
        http = make_item(subjects, "http", {"url": header_echo, "method": "POST"}, step="notify", attempt=2)
        _, shell_replies = await listen(client, shell.reply_subject)
        _, http_replies = await listen(client, http.reply_subject)
        await dispatch(client, subjects, shell)
        await dispatch(client, subjects, http)
        shell_outcome = parse_reply((await shell_replies(2))[1])
        http_outcome = parse_reply((await http_replies(2))[1])
    assert isinstance(shell_outcome, StepOutcome) and shell_outcome.ok, shell_outcome
    assert shell_outcome.result["stdout"] == f"{shell.run_id} s1 3 {shell.run_id}:s1:3 2026-11-22"
    assert isinstance(http_outcome, StepOutcome) and http_outcome.ok, http_outcome
    assert http_outcome.result["body"] == f"{http.run_id}:notify:2"


async def test_structured_logs_and_telemetry_travel_in_the_outcome(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    async with running_worker():
        item = make_item(subjects, "python", {"ref": f"{HANDLERS}:structured"}, partition_key="eu-1")
        _, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        outcome = parse_reply((await at_least(2))[1])
    assert isinstance(outcome, StepOutcome) and outcome.ok, outcome
    assert outcome.result == {"partition_key": "eu-1", "is_replay": False, "key": item.idempotency_key}
    assert [(line.level, line.message, line.data) for line in outcome.logs] == [
        ("info", "loading", {"table": "orders"}),
        ("warning", "slow partition", {"partition": "eu-1"}),
    ]
    assert [(s.rows, s.bytes, s.progress, s.data) for s in outcome.telemetry] == [
        (500, 64_000, 0.5, None),
        (1_000, None, 1.0, {"table": "orders"}),
    ]
    assert outcome.logs_truncated == 0 and outcome.telemetry_truncated == 0


async def test_a_running_step_flushes_its_logs_before_the_outcome(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker
) -> None:
    gate = uuid.uuid4().hex
    handlers.GATES[gate] = asyncio.Event()
    async with running_worker(flush_seconds=0.05):
        item = make_item(subjects, "python", {"ref": f"{HANDLERS}:log_then_wait"}, trigger={"gate": gate})
        received, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        # The handler is blocked on the gate: a log batch can only come from the live flush.
        await at_least(2)
        handlers.GATES[gate].set()
        await wait_for(
            lambda: any(json.loads(msg.data)["kind"] == "outcome" for msg in received),
            timeout=15,
            message="outcome",
        )
    replies = [parse_reply(msg) for msg in received]
    assert isinstance(replies[0], StepProgress)
    batch, outcome = replies[1], replies[-1]
    assert isinstance(batch, StepLogBatch) and isinstance(outcome, StepOutcome)
    assert (batch.run_id, batch.step, batch.attempt, batch.sequence) == (item.run_id, "s1", 1, 1)
    assert [(line.level, line.message, line.data) for line in batch.logs] == [("info", "started", {"gate": gate})]
    assert [s.progress for s in batch.telemetry] == [0.1]
    # Lines sent early are not repeated in the outcome; the outcome is the last reply.
    assert [line.message for line in outcome.logs] == ["finished"]
    assert [s.progress for s in outcome.telemetry] == [1.0]
    assert all(isinstance(reply, StepLogBatch) for reply in replies[1:-1])


async def test_a_long_shell_command_streams_its_output_lines(
    client: NatsClient, subjects: Subjects, running_worker: RunningWorker, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    # Waits for a file the test creates once the first line has arrived (bounded, in case it never does).
    command = f"echo started; i=0; while [ ! -f {release} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; " \
        "echo finished"
    async with running_worker(flush_seconds=0.05):
        item = make_item(subjects, "shell", {"command": command})
        received, at_least = await listen(client, item.reply_subject)
        await dispatch(client, subjects, item)
        await at_least(2)
        release.touch()
        await wait_for(
            lambda: any(json.loads(msg.data)["kind"] == "outcome" for msg in received), timeout=15, message="outcome"
        )
    replies = [parse_reply(msg) for msg in received]
    batch, outcome = replies[1], replies[-1]
    assert isinstance(batch, StepLogBatch) and [line.message for line in batch.logs] == ["started"]
    assert isinstance(outcome, StepOutcome) and outcome.ok
    assert [line.message for line in outcome.logs] == ["finished"]
    assert outcome.result["stdout"] == "started\nfinished"
