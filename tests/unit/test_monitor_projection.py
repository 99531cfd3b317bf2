"""The monitor reducer: definition versions, deletion, ticks, cursor and counters; and slot assignment."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from baton.events.catalogue import FiredTrigger, MonitorDeleted, MonitorTicked, MonitorVersionCreated
from baton.events.envelope import StoredEvent
from baton.events.projections.monitors import apply_monitor, initial
from baton.monitor.leases import owner_of, slot_of

pytestmark = pytest.mark.unit
AT = datetime(2026, 1, 1, tzinfo=UTC)


def stored(data: object, stream: str, version: int, position: int) -> StoredEvent:
    event = data.to_event(recorded_at=AT)  # type: ignore[attr-defined]
    return StoredEvent(position=position, event_id=uuid.uuid4(), stream_id=stream, stream_type=stream.split("-")[0],
                       stream_version=version, tenant="acme", type=event.type, schema_version=1, data=event.data,
                       recorded_at=AT)


def tick(decision: str, fired: int = 0, cursor: dict[str, object] | None = None) -> MonitorTicked:
    return MonitorTicked(
        tenant="acme", name="m", monitor_version=1, tick_id=str(uuid.uuid4()), cause="interval",
        decision=decision, reason="r", error="boom" if decision == "error" else None, cursor=cursor,
        fired=[FiredTrigger(idempotency_key=f"k{i}", trigger_id="t", pipeline="p", trigger_type="x",
                            observation_key=f"o{i}") for i in range(fired)],
        started_at=AT, duration_ms=1.5,
    )


def test_fold_tracks_versions_ticks_cursor_and_deletion() -> None:
    definition = {"name": "m", "type": "file", "pipeline": "p", "settings": {"directory": "/x"}}
    created = MonitorVersionCreated(tenant="acme", name="m", version=1, definition=definition)
    events = [
        stored(created, "monitor-acme.m", 1, 1),
        stored(tick("fire", fired=2, cursor={"type": "file", "seen": ["a"]}), "monitor_ticks-acme.m", 1, 2),
        stored(tick("no_fire"), "monitor_ticks-acme.m", 2, 3),
        stored(tick("error"), "monitor_ticks-acme.m", 3, 4),
    ]
    doc = initial("acme", "m")
    for event in events:
        doc = apply_monitor(doc, event)
    assert (doc["version"], doc["type"], doc["pipeline"], doc["enabled"]) == (1, "file", "p", True)
    assert (doc["ticks"], doc["fires"], doc["errors"]) == (3, 2, 1)
    assert doc["cursor"] == {"type": "file", "seen": ["a"]}  # a tick without a cursor keeps the last one
    assert doc["last_tick"]["seq"] == 3 and doc["last_tick"]["decision"] == "error"
    assert doc["last_error"]["error"] == "boom" and doc["last_fired_at"]
    gone = apply_monitor(doc, stored(MonitorDeleted(tenant="acme", name="m", version=1), "monitor-acme.m", 2, 5))
    assert gone["deleted"] and not gone["enabled"] and gone["cursor"] == doc["cursor"]


def test_slots_are_stable_and_split_between_replicas() -> None:
    assert slot_of("acme", "m", 64) == slot_of("acme", "m", 64)
    owners = [owner_of(slot, ["alpha", "beta"]) for slot in range(64)]
    assert {"alpha", "beta"} == set(owners)
    assert 16 <= owners.count("alpha") <= 48
    # Adding a replica only moves slots to the newcomer.
    with_gamma = [owner_of(slot, ["alpha", "beta", "gamma"]) for slot in range(64)]
    assert all(new in (old, "gamma") for old, new in zip(owners, with_gamma, strict=True))
    assert owner_of(1, []) is None
