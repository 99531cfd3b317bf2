"""Test helpers for durable timers: play the runner's part on NATS and read what fired."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext

from baton.events.subjects import Subjects
from baton.events.timers import TimerCancel, TimerFired, TimerRequest

TENANT = "acme"


def due_in(seconds: float) -> datetime:
    """A due time ``seconds`` from now (negative: already past)."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def set_timer(
    js: JetStreamContext,
    subjects: Subjects,
    timer_id: str,
    due_at: datetime,
    payload: dict[str, Any] | None = None,
    msg_id: str | None = None,
) -> None:
    """Publish a TimerRequest the way the runner does (``Nats-Msg-Id = set:<timer_id>``)."""
    request = TimerRequest(timer_id=timer_id, tenant=TENANT, due_at=due_at, payload=payload or {"run_id": timer_id})
    await js.publish(
        subjects.timer_set, request.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id or f"set:{timer_id}"}
    )


async def cancel_timer(js: JetStreamContext, subjects: Subjects, timer_id: str) -> None:
    """Publish a TimerCancel the way the runner does."""
    body = TimerCancel(timer_id=timer_id).model_dump_json().encode()
    await js.publish(subjects.timer_cancel, body, headers={"Nats-Msg-Id": f"cancel:{timer_id}"})


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[tuple[bytes, dict[str, str]]]:
    """Every message stored in ``stream`` on ``subject`` (data and headers), in stream order."""
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except Exception:  # a gap (deleted message) is not a failure
            continue
        if msg.subject == subject:
            found.append((msg.data or b"", dict(msg.headers or {})))
    return found


async def fired_in_stream(js: JetStreamContext, subjects: Subjects) -> list[TimerFired]:
    """Every TimerFired stored on the TIMERS stream, in order (a deduplicated repeat is not stored)."""
    messages = await stream_messages(js, subjects.timers_stream, subjects.timer_fired)
    return [TimerFired.model_validate_json(data) for data, _ in messages]


def fired_ids(fired: list[TimerFired]) -> list[str]:
    """The timer ids of some fires, in order."""
    return [f.timer_id for f in fired]


def raw(body: dict[str, Any]) -> bytes:
    """A hand-written JSON body (for malformed requests)."""
    return json.dumps(body).encode()


async def stored_count(js: JetStreamContext, stream: str, subject: str) -> int:
    """How many messages ``stream`` stores on ``subject`` (one server call, for polling)."""
    info = await js.stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))
