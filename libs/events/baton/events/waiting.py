"""Interruptible waits for long-running loops: every pause ends early on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def wait_any(stop: asyncio.Event, wakeup: asyncio.Event | None, seconds: float) -> None:
    """Wait until ``stop`` or ``wakeup`` is set, or ``seconds`` pass."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wakeup is not None:
        waiters.append(asyncio.ensure_future(wakeup.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_when_woken(
    name: str,
    catch_up: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    wakeup: asyncio.Event,
    idle_seconds: float = 1.0,
) -> None:
    """Call ``catch_up`` whenever woken (or every ``idle_seconds``) until ``stop``.

    A failure is logged and retried with capped exponential backoff; it never ends the loop.
    """
    backoff = 0.1
    while not stop.is_set():
        wakeup.clear()
        try:
            await catch_up()
            backoff = 0.1
        except Exception:
            log.exception("%s failed; retrying in %.1fs", name, backoff)
            await wait_any(stop, None, backoff)
            backoff = min(backoff * 2, 10.0)
            continue
        await wait_any(stop, wakeup, idle_seconds)
