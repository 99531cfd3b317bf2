"""Monitor projection: the document behind GET /monitors/{name} and the rows behind its tick history."""

from __future__ import annotations

import copy
from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent

Doc = dict[str, Any]
MONITOR_EVENTS = ("monitor_version_created", "monitor_deleted", "monitor_ticked")


def initial(tenant: str, name: str) -> Doc:
    """The document of a monitor before any of its events."""
    return {
        "tenant": tenant, "name": name, "version": 0, "definition": None, "type": None, "pipeline": None,
        "enabled": False, "deleted": False, "created_at": None, "updated_at": None, "versions": [],
        "cursor": None, "last_tick": None, "last_fired_at": None, "last_error": None,
        "ticks": 0, "fires": 0, "errors": 0,
    }


def apply_monitor(doc: Doc, event: StoredEvent) -> Doc:
    """Fold a monitor or monitor-ticks stream event into the monitor document."""
    if event.type not in MONITOR_EVENTS:
        return doc
    data = upcast(event.type, event.schema_version, dict(event.data))
    at = event.recorded_at.isoformat()
    doc = copy.deepcopy(doc)
    if event.type == "monitor_version_created":
        definition = data["definition"]
        doc.update(
            version=data["version"], definition=definition, type=definition.get("type"),
            pipeline=definition.get("pipeline"), enabled=bool(definition.get("enabled", True)), deleted=False,
            created_at=doc["created_at"] or at, updated_at=at,
        )
        doc["versions"] = [*doc["versions"], {"version": data["version"], "created_at": at}]
    elif event.type == "monitor_deleted":
        doc.update(deleted=True, enabled=False, updated_at=at)
    else:
        doc["ticks"] += 1
        doc["fires"] += len(data.get("fired", []))
        doc["last_tick"] = tick_summary(data, event.stream_version)
        if data.get("cursor") is not None:
            doc["cursor"] = data["cursor"]
        if data.get("fired"):
            doc["last_fired_at"] = data["started_at"]
        if data["decision"] == "error":
            doc["errors"] += 1
            doc["last_error"] = {"at": data["started_at"], "error": data.get("error")}
        doc["updated_at"] = doc["updated_at"] or at
    return doc


def tick_summary(data: dict[str, Any], seq: int) -> Doc:
    """One tick as the API shows it (in a monitor's history and as its ``last_tick``)."""
    return {
        "seq": seq,
        "tick_id": data["tick_id"],
        "at": data["started_at"],
        "cause": data["cause"],
        "decision": data["decision"],
        "reason": data["reason"],
        "observed": data.get("observed"),
        "error": data.get("error"),
        "fired": data.get("fired", []),
        "duration_ms": data["duration_ms"],
        "consecutive_errors": data.get("consecutive_errors", 0),
        "next_due_at": data.get("next_due_at"),
        "cursor_changed": data.get("cursor") is not None,
        "monitor_version": data["monitor_version"],
        "replica": data.get("replica"),
    }
