"""What an observation means: pure decisions per monitor type, with the cursor that prevents refires.

No I/O here. A check (``baton.monitor.checks``) turns the outside world into a JSON
observation; ``decide`` turns (monitor, observation, cursor) into the triggers to fire
and the next cursor. The cursor is stored in the tick event, so a monitor resumes from
it after a restart, and every fire has a deterministic idempotency key: a refire of the
same observation (say after a crash between publishing and recording) is the same
trigger, which the runner de-duplicates.

Value monitors (file ``count``, ``http``, ``sql``) fire when their condition becomes
true, and again whenever the observation changes while it stays true; a false condition
re-arms them. Item monitors (file ``new``, ``upstream``, ``report``) fire once per item.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from baton.events.expressions import evaluate_predicate
from baton.events.monitor import (
    CONDITION_NAMES,
    AnyMonitor,
    FileMonitor,
    GatewayReport,
    HttpMonitor,
    ReportMonitor,
    SqlMonitor,
    UpstreamMonitor,
)

MAX_REPORT_IDS = 1000
MAX_OBSERVED_CHARS = 8000


class MonitorCursor(BaseModel):
    """Where a monitor stands: what it has fired for, so it never fires twice for the same observation."""

    model_config = ConfigDict(frozen=True)
    type: str = Field(description="The monitor type the cursor belongs to; another type starts afresh.")
    initialised: bool = Field(default=False, description="False until the first evaluation.")
    fires: int = Field(default=0, ge=0, description="Triggers fired so far (part of value monitors' keys).")
    seen: list[str] = Field(default_factory=list, description="file: identities (name|mtime_ns|size) known.")
    last_digest: str | None = Field(default=None, description="Value monitors: digest of the observation fired for.")
    last_run_id: str | None = Field(default=None, description="upstream: the last upstream run handled.")
    reports: list[str] = Field(default_factory=list, description="report: the most recent report ids handled.")

    @classmethod
    def fresh(cls, monitor_type: str) -> MonitorCursor:
        """The cursor of a monitor never evaluated."""
        return cls(type=monitor_type)

    @classmethod
    def resume(cls, monitor_type: str, stored: dict[str, Any] | None) -> MonitorCursor:
        """The cursor stored in the newest tick, unless it belongs to another type (then a fresh one)."""
        if not stored or stored.get("type") != monitor_type:
            return cls.fresh(monitor_type)
        return cls.model_validate(stored)


@dataclass(frozen=True)
class Fire:
    """One trigger to publish: its idempotency key and the observation it carries."""

    observation_key: str
    idempotency_key: str
    observation: Any


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation: triggers to fire, the next cursor, and why."""

    fires: list[Fire]
    cursor: MonitorCursor
    reason: str
    observed: Any
    condition_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """'fire', 'no_fire' or 'error' (a condition that could not be evaluated)."""
        if self.condition_error is not None:
            return "error"
        return "fire" if self.fires else "no_fire"


class ConditionFailed(ValueError):
    """The monitor's condition raised or gave a non-boolean."""


def digest(value: Any) -> str:
    """A stable hex digest of a JSON value (key order does not matter)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def key_prefix(tenant: str, name: str) -> str:
    """The start of every idempotency key of one monitor."""
    return f"monitor:{tenant}/{name}"


def bounded(value: Any, limit: int = MAX_OBSERVED_CHARS) -> Any:
    """``value`` if its JSON is small enough to record in a tick, else a truncated preview."""
    text = json.dumps(value, default=str, separators=(",", ":"))
    if len(text) <= limit:
        return value
    return {"truncated": True, "chars": len(text), "preview": text[: limit // 2]}


def condition_holds(monitor: AnyMonitor, variables: dict[str, Any]) -> bool:
    """Evaluate the monitor's CEL condition over its type's variable names; True when it has none."""
    if monitor.condition is None:
        return True
    names = CONDITION_NAMES[monitor.type]
    observation = variables["observation"]
    activation = {name: variables.get(name, observation) for name in names}
    try:
        return evaluate_predicate(monitor.condition, activation)
    except ValueError as exc:
        raise ConditionFailed(str(exc)) from exc


def threshold_holds(monitor: AnyMonitor, number: Any) -> tuple[bool, str]:
    """Whether the observed number reaches the threshold (True without a threshold), and a reason."""
    if monitor.threshold is None:
        return True, ""
    if isinstance(number, bool) or not isinstance(number, int | float):
        return False, f"observed value {number!r} is not a number (threshold {monitor.threshold:g})"
    if number >= monitor.threshold:
        return True, f"{number:g} >= threshold {monitor.threshold:g}"
    return False, f"{number:g} < threshold {monitor.threshold:g}"


def decide(monitor: AnyMonitor, tenant: str, observation: Any, cursor: MonitorCursor) -> Decision:
    """Dispatch to the decision of the monitor's type (reports: see ``decide_report``)."""
    try:
        if isinstance(monitor, FileMonitor):
            return decide_file(monitor, tenant, observation, cursor)
        if isinstance(monitor, UpstreamMonitor):
            return decide_upstream(monitor, tenant, observation, cursor)
        if isinstance(monitor, ReportMonitor):
            return decide_report_observation(monitor, tenant, observation, None, cursor)
        return decide_value(monitor, tenant, observation, cursor)
    except ConditionFailed as exc:
        return Decision([], cursor, "the condition could not be evaluated", bounded(observation), str(exc))


# --- file -----------------------------------------------------------------------------------


def file_identity(entry: dict[str, Any]) -> str:
    """A file as the cursor remembers it: a changed mtime or size makes it a new observation."""
    return f"{entry['name']}|{entry['mtime_ns']}|{entry['size']}"


def decide_file(monitor: FileMonitor, tenant: str, observation: dict[str, Any], cursor: MonitorCursor) -> Decision:
    """'new': fire for files not in the cursor; 'count': fire when the count reaches the threshold."""
    files: list[dict[str, Any]] = observation.get("files", [])
    settings = monitor.settings
    identities = [file_identity(f) for f in files]
    remembered = identities[-settings.max_files :]
    if settings.mode == "count":
        return _decide_count(monitor, tenant, observation, cursor, identities, remembered)
    if not cursor.initialised and not settings.include_existing:
        nxt = cursor.model_copy(update={"initialised": True, "seen": remembered})
        reason = f"first evaluation: {len(files)} existing file(s) remembered, not fired"
        return Decision([], nxt, reason, _file_summary(observation, []))
    seen = set(cursor.seen)
    new_files = [f for f, ident in zip(files, identities, strict=True) if ident not in seen]
    summary = _file_summary(observation, new_files)
    if not new_files:
        nxt = cursor.model_copy(update={"initialised": True, "seen": remembered})
        return Decision([], nxt, f"no new files ({len(files)} matching)", summary)
    variables: dict[str, Any] = {
        "observation": {**observation, "new_files": new_files, "new_count": len(new_files)},
        "files": files,
    }
    if not condition_holds(monitor, variables):
        # The new files stay new: they are considered again while the condition is false.
        nxt = cursor.model_copy(update={"initialised": True, "seen": [i for i in remembered if i in seen]})
        return Decision([], nxt, f"{len(new_files)} new file(s) but the condition is false", summary)
    prefix = key_prefix(tenant, monitor.name)
    base = {k: v for k, v in observation.items() if k != "files"}
    if settings.each_file:
        fires = [
            Fire(file_identity(f), f"{prefix}:file:{file_identity(f)}", {**base, "file": f}) for f in new_files
        ]
    else:
        batch = digest(sorted(file_identity(f) for f in new_files))
        fires = [Fire(f"files:{batch[:16]}", f"{prefix}:files:{batch}", {**base, "files": new_files})]
    nxt = cursor.model_copy(
        update={"initialised": True, "seen": remembered, "fires": cursor.fires + len(fires)}
    )
    return Decision(fires, nxt, f"{len(new_files)} new file(s)", summary)


def _decide_count(
    monitor: FileMonitor,
    tenant: str,
    observation: dict[str, Any],
    cursor: MonitorCursor,
    identities: list[str],
    remembered: list[str],
) -> Decision:
    count = observation.get("count", len(identities))
    summary = _file_summary(observation, [])
    ok, why = threshold_holds(monitor, count)
    if ok:
        ok = condition_holds(monitor, {"observation": observation, "files": observation.get("files", [])})
        why = why or "the condition is true"
        if not ok:
            why = "the condition is false"
    base = cursor.model_copy(update={"initialised": True, "seen": remembered})
    return _fire_on_change(monitor, tenant, ok, why, digest(sorted(identities)), summary, observation, base)


def _file_summary(observation: dict[str, Any], new_files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "directory": observation.get("directory"),
        "glob": observation.get("glob"),
        "count": observation.get("count"),
        "new": [f["name"] for f in new_files[:50]],
        "new_count": len(new_files),
    }


# --- http and sql ---------------------------------------------------------------------------


def decide_value(
    monitor: HttpMonitor | SqlMonitor | AnyMonitor, tenant: str, observation: dict[str, Any], cursor: MonitorCursor
) -> Decision:
    """http / sql: fire when the condition (default: 2xx, or a truthy value / any row) holds and the value changed."""
    if isinstance(monitor, HttpMonitor):
        variables = {"observation": observation, "response": observation}
        essence: Any = {"status": observation.get("status"), "json": observation.get("json"),
                        "body": None if observation.get("json") is not None else observation.get("body")}
        if monitor.condition is None:
            status = observation.get("status")
            ok = isinstance(status, int) and 200 <= status < 300
            why = f"status {status}" + ("" if ok else " is not 2xx")
        else:
            ok = condition_holds(monitor, variables)
            why = f"the condition is {'true' if ok else 'false'}"
    elif isinstance(monitor, SqlMonitor):
        variables = {"observation": observation, "result": observation}
        scalar = monitor.settings.mode == "scalar"
        number = observation.get("value") if scalar else observation.get("row_count")
        essence = observation.get("value") if scalar else observation.get("rows")
        ok, why = threshold_holds(monitor, number)
        if monitor.threshold is None and monitor.condition is None:
            ok = bool(number)
            why = f"value {number!r} is {'truthy' if ok else 'empty'}" if scalar else f"{number} row(s)"
        if ok and monitor.condition is not None:
            ok = condition_holds(monitor, variables)
            why = f"{why + '; ' if why else ''}the condition is {'true' if ok else 'false'}"
    else:
        raise TypeError(f"{monitor.type} monitors are not value monitors")
    base = cursor.model_copy(update={"initialised": True})
    return _fire_on_change(monitor, tenant, ok, why, digest(essence), bounded(observation), observation, base)


def _fire_on_change(
    monitor: AnyMonitor,
    tenant: str,
    ok: bool,
    why: str,
    value_digest: str,
    summary: Any,
    observation: Any,
    cursor: MonitorCursor,
) -> Decision:
    """The value-monitor rule: fire when true and changed since the last fire; false re-arms."""
    if not ok:
        return Decision([], cursor.model_copy(update={"last_digest": None}), why, summary)
    if cursor.last_digest == value_digest:
        return Decision([], cursor, f"{why}; unchanged since the last fire", summary)
    seq = cursor.fires + 1
    fire = Fire(f"value:{value_digest[:16]}", f"{key_prefix(tenant, monitor.name)}:{seq}:{value_digest[:32]}",
                observation)
    nxt = cursor.model_copy(update={"fires": seq, "last_digest": value_digest})
    return Decision([fire], nxt, why, summary)


# --- upstream -------------------------------------------------------------------------------


def decide_upstream(
    monitor: UpstreamMonitor, tenant: str, completions: list[dict[str, Any]], cursor: MonitorCursor
) -> Decision:
    """Fire once per completed run of the upstream pipeline (that passes the condition)."""
    prefix = key_prefix(tenant, monitor.name)
    fires: list[Fire] = []
    relevant = [c for c in completions if c.get("pipeline") == monitor.settings.pipeline]
    for run in relevant:
        if condition_holds(monitor, {"observation": run, "run": run}):
            fires.append(Fire(f"run:{run['run_id']}", f"{prefix}:run:{run['run_id']}", {"upstream": run}))
    last = relevant[-1]["run_id"] if relevant else cursor.last_run_id
    nxt = cursor.model_copy(update={"initialised": True, "fires": cursor.fires + len(fires), "last_run_id": last})
    if not relevant:
        reason = f"no completed run of {monitor.settings.pipeline!r}" + (
            f" ({len(completions)} other completion(s) ignored)" if completions else ""
        )
    else:
        reason = f"{len(relevant)} completed run(s) of {monitor.settings.pipeline!r}, {len(fires)} fired"
    observed = {"completed": [r["run_id"] for r in relevant[:50]], "ignored": len(completions) - len(relevant)}
    return Decision(fires, nxt, reason, observed)


# --- gateway reports ------------------------------------------------------------------------


def decide_report(monitor: AnyMonitor, tenant: str, report: GatewayReport, cursor: MonitorCursor) -> Decision:
    """A gateway report: a ``report`` monitor fires on it; any other type decides on the reported observation."""
    if report.report_id is not None and report.report_id in cursor.reports:
        return Decision([], cursor, f"report {report.report_id!r} was already handled", bounded(report.observation))
    try:
        if isinstance(monitor, ReportMonitor):
            decision = decide_report_observation(monitor, tenant, report.observation, report, cursor)
        else:
            decision = decide(monitor, tenant, report.observation, cursor)
    except (KeyError, TypeError, ValueError) as exc:
        reason = "the reported observation does not fit the monitor type"
        return Decision([], cursor, reason, bounded(report.observation), f"{type(exc).__name__}: {exc}")
    if report.report_id is None:
        return decision
    reports = [*cursor.reports, report.report_id][-MAX_REPORT_IDS:]
    return Decision(decision.fires, decision.cursor.model_copy(update={"reports": reports}), decision.reason,
                    decision.observed, decision.condition_error)


def decide_report_observation(
    monitor: ReportMonitor, tenant: str, observation: Any, report: GatewayReport | None, cursor: MonitorCursor
) -> Decision:
    """A ``report`` monitor fires on every report whose condition holds (default: every report)."""
    variables = {
        "observation": observation,
        "report": {"observation": observation, "report_id": report.report_id if report else None,
                   "gateway": report.gateway if report else None},
    }
    if not condition_holds(monitor, variables):
        return Decision([], cursor.model_copy(update={"initialised": True}), "the condition is false",
                        bounded(observation))
    seq = cursor.fires + 1
    prefix = key_prefix(tenant, monitor.name)
    if report is not None and report.report_id is not None:
        key, obs_key = f"{prefix}:report:{report.report_id}", f"report:{report.report_id}"
    else:
        value_digest = digest(observation)
        key, obs_key = f"{prefix}:report:{seq}:{value_digest[:32]}", f"report:{value_digest[:16]}"
    fire = Fire(obs_key, key, {"report": variables["report"]})
    nxt = cursor.model_copy(update={"initialised": True, "fires": seq})
    return Decision([fire], nxt, "gateway report" + (" (condition true)" if monitor.condition else ""),
                    bounded(observation))


# --- errors ---------------------------------------------------------------------------------


def backoff_seconds(consecutive_errors: int, interval: float, initial: float, maximum: float) -> float:
    """Delay before the next evaluation after ``consecutive_errors`` failures in a row (never below the interval)."""
    if consecutive_errors <= 0:
        return interval
    return float(max(interval, min(initial * 2 ** (consecutive_errors - 1), maximum)))
