"""Parsing timer requests off the TIMERS stream: pure, so every rejection reason is unit-tested."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC

from pydantic import ValidationError

from baton.events.subjects import Subjects
from baton.events.timers import TimerCancel, TimerRequest


@dataclass(frozen=True)
class RejectedTimerMessage:
    """A message the scheduler cannot accept, with a reason code and a readable detail."""

    reason: str
    detail: str


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_timer_message(
    subjects: Subjects, subject: str, data: bytes
) -> TimerRequest | TimerCancel | RejectedTimerMessage:
    """Turn one message into a request or a cancel, or say why it is refused."""
    model: type[TimerRequest] | type[TimerCancel]
    if subject == subjects.timer_set:
        model = TimerRequest
    elif subject == subjects.timer_cancel:
        model = TimerCancel
    else:
        return RejectedTimerMessage("unknown_subject", f"subject {subject!r} is neither timer set nor cancel")
    try:
        parsed = model.model_validate_json(data)
    except ValidationError as exc:
        return RejectedTimerMessage("invalid_timer", _validation_summary(exc))
    if "\x00" in parsed.timer_id:
        return RejectedTimerMessage("invalid_timer", "timer_id contains a NUL character")
    if isinstance(parsed, TimerRequest):
        if "\x00" in parsed.tenant:
            return RejectedTimerMessage("invalid_timer", "tenant contains a NUL character")
        if parsed.due_at.tzinfo is None:  # a naive time is read as UTC, never as the server's zone
            parsed = parsed.model_copy(update={"due_at": parsed.due_at.replace(tzinfo=UTC)})
        if "\\u0000" in json.dumps(parsed.payload):
            return RejectedTimerMessage("invalid_timer", "payload contains a NUL character (not storable as jsonb)")
    return parsed
