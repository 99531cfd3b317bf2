"""Example python action handlers: what a user's ``module:function`` looks like."""

from __future__ import annotations

from typing import Any


def record(ctx: Any) -> dict[str, Any]:
    """Combine the trigger payload with the earlier step's output, and log what it did."""
    greeting = (ctx.results.get("greet") or {}).get("json", {}).get("greeting")
    amount = ctx.trigger.get("payload", {}).get("amount")
    ctx.log("info", f"recording amount {amount}", {"greeting": greeting, "idempotency_key": ctx.idempotency_key})
    ctx.telemetry(rows=1, progress=1.0)
    return {"amount": amount, "greeting": greeting, "attempt": ctx.attempt}
