"""What a step handler sees: its inputs (`StepContext`) and how it reports failure (`ActionFailed`)."""

from __future__ import annotations

import json
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

from baton.events.catalogue import LogLine
from baton.events.messages import MAX_LOG_LINE_CHARS, MAX_LOG_LINES, WorkItem

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})


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


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
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


class StepContext:
    """Inputs of one step attempt plus a bounded log; the only argument a python handler receives."""

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
        # Keeping the *last* lines: when a step fails, the end of its log explains why.
        self._lines: deque[LogLine] = deque(maxlen=MAX_LOG_LINES)
        self.truncated = 0
        # Sync handlers run in a worker thread while the action code may log from the loop.
        self._lock = threading.Lock()

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
        )

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        """Record one log line; beyond MAX_LOG_LINES the oldest lines are dropped and counted."""
        level = level.lower()
        if level not in LOG_LEVELS:
            level = "info"
        line = LogLine(
            at=datetime.now(UTC),
            level=level,
            message=truncate_text(str(message), MAX_LOG_LINE_CHARS),
            data=_json_safe(data) if data else None,
        )
        with self._lock:
            if len(self._lines) == self._lines.maxlen:
                self.truncated += 1
            self._lines.append(line)

    @property
    def logs(self) -> list[LogLine]:
        """The kept log lines, oldest first."""
        with self._lock:
            return list(self._lines)
