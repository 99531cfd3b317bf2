"""Pipeline projection: current definition and version history behind GET /pipelines."""

from __future__ import annotations

from typing import Any

from baton.events.catalogue import upcast
from baton.events.envelope import StoredEvent

Doc = dict[str, Any]


def apply_pipeline(doc: Doc | None, event: StoredEvent) -> Doc | None:
    """Fold a pipeline-stream event into the pipeline document (current version + history)."""
    if event.stream_type != "pipeline" or event.type != "pipeline_version_created":
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
    }
