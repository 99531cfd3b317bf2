"""The event envelope: what every stored and published fact looks like.

An event is appended to exactly one stream (a trigger, a run, a pipeline); its
``data`` is validated against the schema of its ``type`` at the ``schema_version``
it was written with (see ``baton.events.catalogue``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """Current time, timezone-aware in UTC (the only clock events carry)."""
    return datetime.now(UTC)


class EventMetadata(BaseModel):
    """Where an event came from: causal chain, trace context and actor."""

    model_config = ConfigDict(frozen=True, extra="allow")

    causation_id: str | None = Field(
        default=None, description="Id of the event or message that directly caused this event."
    )
    correlation_id: str | None = Field(
        default=None, description="Id shared by every event of one logical flow (the trigger id)."
    )
    traceparent: str | None = Field(default=None, description="W3C trace context of the producing span.")
    actor: str | None = Field(default=None, description="Who caused it: a service name, 'api', a user.")


class NewEvent(BaseModel):
    """An event about to be appended: it has no stream position yet."""

    model_config = ConfigDict(frozen=True)

    event_id: uuid.UUID = Field(
        default_factory=uuid.uuid4, description="Globally unique id; the NATS Nats-Msg-Id when relayed."
    )
    type: str = Field(description="Event type name, e.g. 'run_started'.")
    schema_version: int = Field(default=1, ge=1, description="Version of the data schema for this type.")
    data: dict[str, Any] = Field(default_factory=dict, description="Type-specific payload (JSON object).")
    metadata: EventMetadata = Field(default_factory=EventMetadata, description="Causation and tracing.")
    recorded_at: datetime = Field(default_factory=utcnow, description="When the fact was decided.")


class StoredEvent(BaseModel):
    """An event as read back from the store, with its stream and global position."""

    model_config = ConfigDict(frozen=True)

    position: int = Field(description="Global position in the store; increases in commit order.")
    event_id: uuid.UUID = Field(description="Globally unique id.")
    stream_id: str = Field(description="Stream the event belongs to, e.g. 'run-<uuid>'.")
    stream_type: str = Field(description="Kind of stream: 'trigger', 'run', 'pipeline'.")
    stream_version: int = Field(ge=1, description="1-based position of the event within its stream.")
    tenant: str = Field(description="Tenant (workspace) that owns the stream.")
    type: str = Field(description="Event type name.")
    schema_version: int = Field(ge=1, description="Schema version the data was written with.")
    data: dict[str, Any] = Field(description="Type-specific payload.")
    metadata: EventMetadata = Field(default_factory=EventMetadata, description="Causation and tracing.")
    recorded_at: datetime = Field(description="When the fact was decided.")

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form used on the NATS EVENTS subjects and by the API."""
        return self.model_dump(mode="json")


def stream_type_of(stream_id: str) -> str:
    """The stream type is the prefix of its id before the first '-' ('run-…' -> 'run')."""
    head, sep, _ = stream_id.partition("-")
    if not sep or not head:
        raise ValueError(f"stream id {stream_id!r} has no '<type>-' prefix")
    return head
