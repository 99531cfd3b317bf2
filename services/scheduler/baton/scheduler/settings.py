"""Scheduler service settings (environment ``BATON_*``), loaded once at start-up."""

from __future__ import annotations

from pydantic import Field

from baton.events.settings import ServiceSettings


class SchedulerSettings(ServiceSettings):
    """How the scheduler consumes timer requests and fires due timers."""

    timer_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Backstop poll of the timer table (timers armed through another replica, missed wake-ups).",
    )
    timer_intake_batch: int = Field(default=500, ge=1, le=5000, description="Timer requests fetched per pull.")
    timer_fire_batch: int = Field(default=200, ge=1, le=5000, description="Due timers claimed per transaction.")
    timer_fire_concurrency: int = Field(
        default=4, ge=1, le=16, description="Fire batches in flight at once (each holds a database connection)."
    )
    timer_ack_wait_seconds: float = Field(default=10.0, ge=1.0, description="Redelivery delay of unacked requests.")
    timer_memory_limit: int = Field(
        default=100_000, ge=100, description="Most due times kept in memory (the rest wait for the poll)."
    )
    timer_retention_hours: float = Field(
        default=192.0,
        ge=1.0,
        description="Keep fired timers and cancel tombstones this long (longer than the TIMERS stream's 7 days), "
        "so a late duplicate set stays a no-op.",
    )
