"""In-memory event store for unit tests: the same contract as PostgreSQL, no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from baton.events.envelope import StoredEvent, stream_type_of
from baton.events.store import AppendRequest, EventStoreError, UnitResult, plan_units


class InMemoryEventStore:
    """A list of events guarded by a lock; positions are handed out in commit order."""

    def __init__(self) -> None:
        self._events: list[StoredEvent] = []
        self._versions: dict[str, int] = {}
        self._event_ids: set[str] = set()
        self._lock = asyncio.Lock()

    async def append_units(self, units: Sequence[Sequence[AppendRequest]]) -> list[UnitResult]:
        """Append several all-or-nothing units at once (see ``EventStore.append_units``)."""
        async with self._lock:
            versions = dict(self._versions)
            outcomes, accepted = plan_units(units, versions)
            fresh = [str(e.event_id) for request, _ in accepted for e in request.events]
            if len(set(fresh)) != len(fresh) or self._event_ids.intersection(fresh):
                raise EventStoreError("append violated a constraint: duplicate event id")
            for request, base in accepted:
                for offset, event in enumerate(request.events, start=1):
                    self._events.append(
                        StoredEvent(
                            position=len(self._events) + 1,
                            event_id=event.event_id,
                            stream_id=request.stream_id,
                            stream_type=stream_type_of(request.stream_id),
                            stream_version=base + offset,
                            tenant=request.tenant,
                            type=event.type,
                            schema_version=event.schema_version,
                            data=event.data,
                            metadata=event.metadata,
                            recorded_at=event.recorded_at,
                        )
                    )
            self._event_ids.update(fresh)
            self._versions = versions
            return outcomes

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        """Events of one stream in version order."""
        return [e for e in self._events if e.stream_id == stream_id and e.stream_version >= from_version]

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events after a position, in position order."""
        return self._events[after_position : after_position + limit]

    async def head_position(self) -> int:
        """Highest position."""
        return len(self._events)
