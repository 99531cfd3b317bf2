"""Schedules: the ``schedule`` block of a pipeline (cron strings, timezone, missed-fire policy).

Validated here so a pipeline with an invalid cron or an unknown timezone is refused at
PUT time with the field named; the scheduler service computes fire times from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from baton.events.cron import CronError, CronExpression, CronSchedule, slot_key
from baton.events.subjects import Subjects
from baton.events.trigger import TriggerMessage, trigger_id_for

MAX_CRONS = 20


class ScheduleSpec(BaseModel):
    """When a pipeline fires on its own: one or more cron strings in an IANA timezone, and its missed-fire policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: list[str] = Field(
        min_length=1, max_length=MAX_CRONS,
        description="'m h dom mon dow' strings (standard cron; 6 fields add a leading seconds field; @daily ...).",
    )
    timezone: str = Field(default="UTC", description="IANA timezone the cron strings are read in.")
    missed: Literal["skip", "latest", "catch_up"] = Field(
        default="skip", description="What to do with slots missed while the scheduler was down or the pipeline paused."
    )
    catch_up_window: timedelta = Field(
        default=timedelta(hours=24), description="How far back 'catch_up' and 'latest' look (e.g. 'PT6H' or 3600).",
    )
    enabled: bool = True
    payload: dict[str, Any] = Field(default_factory=dict, description="Payload of every trigger a fire publishes.")

    @field_validator("cron", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @field_validator("cron")
    @classmethod
    def _valid_crons(cls, crons: list[str]) -> list[str]:
        for index, expression in enumerate(crons):
            try:
                CronExpression.parse(expression)
            except CronError as exc:
                raise ValueError(f"cron[{index}] {expression!r} is invalid: {exc}") from exc
        return crons

    @field_validator("catch_up_window")
    @classmethod
    def _positive_window(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("catch_up_window must be positive")
        return value

    def cron_schedule(self) -> CronSchedule:
        """The fire-time calculator for these cron strings in this timezone."""
        return CronSchedule(self.cron, self.timezone)

    def signature(self) -> str:
        """What decides the slots (cron strings and timezone): a change re-anchors missed-slot detection."""
        return f"{self.timezone}|{'|'.join(self.cron)}"


@dataclass(frozen=True)
class SlotTrigger:
    """The trigger of one slot, ready to publish: subject, JSON body and its idempotency key (the Nats-Msg-Id)."""

    subject: str
    body: bytes
    idempotency_key: str
    trigger_id: str
    slice_key: str | None
    slot: datetime


def slot_trigger(
    subjects: Subjects,
    tenant: str,
    pipeline: str,
    trigger_type: str,
    slot: datetime,
    payload: dict[str, Any],
    origin: Literal["schedule", "backfill"] = "schedule",
    with_slice: bool = False,
) -> SlotTrigger:
    """The trigger a slot publishes, targeting only ``pipeline``; the same slot always gives the same key."""
    key = f"{origin}:{pipeline}:{slot_key(slot)}"
    slice_value = slot_key(slot) if with_slice else None
    message = TriggerMessage(
        source="scheduler" if origin == "schedule" else "backfill",
        type=trigger_type,
        tenant=tenant,
        payload=payload,
        idempotency_key=key,
        triggered_by="schedule",
        pipeline=pipeline,
        slice_key=slice_value,
        scheduled_at=slot.astimezone(UTC),
    )
    return SlotTrigger(
        subject=subjects.trigger(tenant, trigger_type),
        body=message.model_dump_json(exclude_none=True).encode(),
        idempotency_key=key,
        trigger_id=trigger_id_for(tenant, key),
        slice_key=slice_value,
        slot=slot,
    )
