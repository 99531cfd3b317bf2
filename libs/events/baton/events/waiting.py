"""Interruptible waits for long-running loops: every pause ends early on shutdown."""

from __future__ import annotations

import asyncio


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
