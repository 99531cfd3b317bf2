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
    if event.type in ("step_completed", "step_failed") and data.get("duration_ms") is not None:
        entry["duration_ms"] = data["duration_ms"]
    if event.type == "step_failed":
        entry["timed_out"] = bool(data.get("timed_out", False))
        entry["will_retry"] = bool(data.get("will_retry", False))
    if event.type == "step_retry_scheduled":
        entry["delay_ms"] = data["delay_ms"]
        entry["due_at"] = data["due_at"]
    if event.type == "step_telemetry_recorded":
        entry["samples"] = data.get("samples", [])
    if event.type == "step_skipped" and data.get("cause"):
        entry["cause"] = data["cause"]
    return entry


def apply(entries: list[Entry], event: StoredEvent) -> list[Entry]:
    """Append the entry for ``event`` (run streams only) to ``entries``."""
    if event.stream_type != "run":
        return entries
    return [*entries, entry_for(event, len(entries) + 1)]


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_RESULT_PREVIEW else text[:MAX_RESULT_PREVIEW] + "…"


def _ms(value: Any) -> str:
    """Milliseconds as a whole number ('200 ms')."""
    return f"{float(value):.0f} ms"


def _with_reason(text: str, reason: Any) -> str:
    return f"{text}: {reason}" if reason else text


def _describe(event_type: str, data: dict[str, Any]) -> str:
    step = data.get("step")
    attempt = data.get("attempt", 1)
    match event_type:
        case "run_created":
            marks = [f"slice {data['slice_key']}"] if data.get("slice_key") else []
            if data.get("is_replay"):
                marks.append(f"{'dry-run ' if data.get('dry_run') else ''}replay of trigger {data.get('replay_of')}")
            suffix = f" ({', '.join(marks)})" if marks else ""
            return f"run created for pipeline {data['pipeline']} v{data['pipeline_version']}{suffix}"
        case "run_queued":
            return f"run queued: {data['reason']}"
        case "run_started":
            return "run started"
        case "run_waiting":
            until = f" until {data['until']}" if data.get("until") else ""
            return f"run waiting{until}: {data['reason']}"
        case "run_resumed":
            return _with_reason("run resumed", data.get("reason"))
        case "run_canceled":
            by = f" by {data['actor']}" if data.get("actor") else ""
            return _with_reason(f"run canceled{by}", data.get("reason"))
        case "run_retried":
            by = f" by {data['actor']}" if data.get("actor") else ""
            what = f"dead letter {data['dead_letter_id']} re-driven" if data.get("dead_letter_id") else "run retried"
            text = f"{what}{by} from step(s) {', '.join(data.get('steps', [])) or '-'}"
            return _with_reason(text, data.get("reason"))
        case "run_completed":
            return f"run completed: {data.get('reason', '')}".rstrip(": ")
        case "run_failed":
            return f"run failed: {data['error']}"
        case "step_scheduled":
            where = f", branch {data['branch']} of {data['parent']}" if data.get("parent") is not None else ""
            return f"step {step} scheduled ({data.get('kind')}, attempt {attempt}{where})"
        case "step_started":
            worker = f" on {data['worker']}" if data.get("worker") else ""
            retry = f" (attempt {attempt})" if attempt > 1 else ""
            return f"step {step} started{worker}{retry}"
        case "step_completed":
            return f"step {step} completed: {_preview(data.get('result'))}"
        case "step_failed":
            if data.get("timed_out"):
                after = f" after {_ms(data['duration_ms'])}" if data.get("duration_ms") is not None else ""
                text = f"step {step} attempt {attempt} timed out{after}"
            else:
                which = f" attempt {attempt}" if attempt > 1 or data.get("will_retry") else ""
                text = f"step {step}{which} failed: {data['error']}"
            return text + ("; will retry" if data.get("will_retry") else "")
        case "step_retry_scheduled":
            return f"retry {data['attempt'] - 1} of step {step} (attempt {data['attempt']}) in {_ms(data['delay_ms'])}"
        case "step_dead_lettered":
            return (
                f"step {step} dead-lettered after {data['attempts']} attempt(s): {data['reason']}"
                f" (last error: {data['last_error']})"
            )
        case "step_result_ignored":
            outcome = "success" if data.get("ok") else "failure"
            return f"late {outcome} of step {step} attempt {attempt} ignored: {data['reason']}"
        case "step_skipped":
            text = f"step {step} skipped: {data.get('reason')}"
            if data.get("would_run") is not None:
                text += f" (would run {_preview(data['would_run'])})"
            return text
        case "step_log_written":
            dropped = f", {data['truncated']} dropped" if data.get("truncated") else ""
            return f"step {step} wrote {len(data.get('lines', []))} log line(s){dropped}"
        case "step_telemetry_recorded":
            return f"step {step} reported {_telemetry_text(data.get('samples', []))}"
        case "timer_scheduled":
            of = f" for step {step}" if step else ""
            return f"{data['purpose'].replace('_', ' ')} timer set{of}, due {data['due_at']}"
        case "timer_canceled":
            return _with_reason(f"timer {data['timer_id']} canceled", data.get("reason"))
    return event_type


def _telemetry_text(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return "no telemetry"
    last = samples[-1]
    parts = [f"{last[k]} {k}" for k in ("rows", "bytes") if last.get(k) is not None]
    if last.get("progress") is not None:
        parts.append(f"{last['progress'] * 100:.0f}% done")
    detail = ", ".join(parts) or "data"
    return f"{len(samples)} telemetry sample(s), latest: {detail}"
