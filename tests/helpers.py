"""Waiting helpers for tests: poll a condition with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


# The explicit timeout (rather than asyncio.timeout around the call) is deliberate: it names the
# deadline in the failure message and keeps the sync and async twins identical to call.
async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.02,
    message: str = "",
) -> T:
    """Poll `predicate` (sync or async) until it returns something truthy, and return that value.

    Raises AssertionError with `message` if it is still falsy after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition not met within {timeout}s: {message or getattr(predicate, '__name__', predicate)}"
                f" (last value: {result!r})"
            )
        await asyncio.sleep(interval)


def wait_for_sync(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """Blocking twin of `wait_for` for synchronous tests and fixtures."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition not met within {timeout}s: {message or getattr(predicate, '__name__', predicate)}"
                f" (last value: {result!r})"
            )
        time.sleep(interval)
