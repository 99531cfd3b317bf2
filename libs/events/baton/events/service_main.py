"""The shared entry-point shape of every service: settings, logging, signals, one stop event."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable


def configure_logging(level: str) -> None:
    """One log line per record, with the logger name; the supervisor adds the service prefix."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("nats").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)`` on a fresh event loop; SIGINT/SIGTERM set ``stop`` for a clean shutdown."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())
