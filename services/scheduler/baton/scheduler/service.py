"""The scheduler service: owns the connections and runs its components side by side.

A component is anything with a ``name`` and ``async def run(stop)``: durable timers
(``TimerService``) today, cron schedules beside them. Each gets the shared context (engine,
NATS, JetStream, settings); one that fails is logged and restarted with backoff, so a bug
in one never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from baton.events import bus
from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.subjects import Subjects
from baton.events.waiting import wait_any
from baton.scheduler.schedules import ScheduleService
from baton.scheduler.settings import SchedulerSettings
from baton.scheduler.timers import TimerService

log = logging.getLogger(__name__)


class SchedulerComponent(Protocol):
    """One long-running part of the scheduler."""

    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        ...


@dataclass(frozen=True)
class SchedulerContext:
    """What every component shares: settings, subjects and the live connections."""

    settings: SchedulerSettings
    subjects: Subjects
    replica: str
    engine: AsyncEngine
    nc: NATS
    js: JetStreamContext


ComponentFactory = Callable[[SchedulerContext], SchedulerComponent]


def timer_component(context: SchedulerContext) -> SchedulerComponent:
    """Durable timers for the runner (delays, retry backoff, timeouts)."""
    return TimerService(context.engine, context.js, context.subjects, context.settings)


def schedule_component(context: SchedulerContext) -> SchedulerComponent:
    """Cron schedules: each due slot becomes a trigger (missed fires follow the pipeline's policy)."""
    return ScheduleService(context.js, context.engine, context.subjects, name=context.replica)


DEFAULT_COMPONENTS: tuple[ComponentFactory, ...] = (timer_component, schedule_component)


class SchedulerService:
    """One scheduler replica: connect, migrate, then run every component until stopped."""

    def __init__(self, settings: SchedulerSettings, components: Sequence[ComponentFactory] = DEFAULT_COMPONENTS):
        self.settings = settings
        self.subjects = settings.subjects
        self.replica = f"scheduler-{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._factories = tuple(components)
        self.components: list[SchedulerComponent] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then close the connections."""
        engine = make_engine(self.settings.database_url, pool_size=self.settings.timer_fire_concurrency + 4)
        nc: NATS | None = None
        try:
            await migrate(engine)
            nc = await bus.connect(self.settings.nats_url, self.replica)
            pending = self.settings.timer_fire_concurrency * self.settings.timer_fire_batch
            js = nc.jetstream(publish_async_max_pending=max(4_000, pending))
            await bus.ensure_streams(js, self.subjects)
            context = SchedulerContext(self.settings, self.subjects, self.replica, engine, nc, js)
            self.components = [factory(context) for factory in self._factories]
            log.info("scheduler %s ready: %s", self.replica, ", ".join(c.name for c in self.components))
            await asyncio.gather(*(self._supervise(component, stop) for component in self.components))
        finally:
            if nc is not None:
                await nc.flush()
                await nc.close()
            await engine.dispose()
            log.info("scheduler %s stopped", self.replica)

    async def _supervise(self, component: SchedulerComponent, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                await component.run(stop)
                return
            except Exception:
                log.exception("scheduler component %s failed; restarting in %.0fs", component.name, backoff)
                await wait_any(stop, None, backoff)
                backoff = min(backoff * 2, 30.0)
