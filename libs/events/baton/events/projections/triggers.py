"""Trigger projection: the document behind GET /triggers/{id}, with the runs it started."""

from __future__ import annotations

import copy
from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent

Doc = dict[str, Any]


def apply_trigger(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """Fold a trigger-stream event into the trigger document (None before the first)."""
    if event.stream_type != "trigger":
        return doc
    data = upcast(event.type, event.schema_version, dict(event.data))
    at = event.recorded_at.isoformat()
    if event.type == "trigger_received":
        return {
            "trigger_id": data["trigger_id"],
            "tenant": data["tenant"],
            "type": data["type"],
            "status": "accepted",
            "source": data["source"],
            "resource_type": data.get("resource_type"),
            "resource_id": data.get("resource_id"),
            "environment": data.get("environment"),
            "payload": data.get("payload", {}),
            "idempotency_key": data["idempotency_key"],
            "triggered_by": data.get("triggered_by"),
            "received_at": at,
            "runs": data.get("runs", []),
        }
    if event.type == "trigger_rejected":
        return {
            "trigger_id": data["trigger_id"],
            "tenant": data.get("tenant"),
            "type": None,
            "status": "rejected",
            "subject": data["subject"],
            "reason": data["reason"],
            "detail": data["detail"],
            "body_excerpt": data.get("body_excerpt", ""),
            "received_at": at,
            "runs": [],
        }
    return copy.deepcopy(doc)
