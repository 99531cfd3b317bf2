"""Backpressure: which runs may run now, per pipeline and per tenant, first in first out.

Pure bookkeeping, no I/O. The runner rebuilds it on start from the event store (open
runs that started are active, open runs still pending are queued in creation order),
so the in-flight counts are derived from events: a crashed worker or runner never
leaks a slot, because a run's slot is freed by its terminal event and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

PipelineKey = tuple[str, str]  # (tenant, pipeline)


@dataclass(frozen=True)
class Limits:
    """What bounds a pipeline right now: its run limit, its tenant's, and its operator state."""

    pipeline_max: int | None = None
    tenant_max: int | None = None
    paused: bool = False


@dataclass
class Admission:
    """Active and queued runs per pipeline and tenant."""

    limits: Callable[[str, str], Limits]
    active: dict[PipelineKey, set[str]] = field(default_factory=dict)
    tenant_active: dict[str, int] = field(default_factory=dict)
    queued: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant -> {run_id: pipeline}, FIFO
    _where: dict[str, PipelineKey] = field(default_factory=dict)
    _unstored: set[str] = field(default_factory=set)

    def blocked_by(self, tenant: str, pipeline: str, ignore_queue: bool = False) -> str | None:
        """Why a new run of ``pipeline`` cannot start now, or None when it may."""
        limits = self.limits(tenant, pipeline)
        if limits.paused:
            return "pipeline paused"
        running = len(self.active.get((tenant, pipeline), ()))
        if limits.pipeline_max is not None and running >= limits.pipeline_max:
            return f"pipeline at its limit of {limits.pipeline_max} concurrent runs"
        if limits.tenant_max is not None and self.tenant_active.get(tenant, 0) >= limits.tenant_max:
            return f"tenant at its limit of {limits.tenant_max} concurrent runs"
        if not ignore_queue and any(p == pipeline for p in self.queued.get(tenant, {}).values()):
            return "earlier runs of the pipeline are queued"
        return None

    def admit(self, tenant: str, pipeline: str, run_id: str, stored: bool = True) -> str | None:
        """Take a slot for a new run (None), or queue it and return why it waits.

        ``stored=False``: the run's pending state is not committed yet; it keeps its place
        in the queue but cannot start (nor let later runs of its pipeline pass it) until
        ``mark_stored``.
        """
        reason = self.blocked_by(tenant, pipeline)
        if reason is None:
            self._activate(tenant, pipeline, run_id)
        else:
            self.enqueue(tenant, pipeline, run_id, stored)
        return reason

    def enqueue(self, tenant: str, pipeline: str, run_id: str, stored: bool = True) -> None:
        """Put a pending run at the back of its tenant's queue."""
        if run_id not in self._where:
            self.queued.setdefault(tenant, {})[run_id] = pipeline
            self._where[run_id] = (tenant, pipeline)
            if not stored:
                self._unstored.add(run_id)

    def mark_stored(self, run_id: str) -> None:
        """The run's pending state is committed: it may start when its turn comes."""
        self._unstored.discard(run_id)

    def activate(self, tenant: str, pipeline: str, run_id: str) -> None:
        """Count a run that is already running (rebuilding from the store)."""
        self._activate(tenant, pipeline, run_id)

    def _activate(self, tenant: str, pipeline: str, run_id: str) -> None:
        self.queued.get(tenant, {}).pop(run_id, None)
        slots = self.active.setdefault((tenant, pipeline), set())
        if run_id not in slots:
            slots.add(run_id)
            self.tenant_active[tenant] = self.tenant_active.get(tenant, 0) + 1
        self._where[run_id] = (tenant, pipeline)

    def forget(self, run_id: str) -> PipelineKey | None:
        """A run ended (or its creation was not stored): free its slot or its place in the queue."""
        self._unstored.discard(run_id)
        key = self._where.pop(run_id, None)
        if key is None:
            return None
        tenant = key[0]
        self.queued.get(tenant, {}).pop(run_id, None)
        slots = self.active.get(key)
        if slots is not None and run_id in slots:
            slots.discard(run_id)
            self.tenant_active[tenant] -= 1
        return key

    def startable(self, tenant: str) -> list[tuple[str, str]]:
        """Queued runs of ``tenant`` that may start now, in queue order, their slots taken.

        A pipeline whose first queued run is blocked blocks its later runs too (FIFO per
        pipeline); another pipeline's runs may pass it when only the pipeline limit binds.
        """
        chosen: list[tuple[str, str]] = []
        blocked: set[str] = set()
        for run_id, pipeline in list(self.queued.get(tenant, {}).items()):
            if pipeline in blocked:
                continue
            if run_id in self._unstored:
                blocked.add(pipeline)
                continue
            if self.blocked_by(tenant, pipeline, ignore_queue=True) is not None:
                blocked.add(pipeline)
                continue
            self._activate(tenant, pipeline, run_id)
            chosen.append((run_id, pipeline))
        return chosen

    def tenants_with_queue(self) -> list[str]:
        """Tenants that have queued runs."""
        return [tenant for tenant, runs in self.queued.items() if runs]

    def running(self, tenant: str, pipeline: str) -> int:
        """How many runs of the pipeline hold a slot."""
        return len(self.active.get((tenant, pipeline), ()))
