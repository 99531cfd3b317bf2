"""Publishing a pipeline's operator state (active, paused, draining) to the KV bucket the services watch.

The event in the pipeline's stream is the truth; the entry under ``control.<tenant>.<pipeline>``
is its cache. Puts are compare-and-set and the newer event-store position wins, so a start-up
heal racing an operator action never brings back an older state.
"""

from __future__ import annotations

from nats.js.kv import KeyValue
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.api.definitions import put_if_newer
from baton.api.queries import latest_operator_events
from baton.events.catalogue import upcast
from baton.events.control import PipelineControl
from baton.events.envelope import StoredEvent
from baton.events.projections.pipelines import OPERATOR_STATES
from baton.events.subjects import Subjects


def control_of(event: StoredEvent) -> PipelineControl:
    """The operator state a pipeline_paused / _resumed / _draining event sets."""
    data = upcast(event.type, event.schema_version, dict(event.data))
    return PipelineControl(
        state=OPERATOR_STATES[event.type],
        changed_at=event.recorded_at,
        reason=data.get("reason", ""),
        actor=data.get("actor"),
        position=event.position,
    )


async def publish_control(kv: KeyValue, subjects: Subjects, tenant: str, name: str, control: PipelineControl) -> bool:
    """Put ``control`` unless the bucket holds a state from this position or later; True when written."""
    key = subjects.definition_key("control", tenant, name)
    return await put_if_newer(kv, key, control.model_dump_json().encode(), "position", control.position)


async def republish_all_controls(engine: AsyncEngine, kv: KeyValue, subjects: Subjects) -> int:
    """Put every pipeline's latest operator state into the bucket; returns how many entries changed.

    Heals a crash between appending an operator event and putting its state in the bucket.
    """
    changed = 0
    for event in await latest_operator_events(engine):
        data = upcast(event.type, event.schema_version, dict(event.data))
        if await publish_control(kv, subjects, data["tenant"], data["name"], control_of(event)):
            changed += 1
    return changed
