"""Schedules: the ``schedule`` block of a pipeline (cron strings, timezone, missed-fire policy).

Validated here so a pipeline with an invalid cron or an unknown timezone is refused at
PUT time with the field named; the scheduler service computes fire times from it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CRONS = 20


class ScheduleSpec(BaseModel):
    """When a pipeline fires on its own: one or more 5-field cron strings in an IANA timezone."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: list[str] = Field(min_length=1, max_length=MAX_CRONS, description="'m h dom mon dow' strings.")
    timezone: str = Field(default="UTC", description="IANA timezone the cron strings are read in.")
    missed: Literal["skip", "latest", "catch_up"] = Field(
        default="skip", description="What to do with slots missed while the scheduler was down or the pipeline paused."
    )
    catch_up_window: timedelta = Field(
        default=timedelta(hours=24), description="How far back 'catch_up' and 'latest' look (e.g. 'PT6H' or 3600)."
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
                CronTrigger.from_crontab(expression, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"cron[{index}] {expression!r} is invalid: {exc}") from exc
        return crons
