"""The monitor service's view of definitions, kept current from the NATS KV bucket the API writes.

Monitors arrive under ``monitor.<tenant>.<name>``; pipelines under ``pipeline.<tenant>.<name>``
(a monitor needs its target's trigger type and filters to fire a trigger only it matches).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from baton.events.monitor import AnyMonitor, parse_monitor
from baton.events.pipeline import TriggerMatch

log = logging.getLogger(__name__)

MonitorKey = tuple[str, str]


@dataclass(frozen=True)
class MonitorEntry:
    """One monitor version as the service holds it."""

    tenant: str
    name: str
    version: int
    model: AnyMonitor
    created_at: datetime | None

    @property
    def key(self) -> MonitorKey:
        """(tenant, name)."""
        return (self.tenant, self.name)


@dataclass(frozen=True)
class TargetPipeline:
    """What a monitor needs to know about the pipeline it fires: its trigger match and whether it is on."""

    tenant: str
    name: str
    version: int
    trigger: TriggerMatch
    enabled: bool


@dataclass(frozen=True)
class IndexChange:
    """What one KV entry changed: a monitor put (entry) or removed (entry None), or a pipeline."""

    kind: str
    key: MonitorKey
    entry: MonitorEntry | None = None


class DefinitionIndex:
    """Current monitors and pipeline targets by (tenant, name)."""

    def __init__(self) -> None:
        self.monitors: dict[MonitorKey, MonitorEntry] = {}
        self.pipelines: dict[MonitorKey, TargetPipeline] = {}

    def apply_kv_entry(self, key: str, value: bytes | None, operation: str | None) -> IndexChange | None:
        """Apply one KV update; returns what changed (None for other kinds and unreadable entries)."""
        kind, _, rest = key.partition(".")
        tenant, _, name = rest.partition(".")
        if kind not in ("monitor", "pipeline") or not tenant or not name:
            return None
        deleted = operation in ("DEL", "PURGE") or not value
        if kind == "pipeline":
            return self._apply_pipeline(tenant, name, None if deleted else value)
        if deleted:
            self.monitors.pop((tenant, name), None)
            return IndexChange("monitor", (tenant, name), None)
        try:
            body = json.loads(value or b"")
            entry = MonitorEntry(
                tenant=tenant,
                name=name,
                version=int(body["version"]),
                model=parse_monitor(body["definition"]),
                created_at=datetime.fromisoformat(body["created_at"]) if body.get("created_at") else None,
            )
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.error("ignoring malformed monitor entry %s: %s", key, exc)
            return None
        current = self.monitors.get((tenant, name))
        if current is not None and current.version > entry.version:
            return None
        self.monitors[(tenant, name)] = entry
        return IndexChange("monitor", (tenant, name), entry)

    def _apply_pipeline(self, tenant: str, name: str, value: bytes | None) -> IndexChange | None:
        if value is None:
            self.pipelines.pop((tenant, name), None)
            return IndexChange("pipeline", (tenant, name))
        try:
            body: dict[str, Any] = json.loads(value)
            definition = body["definition"]
            target = TargetPipeline(
                tenant=tenant,
                name=name,
                version=int(body["version"]),
                trigger=TriggerMatch.model_validate(definition["trigger"]),
                enabled=bool(definition.get("enabled", True)),
            )
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.error("ignoring malformed pipeline entry pipeline.%s.%s: %s", tenant, name, exc)
            return None
        self.pipelines[(tenant, name)] = target
        return IndexChange("pipeline", (tenant, name))
