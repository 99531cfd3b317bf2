"""Handlers the end-to-end tests reference as ``tests.e2e.handlers:<name>`` (run in worker processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from baton.runner.actions.context import StepContext


def flaky(ctx: StepContext) -> dict[str, Any]:
    """Fails until attempt ``succeed_on``."""
    if ctx.attempt < int(ctx.settings["succeed_on"]):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt, "key": ctx.idempotency_key}


def needs_file(ctx: StepContext) -> dict[str, Any]:
    """Fails until the file named by ``path`` exists (an operator 'fixes' it, then retries the run)."""
    path = Path(ctx.settings["path"])
    if not path.exists():
        raise RuntimeError(f"{path} is missing")
    return {"found": str(path), "attempt": ctx.attempt}


async def hang_on_first_attempt(ctx: StepContext) -> dict[str, Any]:
    """Attempt 1 never returns (its worker is killed); later attempts succeed."""
    if ctx.attempt == 1:
        await asyncio.Event().wait()
    return {"attempt": ctx.attempt}


async def brief(ctx: StepContext) -> dict[str, Any]:
    """Takes a little while, like real work, so concurrent runs overlap."""
    await asyncio.sleep(float(ctx.settings.get("seconds", 0.05)))
    return {"n": ctx.trigger["payload"].get("n")}


def fail(ctx: StepContext) -> None:
    """Always fails."""
    raise RuntimeError(f"{ctx.step} failed on purpose")
