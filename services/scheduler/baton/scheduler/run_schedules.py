"""``python -m baton.scheduler.run_schedules``: the cron-schedule component alone, settings from the environment.

The scheduler service's own entry point runs this component beside the durable
timers; this one exists for the benchmark and for running schedules on their own.
"""

from __future__ import annotations

import asyncio
import os
import socket

from baton.events import bus
from baton.events.db import make_engine
from baton.events.migrations import migrate
from baton.events.service_main import configure_logging, run_until_signalled
from baton.events.settings import ServiceSettings
from baton.scheduler.schedules import ScheduleService


async def serve(settings: ServiceSettings, stop: asyncio.Event) -> None:
    """Connect, migrate, and fire schedules until ``stop``."""
    name = f"schedules-{socket.gethostname()}-{os.getpid()}"
    engine = make_engine(settings.database_url)
    nc = await bus.connect(settings.nats_url, name)
    try:
        await migrate(engine)
        js = nc.jetstream()
        await bus.ensure_streams(js, settings.subjects)
        await ScheduleService(js, engine, settings.subjects, name=name).run(stop)
    finally:
        await nc.drain()
        await engine.dispose()


def main() -> None:
    """Load settings once, then serve until SIGINT/SIGTERM."""
    settings = ServiceSettings()  # database_url comes from the environment
    configure_logging(settings.log_level)
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
