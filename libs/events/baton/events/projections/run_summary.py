"""Run summary projection: one JSON document per run, folded from its stream.

The document carries status, pipeline and version, trigger, slice and replay marks,
per-step states with every attempt (which also feed the step-runs table), retry
backoffs, timers, the latest log lines and telemetry, dead letters (which feed the
dead-letters table), the run context (each action's result under its step name),
timestamps and the error. Pure: no I/O, no clock.

Handlers are tolerant of documents written by older versions of this module (keys
are created on first use), so incremental application over an old document works;
``baton projections rebuild`` brings every document to the current shape.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent

RunDoc = dict[str, Any]
Step = dict[str, Any]
TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})
# The run document keeps the newest lines and samples only; the timeline keeps every line.
MAX_RUN_LOG_LINES = 200
MAX_TELEMETRY_SAMPLES = 100
# Kinds whose result is not work output, so it does not land in the run context.
NO_CONTEXT_KINDS = frozenset({"condition", "delay", "parallel"})


def dead_letter_id(run_id: str, step: str, attempts: int) -> str:
    """The id of the dead letter a step left after ``attempts`` attempts: ``<run_id>:<step>:<attempts>``."""
    return f"{run_id}:{step}:{attempts}"


def initial(run_id: str) -> RunDoc:
    """The document of a run before its first event."""
    return {
        "run_id": run_id,
        "status": "unknown",
        "steps": {},
        "step_order": [],
        "context": {},
        "log_lines": 0,
        "error": None,
        "version": 0,
    }


def apply(doc: RunDoc, event: StoredEvent) -> RunDoc:
    """Fold one run-stream event into the run document (returns a new document)."""
    if event.stream_type != "run":
        return doc
    data = upcast(event.type, event.schema_version, dict(event.data))
    new = copy.deepcopy(doc)
    at = event.recorded_at.isoformat()
    new["version"] = event.stream_version
    new["updated_at"] = at
    handler = _HANDLERS.get(event.type)
    if handler is not None:
        handler(new, data, at)
    return new


def walk_definition(
    steps: list[dict[str, Any]], parent: str | None = None, branch: int | None = None
) -> Iterator[tuple[dict[str, Any], str | None, int | None]]:
    """Every step of a definition depth first as (step, parent parallel step, branch index)."""
    for step in steps:
        yield step, parent, branch
        for branch_index, child in enumerate(step.get("branches") or []):
            yield from walk_definition(child.get("steps", []), step["name"], branch_index)


# --- run-level events -----------------------------------------------------------------


def _run_created(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    definition = data["definition"]
    doc.update(
        tenant=data["tenant"],
        pipeline=data["pipeline"],
        pipeline_version=data["pipeline_version"],
        trigger=data["trigger"],
        trigger_id=data["trigger"].get("trigger_id"),
        status="pending",
        created_at=at,
        config=definition.get("config", {}),
        slice_key=data.get("slice_key"),
        is_replay=bool(data.get("is_replay", False)),
        replay_of=data.get("replay_of"),
        dry_run=bool(data.get("dry_run", False)),
    )
    doc["step_order"] = [step["name"] for step in definition.get("steps", [])]
    doc["steps"] = {
        step["name"]: _new_step(index, step.get("type"), parent, branch)
        for index, (step, parent, branch) in enumerate(walk_definition(definition.get("steps", [])))
    }


def _new_step(index: int, kind: str | None, parent: str | None = None, branch: int | None = None) -> Step:
    return {
        "status": "pending", "index": index, "kind": kind, "attempt": 0,
        "parent": parent, "branch": branch, "attempts": [], "retries": [],
    }


def _run_queued(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "pending"
    doc["queued"] = {"reason": data.get("reason"), "at": at}


def _run_started(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "running"
    doc.setdefault("started_at", at)  # a retried run keeps its first start; restarts are in the timeline
    doc["queued"] = None


def _run_waiting(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "waiting"
    doc["waiting"] = {"reason": data.get("reason"), "until": data.get("until"), "since": at}


def _run_resumed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "running"
    doc["waiting"] = None


def _run_canceled(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "canceled"
    doc["finished_at"] = at
    doc["waiting"] = None
    doc["queued"] = None
    doc["canceled"] = {"reason": data.get("reason", ""), "actor": data.get("actor"), "at": at}


def _run_retried(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc.setdefault("retries", []).append(
        {"at": at, "reason": data.get("reason", ""), "actor": data.get("actor"), "steps": data.get("steps", []),
         "dead_letter_id": data.get("dead_letter_id"), "previous_error": doc.get("error")}
    )
    doc["status"] = "pending"
    doc["error"] = None
    doc["finished_at"] = None
    for name in data.get("steps", []):
        step = _step(doc, name)
        step.update(status="pending", error=None, timed_out=False, next_retry=None, finished_at=None)
        doc["context"].pop(name, None)
    # Any re-drive of the run settles every dead letter it still had open.
    for letter in doc.get("dead_letters", {}).values():
        if letter.get("redriven_at") is None:
            letter.update(redriven_at=at, redriven_by=data.get("actor"), redrive_reason=data.get("reason", ""))


def _run_completed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "completed"
    doc["finished_at"] = at
    doc["reason"] = data.get("reason")
    doc["waiting"] = None


def _run_failed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "failed"
    doc["finished_at"] = at
    doc["waiting"] = None
    doc["error"] = {"message": data["error"], "step": data.get("step"), "code": data.get("code")}


# --- step events ----------------------------------------------------------------------


def _step(doc: RunDoc, name: str) -> Step:
    steps: dict[str, Step] = doc["steps"]
    step = steps.get(name)
    if step is None:
        step = steps[name] = _new_step(len(steps), None)
    step.setdefault("attempts", [])
    step.setdefault("retries", [])
    return step


def _attempt(step: Step, number: int) -> dict[str, Any]:
    """The newest record of attempt ``number`` (created when a result arrives for an unscheduled attempt)."""
    attempts: list[dict[str, Any]] = step["attempts"]
    matching = [record for record in attempts if record["attempt"] == number]
    if matching:
        return matching[-1]
    record: dict[str, Any] = {"attempt": number, "status": "scheduled"}
    attempts.append(record)
    return record


def _step_scheduled(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    attempt = data.get("attempt", 1)
    step.update(status="scheduled", attempt=attempt, scheduled_at=at, kind=data.get("kind") or step.get("kind"),
                timed_out=False, next_retry=None)
    if data.get("parent") is not None:
        step.update(parent=data["parent"], branch=data.get("branch"))
    backoff = next((r for r in reversed(step["retries"]) if r["attempt"] == attempt), None)
    step["attempts"].append(
        {"attempt": attempt, "status": "scheduled", "scheduled_at": at,
         "backoff_ms": backoff["delay_ms"] if backoff else None}
    )


def _step_started(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    attempt = data.get("attempt", 1)
    started_at = data.get("started_at") or at
    step.update(status="running", attempt=attempt, started_at=started_at)
    record = _attempt(step, attempt)
    record.update(status="running", started_at=started_at)
    if data.get("worker"):
        step["worker"] = record["worker"] = data["worker"]


def _step_completed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    step.update(status="completed", finished_at=at, result=data.get("result"), duration_ms=data.get("duration_ms"))
    step.pop("error", None)
    _attempt(step, data.get("attempt", 1)).update(status="completed", finished_at=at,
                                                  duration_ms=data.get("duration_ms"))
    if step.get("kind") not in NO_CONTEXT_KINDS:
        doc["context"][data["step"]] = data.get("result")


def _step_failed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    timed_out = bool(data.get("timed_out", False))
    step.update(status="failed", finished_at=at, error=data["error"], duration_ms=data.get("duration_ms"),
                timed_out=timed_out)
    _attempt(step, data.get("attempt", 1)).update(
        status="failed", finished_at=at, error=data["error"], duration_ms=data.get("duration_ms"),
        timed_out=timed_out, will_retry=bool(data.get("will_retry", False)),
    )


def _step_retry_scheduled(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    retry = {"attempt": data["attempt"], "delay_ms": data["delay_ms"], "due_at": data["due_at"], "at": at,
             "timer_id": data.get("timer_id")}
    step["retries"].append(retry)
    step.update(status="retrying", next_retry=retry)


def _step_dead_lettered(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    letter_id = dead_letter_id(doc["run_id"], data["step"], data["attempts"])
    step["dead_letter_id"] = letter_id
    doc.setdefault("dead_letters", {})[letter_id] = {
        "dead_letter_id": letter_id, "step": data["step"], "reason": data["reason"],
        "last_error": data["last_error"], "attempts": data["attempts"], "dead_lettered_at": at,
        "redriven_at": None, "redriven_by": None, "redrive_reason": None,
    }


def _step_result_ignored(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    ignored = {"attempt": data["attempt"], "reason": data["reason"], "ok": data["ok"],
               "worker": data.get("worker"), "at": at}
    step.setdefault("ignored_results", []).append(ignored)


def _step_skipped(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    step.update(status="skipped", finished_at=at, reason=data.get("reason"),
                cause=data.get("cause") or "condition", next_retry=None)
    if data.get("would_run") is not None:
        step["would_run"] = data["would_run"]


def _step_log_written(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    lines = data.get("lines", [])
    written = len(lines) + data.get("truncated", 0)
    doc["log_lines"] = doc.get("log_lines", 0) + written
    step = _step(doc, data["step"])
    step["log_lines"] = step.get("log_lines", 0) + written
    logs: list[dict[str, Any]] = doc.setdefault("logs", [])
    logs.extend({"step": data["step"], "attempt": data.get("attempt", 1), **line} for line in lines)
    if len(logs) > MAX_RUN_LOG_LINES:
        doc["logs_dropped"] = doc.get("logs_dropped", 0) + len(logs) - MAX_RUN_LOG_LINES
        del logs[: len(logs) - MAX_RUN_LOG_LINES]


def _step_telemetry_recorded(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data["step"])
    telemetry = step.setdefault("telemetry", {"latest": {}, "samples": [], "samples_dropped": 0})
    samples = data.get("samples", [])
    for sample in samples:
        # "latest" merges the newest value of every measure (a sample may carry only some).
        telemetry["latest"].update({k: v for k, v in sample.items() if v is not None})
    telemetry["samples"].extend({"attempt": data.get("attempt", 1), **sample} for sample in samples)
    telemetry["samples_dropped"] += data.get("truncated", 0)
    if len(telemetry["samples"]) > MAX_TELEMETRY_SAMPLES:
        telemetry["samples_dropped"] += len(telemetry["samples"]) - MAX_TELEMETRY_SAMPLES
        del telemetry["samples"][: len(telemetry["samples"]) - MAX_TELEMETRY_SAMPLES]


def _timer_scheduled(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc.setdefault("timers", {})[data["timer_id"]] = {
        "purpose": data["purpose"], "due_at": data["due_at"], "step": data.get("step"),
        "attempt": data.get("attempt"), "scheduled_at": at, "canceled_at": None,
    }


def _timer_canceled(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    timer = doc.setdefault("timers", {}).setdefault(data["timer_id"], {"purpose": None, "due_at": None})
    timer.update(canceled_at=at, cancel_reason=data.get("reason", ""))


_HANDLERS = {
    "run_created": _run_created,
    "run_queued": _run_queued,
    "run_started": _run_started,
    "run_waiting": _run_waiting,
    "run_resumed": _run_resumed,
    "run_canceled": _run_canceled,
    "run_retried": _run_retried,
    "run_completed": _run_completed,
    "run_failed": _run_failed,
    "step_scheduled": _step_scheduled,
    "step_started": _step_started,
    "step_completed": _step_completed,
    "step_failed": _step_failed,
    "step_retry_scheduled": _step_retry_scheduled,
    "step_dead_lettered": _step_dead_lettered,
    "step_result_ignored": _step_result_ignored,
    "step_skipped": _step_skipped,
    "step_log_written": _step_log_written,
    "step_telemetry_recorded": _step_telemetry_recorded,
    "timer_scheduled": _timer_scheduled,
    "timer_canceled": _timer_canceled,
}


def step_rows(doc: RunDoc) -> list[dict[str, Any]]:
    """The step-runs view of a run document: one row per step, in pipeline order (depth first)."""
    rows = []
    for name, step in doc.get("steps", {}).items():
        rows.append({"run_id": doc["run_id"], "step": name, **step})
    return sorted(rows, key=lambda row: row.get("index", 0))


def dead_letter_rows(doc: RunDoc) -> list[dict[str, Any]]:
    """The dead-letters view of a run document: one row per dead letter the run left."""
    return [
        {**letter, "run_id": doc["run_id"], "tenant": doc.get("tenant"), "pipeline": doc.get("pipeline")}
        for letter in doc.get("dead_letters", {}).values()
    ]
