"""The runner's view of pipeline definitions, kept current from the NATS KV bucket.

Definitions travel over NATS (the API puts, every runner watches); the runner never
reads the API's tables. Matching is pure and runs against this in-memory index.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from baton.events.control import PipelineControl
from baton.events.pipeline import PipelineDefinition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineVersion:
    """One stored version of a pipeline: the validated model and its JSON document."""

    tenant: str
    name: str
    version: int
    model: PipelineDefinition
    document: dict[str, Any]


class DefinitionIndex:
    """Current pipeline versions by tenant, indexed by trigger type for fast matching."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], PipelineVersion] = {}
        self._by_type: dict[tuple[str, str], dict[str, PipelineVersion]] = {}
        self._control: dict[tuple[str, str], PipelineControl] = {}

    def control(self, tenant: str, name: str) -> PipelineControl:
        """The operator state of a pipeline (active unless paused or draining)."""
        return self._control.get((tenant, name)) or PipelineControl()

    def put_control(self, tenant: str, name: str, control: PipelineControl) -> bool:
        """Install an operator state unless an older one; True when it changed."""
        current = self._control.get((tenant, name))
        if current is not None and current.position > control.position:
            return False
        self._control[(tenant, name)] = control
        return current is None or current.state != control.state

    def __len__(self) -> int:
        return len(self._by_key)

    def put(self, tenant: str, name: str, version: int, document: dict[str, Any]) -> PipelineVersion | None:
        """Install a version (older versions than the one held are ignored); None if invalid."""
        current = self._by_key.get((tenant, name))
        if current is not None and current.version > version:
            return current
        try:
            model = PipelineDefinition.model_validate(document)
        except ValidationError as exc:
            log.error("ignoring invalid definition %s/%s v%d: %s", tenant, name, version, exc)
            return None
        self.remove(tenant, name)
        entry = PipelineVersion(tenant, name, version, model, document)
        self._by_key[(tenant, name)] = entry
        self._by_type.setdefault((tenant, model.trigger.type), {})[name] = entry
        return entry

    def remove(self, tenant: str, name: str) -> None:
        """Forget a pipeline (deleted)."""
        old = self._by_key.pop((tenant, name), None)
        if old is not None:
            self._by_type.get((tenant, old.model.trigger.type), {}).pop(name, None)

    def get(self, tenant: str, name: str) -> PipelineVersion | None:
        """The current version of one pipeline."""
        return self._by_key.get((tenant, name))

    def match(
        self, tenant: str, trigger_type: str, environment: str | None, resource_type: str | None,
        pipeline: str | None = None,
    ) -> list[PipelineVersion]:
        """Every enabled pipeline of ``tenant`` whose trigger filter accepts the trigger, by name.

        ``pipeline`` narrows the match to that one pipeline (schedules, monitors, backfills).
        """
        candidates = self._by_type.get((tenant, trigger_type), {})
        return sorted(
            (
                p for p in candidates.values()
                if p.model.matches(trigger_type, environment, resource_type) and pipeline in (None, p.name)
            ),
            key=lambda p: p.name,
        )

    def apply_kv_entry(self, key: str, value: bytes | None, operation: str | None) -> tuple[str, str] | None:
        """Apply one KV update ('pipeline.<tenant>.<name>' or 'control.<tenant>.<name>').

        Returns (tenant, name) when a pipeline's operator state changed, so queued runs can start.
        """
        kind, _, rest = key.partition(".")
        tenant, _, name = rest.partition(".")
        if not tenant or not name:
            return None
        if kind == "control":
            return self._apply_control(tenant, name, value, operation)
        if kind != "pipeline":
            return None
        if operation in ("DEL", "PURGE") or not value:
            self.remove(tenant, name)
            return None
        try:
            body = json.loads(value)
            self.put(tenant, name, int(body["version"]), body["definition"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring malformed definition entry %s: %s", key, exc)
        return (tenant, name)  # a new version may raise the pipeline's limit

    def _apply_control(
        self, tenant: str, name: str, value: bytes | None, operation: str | None
    ) -> tuple[str, str] | None:
        if operation in ("DEL", "PURGE") or not value:
            changed = self._control.pop((tenant, name), None) is not None
            return (tenant, name) if changed else None
        try:
            control = PipelineControl.model_validate_json(value)
        except ValidationError as exc:
            log.error("ignoring malformed control entry for %s/%s: %s", tenant, name, exc)
            return None
        return (tenant, name) if self.put_control(tenant, name, control) else None
