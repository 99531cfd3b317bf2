"""Durable timers: the messages between the runner (which asks) and the scheduler (which fires).

The runner publishes a ``TimerRequest`` to ``<prefix>.timer.set`` on the TIMERS stream
(``Nats-Msg-Id`` = ``set:<timer_id>``), so a request survives a scheduler that is down.
The scheduler stores it, and when it is due publishes a ``TimerFired`` to
``<prefix>.timer.fired`` (``Nats-Msg-Id`` = ``fired:<timer_id>``). Timers are
at-least-once: the runner records each timer in the run's stream and ignores a fire
for a timer the run no longer waits on, so a timer fired twice changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TimerPurpose = Literal["delay", "backoff", "step_timeout", "run_timeout"]


class TimerRequest(BaseModel):
    """Arm a timer: fire ``payload`` back at ``due_at`` (at once if that is past)."""

    model_config = ConfigDict(frozen=True)
    timer_id: str = Field(min_length=1, max_length=400, description="Unique and deterministic; re-sending is safe.")
    tenant: str
    due_at: datetime
    payload: dict[str, Any] = Field(default_factory=dict, description="Echoed in the fire (run_id, purpose, ...).")


class TimerCancel(BaseModel):
    """Disarm a timer; cancelling an unknown or fired timer is a no-op."""

    model_config = ConfigDict(frozen=True)
    timer_id: str


class TimerFired(BaseModel):
    """A timer came due."""

    model_config = ConfigDict(frozen=True)
    timer_id: str
    tenant: str
    due_at: datetime
    fired_at: datetime
    payload: dict[str, Any] = Field(default_factory=dict)


def run_timer_id(run_id: str, purpose: TimerPurpose, step: str | None = None, attempt: int | None = None) -> str:
    """The id of a run's timer: the same (run, purpose, step, attempt) always names the same timer."""
    parts = [run_id, purpose]
    if step is not None:
        parts.append(step)
    if attempt is not None:
        parts.append(str(attempt))
    return ":".join(parts)
