"""Small python-step handlers that the worker integration tests reference as `tests.integration.handlers:<name>`."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from baton.runner.actions.context import StepContext

EXECUTIONS: Counter[str] = Counter()
"""How many times each idempotency key was executed by `record`, across every worker in the process."""

GATES: dict[str, asyncio.Event] = {}
"""Events that `gated` waits on, by the trigger's `gate` field; tests create and set them."""


def add(ctx: StepContext) -> dict[str, Any]:
    """Sync: the sum of the `a` and `b` settings."""
    return {"sum": ctx.settings["a"] + ctx.settings["b"]}


async def echo(ctx: StepContext) -> dict[str, Any]:
    """Async: hand back the inputs the worker gave the step."""
    return {
        "trigger": ctx.trigger,
        "run": ctx.run,
        "step": ctx.step,
        "results": ctx.results,
        "config": ctx.config,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
    }


def explode(ctx: StepContext) -> None:
    """Always raises, to exercise failure reporting."""
    raise ValueError(f"boom in {ctx.step}")


def chatty(ctx: StepContext) -> str:
    """Writes a few log lines with data."""
    for index in range(3):
        ctx.log(f"line {index}", level="info", index=index)
    ctx.log("careful", level="warning")
    return "done"


def structured(ctx: StepContext) -> dict[str, Any]:
    """Writes structured log lines and telemetry, and hands back what it knows about the attempt."""
    ctx.log("info", "loading", {"table": "orders"})
    ctx.telemetry(rows=500, bytes=64_000, progress=0.5)
    ctx.log("warning", "slow partition", data={"partition": ctx.partition_key})
    ctx.telemetry(rows=1_000, progress=1.0, data={"table": "orders"})
    return {"partition_key": ctx.partition_key, "is_replay": ctx.is_replay, "key": ctx.idempotency_key}


async def log_then_wait(ctx: StepContext) -> str:
    """Logs and reports progress, waits for the test's gate, then logs once more: a long-running step."""
    ctx.log("info", "started", {"gate": ctx.trigger["gate"]})
    ctx.telemetry(progress=0.1)
    await GATES[ctx.trigger["gate"]].wait()
    ctx.log("info", "finished")
    ctx.telemetry(progress=1.0)
    return "released"


async def record(ctx: StepContext) -> str:
    """Counts its executions per idempotency key (to prove no item runs twice)."""
    EXECUTIONS[ctx.idempotency_key] += 1
    return ctx.idempotency_key


async def gated(ctx: StepContext) -> str:
    """Waits until the test sets the gate named in the trigger, to hold a step in flight."""
    await GATES[ctx.trigger["gate"]].wait()
    return "released"


def is_even(ctx: StepContext) -> bool:
    """Condition: whether the trigger's `n` is even."""
    return int(ctx.trigger["n"]) % 2 == 0
