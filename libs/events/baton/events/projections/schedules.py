"""Schedule projection: each schedule's last outcome, and its history of fires, skips and backfills.

Pure: folds ``schedule-<tenant>.<pipeline>`` stream events into a summary document
(behind ``GET /schedules``) and turns each event into one history entry.
"""

from __future__ import annotations

from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent

Doc = dict[str, Any]
HISTORY_TYPES = (
    "schedule_activated",
    "schedule_deactivated",
    "schedule_fired",
    "schedule_skipped",
    "schedule_backfilled",
)


def initial(tenant: str, pipeline: str) -> Doc:
    """The summary of a schedule with no events yet."""
    return {"tenant": tenant, "pipeline": pipeline, "active": False, "fires": 0, "skipped": 0, "last_outcome": None}


def apply_schedule(doc: Doc, event: StoredEvent) -> Doc:
    """Fold one schedule-stream event into the summary (a new document; the input is not changed)."""
    if event.stream_type != "schedule" or event.type not in HISTORY_TYPES:
        return doc
    data = upcast(event.type, event.schema_version, dict(event.data))
    new = {**doc, "updated_at": event.recorded_at.isoformat()}
    if event.type == "schedule_activated":
        new.update(active=True, cron=data["cron"], timezone=data["timezone"], missed=data["missed"],
                   activated_at=data["since"])
    elif event.type == "schedule_deactivated":
        new.update(active=False, deactivated_reason=data["reason"])
    elif event.type == "schedule_fired":
        new.update(fires=doc.get("fires", 0) + 1, last_fired_slot=data["slot"], last_trigger_id=data["trigger_id"])
    elif event.type == "schedule_skipped":
        new.update(skipped=doc.get("skipped", 0) + data["count"], last_skipped_slot=data["last_slot"])
    if event.type != "schedule_activated" or doc.get("last_outcome") is None:
        new["last_outcome"] = history_entry(event)
    return new


def history_entry(event: StoredEvent) -> Doc:
    """One line of a schedule's history: what happened, to which slot(s), and why."""
    data = upcast(event.type, event.schema_version, dict(event.data))
    entry: Doc = {"kind": event.type.removeprefix("schedule_"), "at": event.recorded_at.isoformat()}
    if event.type == "schedule_fired":
        entry.update(slot=data["slot"], fire_kind=data["kind"], trigger_id=data["trigger_id"],
                     slice_key=data.get("slice_key"), fired_at=data["fired_at"])
    elif event.type == "schedule_skipped":
        entry.update(first_slot=data["first_slot"], last_slot=data["last_slot"], count=data["count"],
                     count_exact=data.get("count_exact", True), reason=data["reason"])
    elif event.type == "schedule_activated":
        entry.update(cron=data["cron"], timezone=data["timezone"], since=data["since"], reason=data.get("reason"),
                     pipeline_version=data["pipeline_version"])
    elif event.type == "schedule_deactivated":
        entry.update(reason=data["reason"])
    elif event.type == "schedule_backfilled":
        entry.update(from_time=data["from_time"], to_time=data["to_time"], count=data["count"],
                     first_slot=data.get("first_slot"), last_slot=data.get("last_slot"), actor=data.get("actor"))
    return entry
