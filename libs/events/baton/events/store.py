"""The event store port: what every backend (in-memory, PostgreSQL) must do.

Appends are optimistic: the caller states the stream version it decided on
(``NO_STREAM`` for a new stream, ``ANY_VERSION`` to skip the check) and a mismatch
is a ``WrongExpectedVersion`` the caller resolves by reloading and deciding again.
``append_units`` commits many independent units in one transaction (group commit);
each unit is all-or-nothing across the streams it touches (a trigger and its runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from baton.events.envelope import NewEvent, StoredEvent

NO_STREAM = 0
ANY_VERSION = -1


class EventStoreError(Exception):
    """Base of every error the event store raises."""


class WrongExpectedVersion(EventStoreError):
    """The stream was not at the version the caller expected: reload and decide again."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class StoreUnavailable(EventStoreError):
    """The backend could not be reached or failed transiently; the append may be retried."""


@dataclass(frozen=True)
class AppendRequest:
    """Events for one stream, and the version the stream must be at before them."""

    stream_id: str
    tenant: str
    events: Sequence[NewEvent]
    expected_version: int = ANY_VERSION


# A unit's outcome: the new version of each of its streams, or the conflict that refused it.
UnitResult = list[int] | WrongExpectedVersion


class EventStore(Protocol):
    """Append-only event storage with per-stream versions and a global commit-ordered position."""

    async def append_units(self, units: Sequence[Sequence[AppendRequest]]) -> list[UnitResult]:
        """Append several units in one transaction; a conflicting unit is refused alone."""
        ...

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        """Events of one stream in version order, starting at ``from_version``."""
        ...

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Committed events with a position greater than ``after_position``, in position order.

        Never skips an event that commits late: every position handed out below the
        highest one returned is either returned or will never exist.
        """
        ...

    async def head_position(self) -> int:
        """Highest committed position (0 when empty)."""
        ...


async def append_unit(store: EventStore, requests: Sequence[AppendRequest]) -> list[int]:
    """Append one all-or-nothing unit; returns its streams' new versions or raises the conflict."""
    (outcome,) = await store.append_units([requests])
    if isinstance(outcome, WrongExpectedVersion):
        raise outcome
    return outcome


async def append(
    store: EventStore, stream_id: str, tenant: str, events: Sequence[NewEvent], expected_version: int
) -> int:
    """Append to one stream; returns its new version or raises WrongExpectedVersion."""
    return (await append_unit(store, [AppendRequest(stream_id, tenant, events, expected_version)]))[0]


def plan_units(
    units: Sequence[Sequence[AppendRequest]], versions: dict[str, int]
) -> tuple[list[UnitResult], list[tuple[AppendRequest, int]]]:
    """Check each unit against current ``versions`` (updated in place as units are accepted).

    Returns every unit's outcome and the accepted requests with the version each starts after.
    Shared by all backends so they agree exactly on conflict semantics.
    """
    outcomes: list[UnitResult] = []
    accepted: list[tuple[AppendRequest, int]] = []
    for unit in units:
        trial = {r.stream_id: versions.get(r.stream_id, 0) for r in unit}
        conflict: WrongExpectedVersion | None = None
        planned: list[tuple[AppendRequest, int]] = []
        new_versions: list[int] = []
        for request in unit:
            current = trial[request.stream_id]
            conflict = check_expected(request.stream_id, request.expected_version, current)
            if conflict is not None:
                break
            planned.append((request, current))
            trial[request.stream_id] = current + len(request.events)
            new_versions.append(trial[request.stream_id])
        if conflict is not None:
            outcomes.append(conflict)
            continue
        versions.update(trial)
        accepted.extend(planned)
        outcomes.append(new_versions)
    return outcomes, accepted


def check_expected(stream_id: str, expected: int, actual: int) -> WrongExpectedVersion | None:
    """The conflict for ``expected`` against the stream's ``actual`` version, if any."""
    if expected in (ANY_VERSION, actual):
        return None
    return WrongExpectedVersion(stream_id, expected, actual)
