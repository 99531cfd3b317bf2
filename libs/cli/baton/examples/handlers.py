"""Example python action handlers: what a user's ``module:function`` looks like."""

from __future__ import annotations

from typing import Any


def record(ctx: Any) -> dict[str, Any]:
    """Combine the trigger payload with the earlier step's output, and log what it did."""
    greeting = (ctx.results.get("greet") or {}).get("json", {}).get("greeting")
    amount = ctx.trigger.get("payload", {}).get("amount")
    ctx.log(f"recording amount {amount} with greeting {greeting!r}")
    return {"amount": amount, "greeting": greeting, "attempt": ctx.attempt}
