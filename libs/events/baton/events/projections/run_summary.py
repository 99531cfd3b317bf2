"""Run summary projection: one JSON document per run, folded from its stream.

The document carries status, pipeline and version, trigger, per-step states (which
also feed the step-runs table), the run context (each action's result under its
step name), timestamps and the error. Pure: no I/O, no clock.
"""

from __future__ import annotations

import copy
from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent

RunDoc = dict[str, Any]
TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})


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
    )
    doc["step_order"] = [step["name"] for step in definition.get("steps", [])]
    doc["steps"] = {
        step["name"]: {"status": "pending", "index": index, "kind": step["type"], "attempt": 0}
        for index, step in enumerate(definition.get("steps", []))
    }


def _run_started(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "running"
    doc["started_at"] = at


def _run_completed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "completed"
    doc["finished_at"] = at
    doc["reason"] = data.get("reason")


def _run_failed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["status"] = "failed"
    doc["finished_at"] = at
    doc["error"] = {"message": data["error"], "step": data.get("step")}


def _step(doc: RunDoc, data: dict[str, Any]) -> dict[str, Any]:
    steps: dict[str, dict[str, Any]] = doc["steps"]
    return steps.setdefault(data["step"], {"status": "pending", "index": len(steps), "attempt": 0})


def _step_scheduled(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data)
    step.update(status="scheduled", attempt=data.get("attempt", 1), scheduled_at=at, kind=data.get("kind"))


def _step_started(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data)
    step.update(status="running", attempt=data.get("attempt", 1), started_at=data.get("started_at") or at)
    if data.get("worker"):
        step["worker"] = data["worker"]


def _step_completed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data)
    step.update(status="completed", finished_at=at, result=data.get("result"), duration_ms=data.get("duration_ms"))
    step.pop("error", None)
    if step.get("kind") != "condition":
        doc["context"][data["step"]] = data.get("result")


def _step_failed(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data)
    step.update(status="failed", finished_at=at, error=data["error"], duration_ms=data.get("duration_ms"))


def _step_skipped(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    step = _step(doc, data)
    step.update(status="skipped", finished_at=at, reason=data.get("reason"))


def _step_log_written(doc: RunDoc, data: dict[str, Any], at: str) -> None:
    doc["log_lines"] = doc.get("log_lines", 0) + len(data.get("lines", [])) + data.get("truncated", 0)


_HANDLERS = {
    "run_created": _run_created,
    "run_started": _run_started,
    "run_completed": _run_completed,
    "run_failed": _run_failed,
    "step_scheduled": _step_scheduled,
    "step_started": _step_started,
    "step_completed": _step_completed,
    "step_failed": _step_failed,
    "step_skipped": _step_skipped,
    "step_log_written": _step_log_written,
}


def step_rows(doc: RunDoc) -> list[dict[str, Any]]:
    """The step-runs view of a run document: one row per step, in pipeline order."""
    rows = []
    for name, step in doc.get("steps", {}).items():
        rows.append({"run_id": doc["run_id"], "step": name, **step})
    return sorted(rows, key=lambda row: row.get("index", 0))
