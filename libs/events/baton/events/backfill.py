"""Backfill: one trigger per schedule slot in a time range, each with its slice key, published at a bounded rate.

Pure planning (``backfill_triggers``) and a paced publisher. Each slot's idempotency key
is ``backfill:<pipeline>:<slot>``, so repeating a backfill adds no runs: JetStream drops
the repeats inside its de-duplication window, the runner (deterministic trigger ids,
one run per slice) beyond it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from nats.js import JetStreamContext

from baton.events.bus import headers_for
from baton.events.schedule import ScheduleSpec, SlotTrigger, slot_trigger
from baton.events.subjects import Subjects

MAX_BACKFILL_SLOTS = 10_000
PUBLISH_TICK_SECONDS = 0.05


class BackfillTooLarge(ValueError):
    """The range holds more slots than one backfill may publish."""


@dataclass(frozen=True)
class BackfillOutcome:
    """What a paced publish did: how many messages JetStream stored, and how many it dropped as repeats."""

    published: int
    duplicates: int


def backfill_slots(
    spec: ScheduleSpec, start: datetime, end: datetime, limit: int = MAX_BACKFILL_SLOTS
) -> list[datetime]:
    """The schedule's slots in ``[start, end]`` (both inclusive); raises BackfillTooLarge beyond ``limit``."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("from and to must carry a timezone (e.g. 2025-01-01T00:00:00Z)")
    if end < start:
        raise ValueError("'to' is before 'from'")
    slots = spec.cron_schedule().slots_between(start - timedelta(microseconds=1), end, limit=limit + 1)
    if len(slots) > limit:
        raise BackfillTooLarge(f"the range holds more than {limit} slots; split it into smaller backfills")
    return slots


def backfill_triggers(
    subjects: Subjects, tenant: str, pipeline: str, trigger_type: str, spec: ScheduleSpec, slots: list[datetime]
) -> list[SlotTrigger]:
    """One trigger per slot, targeting only ``pipeline``, with the slot's time as slice key."""
    return [
        slot_trigger(subjects, tenant, pipeline, trigger_type, slot, spec.payload, origin="backfill", with_slice=True)
        for slot in slots
    ]


async def publish_paced(js: JetStreamContext, triggers: list[SlotTrigger], rate: float) -> BackfillOutcome:
    """Publish to JetStream at about ``rate`` triggers per second (small pipelined batches per tick)."""
    loop = asyncio.get_running_loop()
    batch = max(1, int(rate * PUBLISH_TICK_SECONDS))
    started = loop.time()
    duplicates = 0
    for index in range(0, len(triggers), batch):
        chunk = triggers[index : index + batch]
        acks = await asyncio.gather(
            *(js.publish(t.subject, t.body, headers=headers_for(t.idempotency_key)) for t in chunk)
        )
        duplicates += sum(1 for ack in acks if ack.duplicate)
        due = started + (index + len(chunk)) / rate
        pause = due - loop.time()
        if pause > 0 and index + batch < len(triggers):
            await asyncio.sleep(pause)  # pacing the rate limit, not synchronisation
    return BackfillOutcome(published=len(triggers) - duplicates, duplicates=duplicates)
