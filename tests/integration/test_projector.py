"""The projector on real PostgreSQL: incremental == rebuilt, checkpoints commit with rows, exactly-once.

Histories are randomised but seeded: runs are decided by the real runner logic (create_run,
on_progress, on_outcome) from random worker replies, and appended in random-size batches.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events.catalogue import (
    EventData,
    LogLine,
    PipelineDraining,
    PipelinePaused,
    PipelineResumed,
    PipelineVersionCreated,
    RunStarted,
    UnknownEventType,
)
from baton.events.db import make_engine
from baton.events.envelope import EventMetadata, NewEvent, StoredEvent
from baton.events.messages import StepOutcome, StepProgress
from baton.events.migrations import migrate
from baton.events.pipeline import PipelineDefinition
from baton.events.postgres_store import PostgresEventStore
from baton.events.projections import run_summary
from baton.events.projector import CHECKPOINT_NAME, Projector, rebuild
from baton.events.store import NO_STREAM, AppendRequest, WrongExpectedVersion, append
from baton.events.subjects import Subjects
from baton.events.trigger import AcceptedTrigger, TriggerRejection, validate_trigger
from baton.runner.decide import Decision, on_outcome, on_progress
from baton.runner.definitions import DefinitionIndex
from baton.runner.intake import accept_trigger, reject_trigger
from baton.runner.run_state import RunState, fold
from tests.helpers import wait_for
from tests.run_semantics_history import expected_final_status, semantics_run_events

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
META = EventMetadata(actor="test")
SUBJECTS = Subjects()
TABLE_KEYS = {
    "runs": "run_id",
    "step_runs": "run_id, step",
    "timeline": "run_id, seq",
    "triggers": "trigger_id",
    "pipelines": "tenant, name",
    "dead_letters": "dead_letter_id",
}
Unit = list[AppendRequest]


def pipeline_document(version: int) -> dict[str, Any]:
    """orders-sync v1 (CEL condition) and v2 (adds a python condition checked by a worker)."""
    steps: list[dict[str, Any]] = [
        {"name": "extract", "type": "action", "uses": "shell", "with": {"command": "./extract.sh"}},
        {"name": "big_enough", "type": "condition", "if": "trigger.payload.amount > 100"},
        {"name": "load", "type": "action", "uses": "python", "with": {"ref": "warehouse.loader:load"}},
    ]
    if version >= 2:
        steps.append({"name": "verify", "type": "condition", "uses": "python", "with": {"ref": "checks:verify"}})
    steps.append({"name": "notify", "type": "action", "uses": "http", "with": {"url": "https://example.com/h"}})
    return PipelineDefinition.model_validate(
        {"name": "orders-sync", "trigger": {"type": "orders.ready"}, "config": {"v": version}, "steps": steps}
    ).to_document()


class HistoryGenerator:
    """Produces append units of a plausible, seeded history: pipelines, triggers, and runs driven by replies."""

    def __init__(self, rng: random.Random, runs: int = 30, rejected: int = 8, semantic_runs: int = 0) -> None:
        self.rng = rng
        self.semantic_wanted = semantic_runs
        # Runs walked through retries, timeouts, branches, cancels and re-drives by the test itself
        # (tests/run_semantics_history.py), appended a few events at a time between the others.
        self.generated: dict[str, list[NewEvent]] = {}
        self.semantic_pending: dict[str, int] = {}
        self.pipeline_stream_version = 0
        self.operator_actions = 0
        self.runs_wanted = runs
        self.rejected_wanted = rejected
        self.index = DefinitionIndex()
        self.live: dict[str, RunState] = {}
        self.triggers = 0
        self.rejected = 0
        self.pipeline_versions = 0
        self.runs_created = 0
        self.tick = 0

    def now(self) -> datetime:
        self.tick += 1
        return T0 + timedelta(seconds=self.tick)

    def units(self) -> list[Unit]:
        """Every unit of the history, in a valid order."""
        out = [self._pipeline_version()]
        while True:
            choices: list[str] = []
            if self.runs_created < self.runs_wanted:
                choices += ["trigger"] * 3
            if self.rejected < self.rejected_wanted:
                choices.append("rejected")
            if self.pipeline_versions < 2 and self.runs_created >= self.runs_wanted // 3:
                choices.append("pipeline")
            # Leave a couple of runs unfinished: "running" is a state the read models must show too.
            if len(self.live) > (2 if self.runs_created >= self.runs_wanted else 0):
                choices += ["reply"] * 6
            if len(self.generated) < self.semantic_wanted:
                choices += ["semantics"] * 2
            if self.semantic_pending:
                choices += ["advance"] * 4
            if self.semantic_wanted and self.operator_actions < 3:
                choices.append("operator")
            if not choices:
                return out
            unit = getattr(self, f"_{self.rng.choice(choices)}")()
            if unit:
                out.append(unit)

    def _pipeline_version(self) -> Unit:
        self.pipeline_versions += 1
        version = self.pipeline_versions
        document = pipeline_document(version)
        self.index.put("acme", "orders-sync", version, document)
        event = PipelineVersionCreated(tenant="acme", name="orders-sync", version=version, definition=document)
        return self._pipeline_event(event)

    def _pipeline_event(self, event: EventData) -> Unit:
        expected = self.pipeline_stream_version
        self.pipeline_stream_version += 1
        return [AppendRequest("pipeline-acme.orders-sync", "acme", [event.to_event(META, self.now())], expected)]

    def _operator(self) -> Unit:
        self.operator_actions += 1
        kind = self.rng.choice([PipelinePaused, PipelineResumed, PipelineDraining])
        return self._pipeline_event(kind(tenant="acme", name="orders-sync", reason="test", actor="ops"))

    def _semantics(self) -> Unit:
        run_id = f"sem-{len(self.generated) + 1}"
        self.generated[run_id] = semantics_run_events(self.rng, run_id, "acme", self.now())
        self.semantic_pending[run_id] = 0
        return self._advance(run_id)

    def _advance(self, run_id: str | None = None) -> Unit:
        run_id = run_id or self.rng.choice(sorted(self.semantic_pending))
        done = self.semantic_pending[run_id]
        chunk = self.generated[run_id][done : done + self.rng.randint(1, 8)]
        if done + len(chunk) == len(self.generated[run_id]):
            del self.semantic_pending[run_id]
        else:
            self.semantic_pending[run_id] = done + len(chunk)
        return [AppendRequest(f"run-{run_id}", "acme", chunk, done)]

    _pipeline = _pipeline_version

    def _trigger(self) -> Unit:
        self.triggers += 1
        tenant, trigger_type = self.rng.choice([("acme", "orders.ready")] * 5 + [("acme", "other"), ("globex", "x")])
        body = {
            "source": "shop",
            "payload": {"amount": self.rng.choice([5, 150, 500]), "n": self.triggers},
            "environment": self.rng.choice([None, "production"]),
            "idempotency_key": f"order-{self.triggers}",
        }
        subject = SUBJECTS.trigger(tenant, trigger_type)
        accepted = validate_trigger(SUBJECTS, subject, json.dumps(body).encode(), f"seq-{self.triggers}")
        assert isinstance(accepted, AcceptedTrigger)
        matches = self.index.match(tenant, trigger_type, accepted.message.environment, None)
        intake = accept_trigger(accepted, matches, subject, self.now())
        for decision in intake.runs:
            self.runs_created += 1
            if not decision.state.is_terminal:
                self.live[decision.state.run_id] = decision.state
        return intake.unit

    def _rejected(self) -> Unit:
        self.rejected += 1
        subject, body = self.rng.choice([
            ("baton.trigger.acme.orders.ready", b"{not json"),
            ("baton.trigger.acme.orders.ready", b'{"source": "shop", "colour": 1}'),
            ("baton.trigger.ACME.orders.ready", b"{}"),
            ("baton.trigger.acme.orders.ready", b'{"source": "shop", "tenant": "globex"}'),
        ])
        rejection = validate_trigger(SUBJECTS, subject, body, f"bad-{self.rejected}")
        assert isinstance(rejection, TriggerRejection)
        return [reject_trigger(rejection, subject, body, self.now())]

    def _reply(self) -> Unit:
        run_id = self.rng.choice(sorted(self.live))
        state = self.live[run_id]
        (step,) = [name for name in state.order if state.steps[name].status in ("scheduled", "running")]
        now = self.now()
        roll = self.rng.random()
        attempt = 2 if roll < 0.05 else 1  # a reply for an attempt that was never made: decides nothing
        decision: Decision
        if roll < 0.3:
            decision = on_progress(
                state, StepProgress(run_id=run_id, step=step, attempt=attempt, worker=f"w{roll:.2f}", started_at=now),
                now, META,
            )
        else:
            ok = self.rng.random() > 0.15
            result: Any = {"value": self.rng.random() > 0.3} if step == "verify" else {"rows": self.rng.randint(0, 9)}
            logs = [LogLine(at=now, message=f"line {i}") for i in range(self.rng.randint(0, 2))]
            decision = on_outcome(
                state,
                StepOutcome(run_id=run_id, step=step, attempt=attempt, worker="w", ok=ok, result=result,
                            error=None if ok else "exit status 1", started_at=now, duration_ms=3.5, logs=logs),
                now, META,
            )
        if decision.state.is_terminal:
            del self.live[run_id]
        else:
            self.live[run_id] = decision.state
        if not decision.events:
            return []
        return [AppendRequest(state.stream_id, state.tenant, decision.events, state.version)]


def batches(rng: random.Random, units: list[Unit], largest: int = 12) -> list[list[Unit]]:
    out: list[list[Unit]] = []
    while units:
        size = rng.randint(1, largest)
        out.append(units[:size])
        units = units[size:]
    return out


async def append_batch(store: PostgresEventStore, batch: Sequence[Unit]) -> None:
    outcomes = await store.append_units(batch)
    assert not [o for o in outcomes if isinstance(o, WrongExpectedVersion)], outcomes


async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection row, all columns, ordered by key."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table, keys in TABLE_KEYS.items():
            result = await conn.execute(text(f"SELECT * FROM proj.{table} ORDER BY {keys}"))
            out[table] = [dict(row._mapping) for row in result]
    return out


async def checkpoint(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT position FROM proj.projection_checkpoint WHERE name = :n"), {"n": CHECKPOINT_NAME}
        )
    return int(value or 0)


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=10)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> PostgresEventStore:
    return PostgresEventStore(engine)


def expected_run_docs(events: list[StoredEvent]) -> dict[str, dict[str, Any]]:
    """The run documents folded in memory, straight from the store's events."""
    docs: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.stream_type == "run":
            run_id = event.stream_id.removeprefix("run-")
            docs[run_id] = run_summary.apply(docs.get(run_id) or run_summary.initial(run_id), event)
    return docs


async def test_incremental_projection_equals_rebuild(engine: AsyncEngine, store: PostgresEventStore) -> None:
    rng = random.Random(20240501)
    generator = HistoryGenerator(rng, semantic_runs=12)
    units = generator.units()
    generated = generator.generated
    catch_ups = 0
    for batch in batches(rng, units):
        await append_batch(store, batch)
        if rng.random() < 0.35:
            await Projector(engine, batch_size=rng.choice([3, 17, 1000])).catch_up()
            catch_ups += 1
    await Projector(engine, batch_size=11).catch_up()
    assert catch_ups >= 5
    head = await store.head_position()
    assert await checkpoint(engine) == head

    incremental = await snapshot(engine)
    assert await rebuild(engine, batch_size=50) == head
    rebuilt = await snapshot(engine)
    for table in TABLE_KEYS:
        assert incremental[table] == rebuilt[table], table
    assert await checkpoint(engine) == head

    # The rows are the right ones, not merely the same twice: compare with the pure reducers
    # and with the runner's own state machine.
    events = await store.read_all(limit=100_000)
    docs = expected_run_docs(events)
    runs = {row["run_id"]: row for row in incremental["runs"]}
    assert set(runs) == set(docs)
    assert len(runs) == 30 + 12
    for run_id, doc in docs.items():
        row = runs[run_id]
        assert row["doc"] == doc
        assert (row["slice_key"], row["is_replay"]) == (doc.get("slice_key"), doc.get("is_replay", False))
        if run_id in generated:  # runs the test walked itself: no runner state to compare with
            assert row["status"] == doc["status"] == expected_final_status(generated[run_id])
            continue
        state = fold(run_id, [e for e in events if e.stream_id == f"run-{run_id}"])
        assert row["status"] == doc["status"] == state.status
        assert {s: v["status"] for s, v in doc["steps"].items()} == {n: s.status for n, s in state.steps.items()}
        assert doc["context"] == state.context
    statuses = {row["status"] for row in incremental["runs"]}
    assert {"completed", "failed", "running", "canceled"} <= statuses
    assert {row["is_replay"] for row in incremental["runs"]} == {True, False}
    assert {row["slice_key"] for row in incremental["runs"]} >= {None, "2024-05-01"}
    letters = incremental["dead_letters"]
    assert letters, "some generated runs dead-lettered"
    assert {row["redriven_at"] is None for row in letters} == {True, False}, "open and re-driven dead letters"
    for letter in letters:
        assert letter["doc"] in run_summary.dead_letter_rows(docs[letter["run_id"]])
        assert letter["tenant"] == "acme" and letter["pipeline"] in ("fanout", "orders-sync")
    assert {row["run_id"] for row in incremental["runs"] if row["pipeline_version"] == 2}, "some runs froze v2"
    assert len(incremental["timeline"]) == sum(e.stream_type == "run" for e in events)
    assert len(incremental["step_runs"]) == sum(len(doc["steps"]) for doc in docs.values())
    triggers = incremental["triggers"]
    assert len(triggers) == sum(e.stream_type == "trigger" for e in events)
    assert {row["status"] for row in triggers} == {"accepted", "rejected"}
    (pipeline,) = incremental["pipelines"]
    assert pipeline["version"] == 2
    assert [v["version"] for v in pipeline["doc"]["versions"]] == [1, 2]
    assert pipeline["state"] == pipeline["doc"]["state"]
    assert pipeline["doc"]["state_changed"] is not None, "the history paused, resumed or drained the pipeline"


async def test_checkpoint_commits_with_the_rows(engine: AsyncEngine, store: PostgresEventStore) -> None:
    rng = random.Random(7)
    units = HistoryGenerator(rng, runs=5, rejected=2).units()
    first, rest = units[:10], units[10:]
    await append_batch(store, first)
    assert await Projector(engine).catch_up() == await store.head_position()
    assert await checkpoint(engine) == await store.head_position()
    before = await snapshot(engine)
    position = await checkpoint(engine)

    # A batch that fails half-way (an event type no reducer knows) leaves rows and checkpoint untouched.
    await append_batch(store, rest)
    poison = NewEvent(type="run_teleported", data={"run_id": "x"})
    await append(store, "run-poison", "acme", [poison], NO_STREAM)
    with pytest.raises(UnknownEventType):
        await Projector(engine, batch_size=100_000).catch_up()
    assert await checkpoint(engine) == position
    assert await snapshot(engine) == before

    # Once the bad event is gone, the same batch applies whole: rows and checkpoint together.
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM events WHERE stream_id = 'run-poison'"))
    await Projector(engine).catch_up()
    head = await store.head_position()
    assert await checkpoint(engine) == head
    assert await scalar(engine, "SELECT max(last_position) FROM proj.runs") <= head
    after = await snapshot(engine)
    await rebuild(engine)
    assert await snapshot(engine) == after


async def test_concurrent_projectors_apply_each_event_once(engine: AsyncEngine, store: PostgresEventStore) -> None:
    rng = random.Random(99)
    units = HistoryGenerator(rng, runs=12, rejected=3, semantic_runs=4).units()
    projectors = [Projector(engine, batch_size=size) for size in (4, 7)]
    applied = 0
    for index, batch in enumerate(batches(rng, units, largest=6)):
        await append_batch(store, batch)
        if index % 3 == 0:
            counts = await asyncio.gather(*(p.catch_up() for p in projectors))
            applied += sum(counts)
    applied += sum(await asyncio.gather(*(p.catch_up() for p in projectors)))

    head = await store.head_position()
    assert applied == head  # every event applied by exactly one of them
    assert await checkpoint(engine) == head
    events = await store.read_all(limit=100_000)
    run_events = [e for e in events if e.stream_type == "run"]
    assert await scalar(engine, "SELECT count(*) FROM proj.timeline") == len(run_events)
    assert await scalar(engine, "SELECT count(DISTINCT (doc->>'position')) FROM proj.timeline") == len(run_events)
    gaps = await scalar(
        engine,
        "SELECT count(*) FROM (SELECT run_id, max(seq) AS m, count(*) AS c FROM proj.timeline GROUP BY run_id) t"
        " WHERE m <> c",
    )
    assert gaps == 0
    live = await snapshot(engine)
    runs = {row["run_id"]: row["doc"] for row in live["runs"]}
    assert runs == expected_run_docs(events)
    await rebuild(engine)
    assert await snapshot(engine) == live


async def test_rebuild_while_events_are_appended(engine: AsyncEngine, store: PostgresEventStore) -> None:
    rng = random.Random(4242)
    units = HistoryGenerator(rng, runs=12, rejected=4, semantic_runs=4).units()
    half = len(units) // 2
    await append_batch(store, units[:half])
    await Projector(engine).catch_up()
    pending = batches(rng, units[half:], largest=3)
    # The live projector keeps running through the swap, as it would in production.
    stop, wakeup = asyncio.Event(), asyncio.Event()
    live = asyncio.create_task(Projector(engine, batch_size=5).run(stop, wakeup, idle_seconds=0.05))
    rebuilding = asyncio.create_task(rebuild(engine, batch_size=8))
    during: list[bool] = []

    async def appender() -> None:
        for batch in pending:
            await append_batch(store, batch)
            wakeup.set()
            during.append(not rebuilding.done())

    try:
        await asyncio.gather(appender(), rebuilding)
        head = await store.head_position()

        async def live_caught_up() -> bool:
            assert not live.done(), live  # the loop must survive the swap, not die with an error
            return await checkpoint(engine) == head

        await wait_for(live_caught_up, timeout=20, message="live projector reaches the head after the swap")
    finally:
        stop.set()
        await live
    assert any(during), "no append overlapped the rebuild"

    concurrent = await snapshot(engine)
    await rebuild(engine)
    fresh = await snapshot(engine)
    for table in TABLE_KEYS:
        assert concurrent[table] == fresh[table], table
    events = await store.read_all(limit=100_000)
    assert len(concurrent["timeline"]) == sum(e.stream_type == "run" for e in events)
    assert await checkpoint(engine) == head


async def test_a_stream_without_run_created_is_not_shown(engine: AsyncEngine, store: PostgresEventStore) -> None:
    await append(store, "run-orphan", "acme", [RunStarted(run_id="orphan").to_event()], NO_STREAM)
    assert await Projector(engine).catch_up() == 1
    assert await scalar(engine, "SELECT count(*) FROM proj.runs") == 0
    assert await checkpoint(engine) == 1
