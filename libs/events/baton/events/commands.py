"""Operator commands: API/CLI -> runner, as NATS request/reply on ``<prefix>.cmd.<tenant>.<verb>``.

A command needs a verdict (cancelling a finished run is a conflict, not a success), so
it is a request the runner answers after it has appended the command's events; the
events, not the message, are what make it durable. Commands are idempotent: a
repeated cancel of a run the same command already canceled answers ``ok``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class CancelRun(BaseModel):
    """Cancel a run that has not finished."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    verb: Literal["cancel"] = "cancel"
    run_id: str
    reason: str = Field(default="", max_length=2000)
    actor: str | None = None


class RetryRun(BaseModel):
    """Run a failed run again from its first failed step (also re-drives a dead letter)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    verb: Literal["retry"] = "retry"
    run_id: str
    reason: str = Field(default="", max_length=2000)
    actor: str | None = None
    dead_letter_id: str | None = None


class ReplayTrigger(BaseModel):
    """Re-process a stored trigger through matching into new runs marked as replays."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    verb: Literal["replay"] = "replay"
    trigger_id: str
    replay_id: str = Field(description="Names the replay; the same replay id twice makes one set of runs.")
    dry_run: bool = False
    actor: str | None = None
    pipeline: str | None = Field(
        default=None,
        description="Re-run only this pipeline (bulk replay by pipeline); default: every pipeline the trigger matches.",
    )


Command = CancelRun | RetryRun | ReplayTrigger


class CommandReply(BaseModel):
    """The runner's verdict: an HTTP-like status, a message for people, and data."""

    model_config = ConfigDict(frozen=True)
    status: int = Field(description="200 done, 404 unknown, 409 not allowed in the current state, 400 bad command.")
    message: str
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True for a 2xx verdict."""
        return 200 <= self.status < 300
