"""The worker against a real NATS server: replies, queue-group sharing, duplicates, DLQ, graceful stop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from baton.events.messages import StepOutcome, StepProgress, WorkItem
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


def parse_reply(msg: Msg) -> StepProgress | StepOutcome:
    data = json.loads(msg.data)
    return StepProgress.model_validate(data) if data["kind"] == "started" else StepOutcome.model_validate(data)


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
    # No outcome: the item is left for the runner to re-dispatch rather than reported as failed.
    assert [type(parse_reply(msg)) for msg in received] == [StepProgress]
    assert worker.in_flight == 0
