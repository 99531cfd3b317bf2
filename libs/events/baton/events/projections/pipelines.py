"""Pipeline projection: current definition, version history and operator state behind GET /pipelines."""

from __future__ import annotations

import copy
from typing import Any

from baton.events.catalogue import upcast
from baton.events.control import OperatorState
from baton.events.envelope import StoredEvent

Doc = dict[str, Any]
# Operator events and the state each one leaves the pipeline in.
OPERATOR_STATES: dict[str, OperatorState] = {
    "pipeline_paused": "paused",
    "pipeline_resumed": "active",
    "pipeline_draining": "draining",
}


def apply_pipeline(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """Fold a pipeline-stream event into the pipeline document (current version, history, operator state)."""
    if event.stream_type != "pipeline":
        return doc
    if event.type in OPERATOR_STATES:
        return _operator_action(doc, event)
    if event.type != "pipeline_version_created":
        return doc
    data = upcast(event.type, event.schema_version, dict(event.data))
    history = list((doc or {}).get("versions", []))
    history.append({"version": data["version"], "created_at": event.recorded_at.isoformat()})
    return {
        "tenant": data["tenant"],
        "name": data["name"],
        "version": data["version"],
        "definition": data["definition"],
        "enabled": bool(data["definition"].get("enabled", True)),
        "trigger_type": data["definition"]["trigger"]["type"],
        "created_at": (doc or {}).get("created_at", event.recorded_at.isoformat()),
        "updated_at": event.recorded_at.isoformat(),
        "versions": history,
        "state": (doc or {}).get("state", "active"),
        "state_changed": (doc or {}).get("state_changed"),
    }


def _operator_action(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """Pause, resume or drain: sets the operator state (an action before the first version changes nothing)."""
    if doc is None:
        return None
    data = upcast(event.type, event.schema_version, dict(event.data))
    new = copy.deepcopy(doc)
    new["state"] = OPERATOR_STATES[event.type]
    new["state_changed"] = {
        "at": event.recorded_at.isoformat(),
        "reason": data.get("reason", ""),
        "actor": data.get("actor"),
        "position": event.position,
    }
    return new
