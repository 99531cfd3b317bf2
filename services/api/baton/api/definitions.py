"""Publishing pipeline definitions to the NATS KV bucket the other services read.

The event store is the source of truth; the bucket is a cache of each pipeline's
newest version. Writes are compare-and-set on the entry's revision and never
replace a newer version with an older one, so concurrent writers (two API replicas,
or a start-up heal racing a PUT) converge on the newest definition.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.api.queries import latest_pipeline_events
from baton.events.subjects import Subjects

log = logging.getLogger(__name__)
CAS_ATTEMPTS = 10


class DefinitionPublishConflict(RuntimeError):
    """The bucket entry kept changing under us; the caller may retry or rely on the next heal."""


def stored_number(raw: bytes | None, field: str) -> int:
    try:
        value = json.loads(raw or b"{}")
        return int(value.get(field, 0)) if isinstance(value, dict) else 0
    except (ValueError, TypeError):  # an unreadable entry is replaced by a good one
        return 0


async def put_if_newer(kv: KeyValue, key: str, value: bytes, field: str, number: int) -> bool:
    """Compare-and-set ``value`` under ``key`` unless the stored entry's ``field`` is already >= ``number``.

    Returns True when this call wrote the entry. Concurrent writers converge on the highest number.
    """
    for _ in range(CAS_ATTEMPTS):
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):  # absent, or deleted (KeyDeletedError)
            entry = None
        try:
            if entry is None:
                await kv.create(key, value)
                return True
            if stored_number(entry.value, field) >= number:
                return False
            await kv.update(key, value, last=entry.revision)
            return True
        except KeyWrongLastSequenceError:
            continue  # someone wrote in between: re-read and decide again
    raise DefinitionPublishConflict(f"{key} kept changing; gave up after {CAS_ATTEMPTS} attempts")


async def publish_definition(
    kv: KeyValue,
    subjects: Subjects,
    tenant: str,
    name: str,
    version: int,
    definition: dict[str, Any],
    kind: str = "pipeline",
    extra: dict[str, Any] | None = None,
) -> bool:
    """Put ``{"tenant","name","version","definition", **extra}`` under ``<kind>.<tenant>.<name>`` unless the
    bucket already holds this version or newer. Returns True when this call wrote the entry.
    """
    key = subjects.definition_key(kind, tenant, name)
    value = json.dumps(
        {"tenant": tenant, "name": name, "version": version, "definition": definition, **(extra or {})},
        separators=(",", ":"),
    ).encode()
    return await put_if_newer(kv, key, value, "version", version)


async def republish_all_definitions(engine: AsyncEngine, kv: KeyValue, subjects: Subjects) -> int:
    """Put every pipeline's newest stored version into the bucket; returns how many entries changed.

    Heals a crash between appending a version to the store and putting it in the bucket.
    """
    changed = 0
    for data in await latest_pipeline_events(engine):
        if await publish_definition(kv, subjects, data["tenant"], data["name"], data["version"], data["definition"]):
            changed += 1
    return changed
