"""Seeded, plausible run histories using every run-semantics event (retries, timeouts, parallel
branches, delays, dead letters, re-drives, cancels, replays, logs and telemetry).

The runner that decides these events is written elsewhere; the read models must fold whatever
valid sequence it appends, so this generator walks the run lifecycle itself with a seeded
``random.Random`` and returns the events to append, in order. Pure: no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from baton.events.catalogue import (
    EventData,
    LogLine,
    RunCanceled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunQueued,
    RunResumed,
    RunRetried,
    RunStarted,
    RunWaiting,
    StepCompleted,
    StepDeadLettered,
    StepFailed,
    StepLogWritten,
    StepResultIgnored,
    StepRetryScheduled,
    StepScheduled,
    StepSkipped,
    StepStarted,
    StepTelemetryRecorded,
    TelemetrySample,
    TimerCanceled,
    TimerScheduled,
)
from baton.events.envelope import EventMetadata, NewEvent
from baton.events.pipeline import PipelineDefinition

META = EventMetadata(actor="test")
MAX_ATTEMPTS = 3

SEMANTICS_PIPELINE = PipelineDefinition.model_validate(
    {
        "name": "fanout",
        "trigger": {"type": "orders.ready"},
        "steps": [
            {"name": "fetch", "type": "action", "uses": "shell", "with": {"command": "./fetch.sh"},
             "retry": {"max_attempts": MAX_ATTEMPTS, "backoff_ms": 200}, "timeout_ms": 2000},
            {"name": "fan", "type": "parallel", "branches": [
                {"steps": [{"name": "left", "type": "action", "uses": "shell", "with": {"command": "true"}}]},
                {"steps": [
                    {"name": "right1", "type": "action", "uses": "shell", "with": {"command": "true"}},
                    {"name": "right2", "type": "action", "uses": "shell", "with": {"command": "true"}},
                ]},
            ]},
            {"name": "pause", "type": "delay", "delay_ms": 60_000},
            {"name": "notify", "type": "action", "uses": "http", "with": {"url": "https://example.com/h"},
             "replay_safe": False},
        ],
    }
).to_document()
TOP_LEVEL = ["fetch", "fan", "pause", "notify"]
BRANCHES = [["left"], ["right1", "right2"]]
ALL_STEPS = ["fetch", "fan", "left", "right1", "right2", "pause", "notify"]


class Canceled(Exception):
    """The run was canceled in the middle of the walk."""


@dataclass
class SemanticsRun:
    """Walks one run through its lifecycle, collecting the events the runner would append."""

    rng: random.Random
    run_id: str
    tenant: str
    start: datetime
    trigger_id: str = "trigger-0"
    events: list[NewEvent] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    ticks: int = 0
    dry_run: bool = False
    is_replay: bool = False
    last_dead_letter: str | None = None
    failed: list[str] = field(default_factory=list)

    def add(self, data: EventData) -> None:
        self.ticks += 1
        self.events.append(data.to_event(META, self.start + timedelta(milliseconds=10 * self.ticks)))

    def now(self) -> datetime:
        return self.start + timedelta(milliseconds=10 * (self.ticks + 1))

    def maybe_cancel(self, probability: float = 0.05) -> None:
        if self.rng.random() < probability:
            self.add(RunCanceled(run_id=self.run_id, reason="operator", actor="ops"))
            for name in ALL_STEPS:
                if name not in self.done:
                    self.add(StepSkipped(run_id=self.run_id, step=name, reason="run canceled", cause="canceled"))
            raise Canceled

    # --- the walk ----------------------------------------------------------------------
    def history(self) -> list[NewEvent]:
        """Every event of the run, from run_created to wherever the walk ends."""
        rng = self.rng
        self.is_replay = rng.random() < 0.3
        self.dry_run = self.is_replay and rng.random() < 0.5
        self.add(RunCreated(
            run_id=self.run_id, tenant=self.tenant, pipeline="fanout", pipeline_version=1,
            definition=SEMANTICS_PIPELINE, trigger={"trigger_id": self.trigger_id, "type": "orders.ready"},
            slice_key=rng.choice([None, "2024-05-01", "2024-05-02"]), is_replay=self.is_replay,
            replay_of="original-trigger" if self.is_replay else None, dry_run=self.dry_run,
        ))
        try:
            if rng.random() < 0.3:
                self.add(RunQueued(run_id=self.run_id, reason="pipeline at max_concurrent_runs (2)"))
                self.maybe_cancel(0.2)
            self.add(RunStarted(run_id=self.run_id))
            index = 0
            while index < len(TOP_LEVEL):
                if self.run_top_level(index):
                    index += 1
                    continue
                if rng.random() < 0.5:
                    return self.events  # stays failed
                self.add(RunRetried(run_id=self.run_id, steps=self.failed_steps(), reason="fixed", actor="ops",
                                    dead_letter_id=self.last_dead_letter if rng.random() < 0.5 else None))
                self.add(RunStarted(run_id=self.run_id))
            self.add(RunCompleted(run_id=self.run_id))
        except Canceled:
            pass
        return self.events

    def failed_steps(self) -> list[str]:
        steps, self.failed = self.failed, []
        for name in steps:
            self.done.discard(name)
        return steps

    def run_top_level(self, index: int) -> bool:
        name = TOP_LEVEL[index]
        self.maybe_cancel()
        if name == "fan":
            return self.run_parallel()
        if name == "pause":
            return self.run_delay()
        return self.run_action(name, index)

    def run_action(self, name: str, index: int, parent: str | None = None, branch: int | None = None) -> bool:
        rng = self.rng
        if self.dry_run or (self.is_replay and name == "notify"):
            cause = "dry_run" if self.dry_run else "replay"
            self.add(StepSkipped(run_id=self.run_id, step=name, reason=f"skipped ({cause})", cause=cause,
                                 would_run={"uses": "shell", "step": name}))
            self.done.add(name)
            return True
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self.add(StepScheduled(run_id=self.run_id, step=name, index=index, kind="action", attempt=attempt,
                                   parent=parent, branch=branch))
            if rng.random() < 0.8:
                self.add(StepStarted(run_id=self.run_id, step=name, attempt=attempt, worker=f"w{rng.randint(1, 3)}"))
            if rng.random() < 0.4:
                self.add(StepLogWritten(run_id=self.run_id, step=name, attempt=attempt, truncated=rng.choice([0, 3]),
                                        lines=[LogLine(at=self.now(), message=f"line {i}", data={"i": i})
                                               for i in range(rng.randint(1, 3))]))
            if rng.random() < 0.4:
                self.add(StepTelemetryRecorded(run_id=self.run_id, step=name, attempt=attempt, samples=[
                    TelemetrySample(at=self.now(), rows=rng.randint(0, 100), progress=rng.choice([None, 0.5, 1.0]))
                ]))
            if rng.random() < 0.6:
                self.add(StepCompleted(run_id=self.run_id, step=name, attempt=attempt, result={"n": attempt},
                                       duration_ms=12.0))
                self.done.add(name)
                return True
            timed_out = rng.random() < 0.4
            will_retry = attempt < MAX_ATTEMPTS and parent is None
            self.add(StepFailed(run_id=self.run_id, step=name, attempt=attempt,
                                duration_ms=2000.0 if timed_out else 5.0, timed_out=timed_out,
                                error="timed out" if timed_out else "exit status 1", will_retry=will_retry))
            if timed_out and rng.random() < 0.5:
                self.add(StepResultIgnored(run_id=self.run_id, step=name, attempt=attempt, reason="attempt timed out",
                                           ok=True, worker="w9"))
            if not will_retry:
                break
            timer_id = f"{self.run_id}:{name}:{attempt + 1}:backoff"
            delay = 200 * 2 ** (attempt - 1)
            self.add(StepRetryScheduled(run_id=self.run_id, step=name, attempt=attempt + 1, delay_ms=delay,
                                        due_at=self.now() + timedelta(milliseconds=delay), timer_id=timer_id))
            self.add(TimerScheduled(run_id=self.run_id, timer_id=timer_id, purpose="backoff",
                                    due_at=self.now() + timedelta(milliseconds=delay), step=name, attempt=attempt + 1))
            self.add(RunWaiting(run_id=self.run_id, reason=f"backoff before attempt {attempt + 1} of {name}"))
            self.maybe_cancel(0.1)
            self.add(RunResumed(run_id=self.run_id, reason="backoff elapsed"))
        self.failed.append(name)
        if parent is None:
            self.last_dead_letter = f"{self.run_id}:{name}:{attempt}"
            self.add(StepDeadLettered(run_id=self.run_id, step=name, attempts=attempt, reason="out of attempts",
                                      last_error="exit status 1"))
            self.add(RunFailed(run_id=self.run_id, error=f"step {name} out of attempts", step=name,
                               code="dead_lettered"))
        return False

    def run_parallel(self) -> bool:
        self.add(StepScheduled(run_id=self.run_id, step="fan", index=1, kind="parallel"))
        index = 2
        for branch, names in enumerate(BRANCHES):
            for name in names:
                if name in self.done:
                    index += 1
                    continue
                if not self.run_action(name, index, parent="fan", branch=branch):
                    for sibling in [n for names2 in BRANCHES for n in names2 if n not in self.done and n != name]:
                        self.add(StepSkipped(run_id=self.run_id, step=sibling, reason="branch failed",
                                             cause="failure"))
                    self.add(StepFailed(run_id=self.run_id, step="fan", error=f"branch {branch} failed"))
                    self.failed.insert(0, "fan")
                    self.add(RunFailed(run_id=self.run_id, error=f"branch {branch} of fan failed", step=name,
                                       code="branch_failed"))
                    return False
                index += 1
        self.add(StepCompleted(run_id=self.run_id, step="fan", result=None))
        self.done.add("fan")
        return True

    def run_delay(self) -> bool:
        timer_id = f"{self.run_id}:pause:delay"
        self.add(StepScheduled(run_id=self.run_id, step="pause", index=5, kind="delay"))
        self.add(TimerScheduled(run_id=self.run_id, timer_id=timer_id, purpose="delay",
                                due_at=self.now() + timedelta(minutes=1), step="pause", attempt=1))
        self.add(RunWaiting(run_id=self.run_id, reason="delay pause", until=self.now() + timedelta(minutes=1)))
        if self.rng.random() < 0.15:
            self.add(TimerCanceled(run_id=self.run_id, timer_id=timer_id, reason="run canceled"))
            self.maybe_cancel(1.0)
        self.add(RunResumed(run_id=self.run_id, reason="delay elapsed"))
        self.add(StepCompleted(run_id=self.run_id, step="pause", result=None))
        self.done.add("pause")
        return True


def semantics_run_events(
    rng: random.Random, run_id: str, tenant: str, start: datetime, trigger_id: str = "trigger-0"
) -> list[NewEvent]:
    """A seeded run history using the run-semantics events (see the module docstring)."""
    return SemanticsRun(rng=rng, run_id=run_id, tenant=tenant, start=start, trigger_id=trigger_id).history()


def expected_final_status(events: list[NewEvent]) -> str:
    """The run status the last status-changing event leaves."""
    status: dict[str, str] = {
        "run_created": "pending", "run_queued": "pending", "run_started": "running", "run_waiting": "waiting",
        "run_resumed": "running", "run_canceled": "canceled", "run_retried": "pending",
        "run_completed": "completed", "run_failed": "failed",
    }
    last: Any = None
    for event in events:
        last = status.get(event.type, last)
    return str(last)
