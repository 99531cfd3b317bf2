"""Run timeline projection: an ordered, human-readable entry per run event.

The state is the list of entries so far; ``apply`` appends the entry for one event.
Entries are append-only, so the projector only writes those past the stored count.
"""

from __future__ import annotations

from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent

Entry = dict[str, Any]
MAX_RESULT_PREVIEW = 500


def entry_for(event: StoredEvent, seq: int) -> Entry:
    """The timeline entry describing one run event."""
    data = upcast(event.type, event.schema_version, dict(event.data))
    entry: Entry = {
        "seq": seq,
        "at": event.recorded_at.isoformat(),
        "kind": event.type,
        "position": event.position,
        "step": data.get("step"),
        "attempt": data.get("attempt"),
        "message": _describe(event.type, data),
    }
    if event.type == "step_log_written":
        entry["lines"] = data.get("lines", [])
        entry["truncated"] = data.get("truncated", 0)
    if event.type == "step_completed" and data.get("duration_ms") is not None:
        entry["duration_ms"] = data["duration_ms"]
    return entry


def apply(entries: list[Entry], event: StoredEvent) -> list[Entry]:
    """Append the entry for ``event`` (run streams only) to ``entries``."""
    if event.stream_type != "run":
        return entries
    return [*entries, entry_for(event, len(entries) + 1)]


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_RESULT_PREVIEW else text[:MAX_RESULT_PREVIEW] + "…"


def _describe(event_type: str, data: dict[str, Any]) -> str:
    step = data.get("step")
    match event_type:
        case "run_created":
            return f"run created for pipeline {data['pipeline']} v{data['pipeline_version']}"
        case "run_started":
            return "run started"
        case "run_completed":
            return f"run completed: {data.get('reason', '')}".rstrip(": ")
        case "run_failed":
            return f"run failed: {data['error']}"
        case "step_scheduled":
            return f"step {step} scheduled ({data.get('kind')}, attempt {data.get('attempt', 1)})"
        case "step_started":
            worker = f" on {data['worker']}" if data.get("worker") else ""
            return f"step {step} started{worker}"
        case "step_completed":
            return f"step {step} completed: {_preview(data.get('result'))}"
        case "step_failed":
            return f"step {step} failed: {data['error']}"
        case "step_skipped":
            return f"step {step} skipped: {data.get('reason')}"
        case "step_log_written":
            return f"step {step} wrote {len(data.get('lines', []))} log line(s)"
    return event_type
