"""NATS helpers shared by every service: connecting, and declaring streams and buckets idempotently."""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from baton.events.subjects import Subjects

log = logging.getLogger(__name__)

DEDUP_WINDOW_SECONDS = 120.0
DAY = 86_400.0


async def connect(url: str, name: str) -> NATS:
    """Connect with unlimited reconnects, so a NATS restart pauses a service instead of killing it."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        if not (client.is_closed or client.is_draining):  # a deliberate close is not news
            log.warning("nats disconnected; reconnecting")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    client = NATS()
    await client.connect(
        servers=[url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    return client


def stream_configs(subjects: Subjects) -> list[StreamConfig]:
    """The JetStream streams Baton needs, with their retention and dedup settings."""
    return [
        StreamConfig(
            name=subjects.triggers_stream,
            subjects=[subjects.trigger_wildcard],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DEDUP_WINDOW_SECONDS,
            max_age=7 * DAY,
            max_msg_size=8 * 1024 * 1024,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=subjects.events_stream,
            subjects=[subjects.event_wildcard],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DEDUP_WINDOW_SECONDS,
            max_age=7 * DAY,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=subjects.timers_stream,
            subjects=[subjects.timer_wildcard],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DEDUP_WINDOW_SECONDS,
            max_age=7 * DAY,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=subjects.dlq_stream,
            subjects=[subjects.dlq_wildcard],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=30 * DAY,
            discard=DiscardPolicy.OLD,
        ),
    ]


async def ensure_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """Create Baton's streams, or update them to the current config (safe to call from every service)."""
    for config in stream_configs(subjects):
        try:
            await js.stream_info(config.name or "")
            await js.update_stream(config)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # another service created it between the two calls
                log.debug("stream %s: %s", config.name, exc)


async def definitions_bucket(js: JetStreamContext, subjects: Subjects) -> KeyValue:
    """The KV bucket carrying current definitions (pipelines, later monitors) to every service."""
    try:
        return await js.key_value(subjects.defs_bucket)
    except (NotFoundError, BadRequestError):
        try:
            return await js.create_key_value(bucket=subjects.defs_bucket, history=5)
        except BadRequestError:
            return await js.key_value(subjects.defs_bucket)


def header_safe(value: str, limit: int = 1000) -> str:
    """A header value without line breaks (NATS headers are line-based), bounded in length."""
    return " | ".join(line.strip() for line in value.splitlines() if line.strip())[:limit]


def headers_for(msg_id: str, **extra: Any) -> dict[str, str]:
    """Message headers with the JetStream de-duplication id and any extra string fields."""
    return {"Nats-Msg-Id": msg_id, **{k: header_safe(str(v)) for k, v in extra.items() if v is not None}}
