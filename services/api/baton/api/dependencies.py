"""What request handlers share: the process's connections and the validated path parameters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Path, Request
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.api.queries import projected_checkpoint
from baton.api.settings import ApiSettings
from baton.events.postgres_store import PostgresEventStore
from baton.events.subjects import Subjects
from baton.events.trigger import TENANT_RE


@dataclass
class ApiResources:
    """Connections assembled once by the app's lifespan and handed to every request."""

    settings: ApiSettings
    subjects: Subjects
    engine: AsyncEngine
    store: PostgresEventStore
    nc: NATS
    js: JetStreamContext
    definitions: KeyValue
    projector_wakeup: asyncio.Event


async def get_resources(request: Request) -> ApiResources:
    """The resources of the running app (set by the lifespan before any request is served)."""
    resources: ApiResources = request.app.state.resources
    return resources


Tenant = Annotated[
    str,
    Path(pattern=TENANT_RE.pattern, description="Tenant (workspace) that owns the data.", examples=["default"]),
]


async def wait_for_read_models(resources: ApiResources, position: int) -> bool:
    """Wait (bounded) until the read models include ``position``, so a following GET sees the write.

    Nudges the in-process projector, then polls its checkpoint row (a primary-key read).
    Returns False when the deadline passed first; the write itself is durable either way.
    """
    resources.projector_wakeup.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + resources.settings.read_your_writes_seconds
    interval = 0.005
    while await projected_checkpoint(resources.engine) < position:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)  # a poll interval, not a synchronisation guess
        interval = min(interval * 2, 0.1)
    return True
