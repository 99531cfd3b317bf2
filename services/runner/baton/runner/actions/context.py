"""What a step handler sees: its inputs (`StepContext`) and how it reports failure (`ActionFailed`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from baton.events.catalogue import LogLine, TelemetrySample
from baton.events.messages import MAX_LOG_LINE_CHARS, MAX_LOG_LINES, MAX_TELEMETRY_SAMPLES, WorkItem

from .head_tail import HeadTailBuffer

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})
LEVEL_ALIASES = {"warn": "warning", "critical": "error", "fatal": "error"}


class ActionFailed(Exception):
    """A step failed in an expected way; `message` becomes the outcome's error text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def truncate_text(text: str, limit: int) -> str:
    """Cut `text` to `limit` characters, ending with a marker that says how much was dropped."""
    if len(text) <= limit:
        return text
    dropped = len(text) - limit
    return f"{text[:limit]}…[truncated {dropped} chars]"


def _json_safe(data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn log data into plain JSON now, so a careless log call can never break the outcome."""
    # Log data travels inside a JSON StepOutcome and then a JSONB event: datetimes, sets and
    # objects become their repr; NaN and circular structures (ValueError) fall back to reprs.
    try:
        encoded = json.dumps(data, default=repr, allow_nan=False)
    except ValueError:
        encoded = json.dumps({key: repr(value) for key, value in data.items()})
    if len(encoded) > MAX_LOG_LINE_CHARS:
        return {"truncated": True, "preview": encoded[:MAX_LOG_LINE_CHARS]}
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


@dataclass(frozen=True)
class StepRecord:
    """Log lines and telemetry taken from a context, with how many of each were dropped overall."""

    logs: list[LogLine]
    logs_truncated: int
    telemetry: list[TelemetrySample]
    telemetry_truncated: int

    @property
    def empty(self) -> bool:
        """True when there is nothing to send."""
        return not (self.logs or self.telemetry)


def _normalise_level(level: Any) -> str:
    name = str(level).lower()
    name = LEVEL_ALIASES.get(name, name)
    return name if name in LOG_LEVELS else "info"


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"telemetry: {name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"telemetry: {name} must not be negative, got {value}")
    return value


def _progress(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"telemetry: progress must be a number from 0 to 1, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"telemetry: progress must be a number from 0 to 1, got {value}")
    # Clamped rather than refused: 1.0000000002 from float arithmetic must not fail a step.
    return min(1.0, max(0.0, float(value)))


class StepContext:
    """Inputs of one step attempt plus its bounded log and telemetry; the argument a python handler receives.

    Inputs: `trigger`, `run` (id, pipeline, pipeline_version, tenant), `step`, `config`,
    `results` (earlier steps' results by name), `settings` (the step's `with`), `attempt`
    (1, 2, ...), `idempotency_key` (`run_id:step:attempt`), `partition_key` (the run's
    slice key or None), `is_replay` and `dry_run`.
    """

    def __init__(
        self,
        *,
        trigger: dict[str, Any],
        run: dict[str, Any],
        step: str,
        config: dict[str, Any],
        results: dict[str, Any],
        attempt: int,
        idempotency_key: str,
        settings: dict[str, Any],
        step_type: str = "action",
        partition_key: str | None = None,
    ) -> None:
        self.trigger = trigger
        self.run = run
        self.step = step
        self.config = config
        self.results = results
        self.attempt = attempt
        self.idempotency_key = idempotency_key
        self.settings = settings
        self.step_type = step_type
        self.partition_key = partition_key if partition_key is not None else _slice_key(trigger)
        self.is_replay = bool(trigger.get("replay_of") or trigger.get("is_replay"))
        """True when the run re-processes a stored trigger (a replay): side effects may repeat."""
        self.dry_run = bool(trigger.get("dry_run"))
        """True for a dry-run replay (actions are normally skipped before reaching a worker)."""
        self._lines: HeadTailBuffer[LogLine] = HeadTailBuffer(MAX_LOG_LINES)
        self._samples: HeadTailBuffer[TelemetrySample] = HeadTailBuffer(MAX_TELEMETRY_SAMPLES)

    @classmethod
    def from_work_item(cls, item: WorkItem) -> StepContext:
        """Build the context of the attempt described by `item`."""
        return cls(
            trigger=item.trigger,
            run={
                "id": item.run_id,
                "pipeline": item.pipeline,
                "pipeline_version": item.pipeline_version,
                "tenant": item.tenant,
            },
            step=item.step,
            config=item.config,
            results=item.context,
            attempt=item.attempt,
            idempotency_key=item.idempotency_key,
            settings=item.settings,
            step_type=item.step_type,
            partition_key=item.partition_key,
        )

    # --- logs ---------------------------------------------------------------------------
    def log(self, *args: Any, level: str | None = None, data: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Record one structured log line: `log(level, message, data=None)` or `log(message, level=..., **fields)`.

        Levels are debug, info, warning and error (others become info). A message longer
        than MAX_LOG_LINE_CHARS is cut with a marker; beyond MAX_LOG_LINES lines per
        attempt the first and the latest half are kept and the dropped ones counted.
        """
        if len(args) == 1:
            message = args[0]
        elif len(args) in (2, 3):
            if level is not None:
                raise TypeError("log(): level given both positionally and as a keyword")
            level, message = args[0], args[1]
            if len(args) == 3:
                if data is not None:
                    raise TypeError("log(): data given both positionally and as a keyword")
                data = args[2]
        else:
            raise TypeError(f"log() takes (message) or (level, message[, data]), got {len(args)} positional arguments")
        merged: dict[str, Any] = {**(dict(data) if data is not None else {}), **fields}
        line = LogLine(
            at=datetime.now(UTC),
            level=_normalise_level(level or "info"),
            message=truncate_text(str(message), MAX_LOG_LINE_CHARS),
            data=_json_safe(merged) if merged else None,
        )
        self._lines.append(line)

    @property
    def logs(self) -> list[LogLine]:
        """The kept log lines, oldest first."""
        return self._lines.items()

    @property
    def truncated(self) -> int:
        """Log lines dropped so far."""
        return self._lines.dropped

    # --- telemetry ------------------------------------------------------------------------
    def telemetry(
        self,
        rows: int | None = None,
        bytes: int | None = None,  # shadows the builtin on purpose: the field is called bytes
        progress: float | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one telemetry sample: rows and bytes processed so far, progress from 0 to 1, extra data."""
        if rows is None and bytes is None and progress is None and not data:
            raise ValueError("telemetry: give at least one of rows, bytes, progress or data")
        sample = TelemetrySample(
            at=datetime.now(UTC),
            rows=_count("rows", rows),
            bytes=_count("bytes", bytes),
            progress=_progress(progress),
            data=_json_safe(data) if data else None,
        )
        self._samples.append(sample)

    @property
    def samples(self) -> list[TelemetrySample]:
        """The kept telemetry samples, oldest first."""
        return self._samples.items()

    # --- what the worker sends --------------------------------------------------------------
    def take_live(self) -> StepRecord:
        """Lines and samples safe to send while the step runs (never dropped later); each is taken once."""
        return StepRecord(self._lines.take_head(), 0, self._samples.take_head(), 0)

    def take_rest(self) -> StepRecord:
        """Everything not taken yet plus the dropped counts, for the outcome; call once when the step ends."""
        return StepRecord(
            self._lines.take_rest(), self._lines.dropped, self._samples.take_rest(), self._samples.dropped
        )


def _slice_key(trigger: dict[str, Any]) -> str | None:
    value = trigger.get("slice_key")
    return value if isinstance(value, str) else None
