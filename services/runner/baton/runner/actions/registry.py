"""Maps a step's `uses` to its handler and turns whatever the handler does into an `ActionOutcome`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from baton.events.messages import MAX_RESULT_BYTES, WorkItem

from . import http, python, shell
from .context import ActionFailed, StepContext

__all__ = ["HANDLERS", "ActionFailed", "ActionHandler", "ActionOutcome", "bound_result", "execute_action"]

log = logging.getLogger(__name__)

ActionHandler = Callable[[WorkItem, StepContext, httpx.AsyncClient], Awaitable[Any]]
"""`async def execute(item, ctx, http_client) -> result`, raising ActionFailed on failure."""

HANDLERS: dict[str, ActionHandler] = {
    "shell": shell.execute,
    "http": http.execute,
    "python": python.execute,
}

RESULT_PREVIEW_BYTES = 4_096


@dataclass(frozen=True)
class ActionOutcome:
    """How a step attempt ended: `ok` with a JSON-ready `result`, or not ok with an `error` message."""

    ok: bool
    result: Any = None
    error: str | None = None


def bound_result(result: Any, max_bytes: int = MAX_RESULT_BYTES) -> Any:
    """Return `result`, or a small stand-in with a preview when its JSON exceeds `max_bytes`."""
    encoded = json.dumps(result, default=repr).encode()
    if len(encoded) <= max_bytes:
        return result
    # Cutting bytes may split a UTF-8 character: "ignore" drops the partial one.
    preview = encoded[:RESULT_PREVIEW_BYTES].decode("utf-8", errors="ignore")
    return {"truncated": True, "bytes": len(encoded), "preview": preview}


async def execute_action(item: WorkItem, ctx: StepContext, http_client: httpx.AsyncClient) -> ActionOutcome:
    """Run the handler for `item.uses`; every failure, expected or not, becomes a failed outcome."""
    if item.step_type == "condition" and item.uses != "python":
        return ActionOutcome(ok=False, error=f"conditions run on workers only with uses: python, not {item.uses!r}")
    handler = HANDLERS.get(item.uses)
    if handler is None:
        known = ", ".join(sorted(HANDLERS))
        return ActionOutcome(ok=False, error=f"unknown action kind {item.uses!r}; this worker knows {known}")
    try:
        result = await handler(item, ctx, http_client)
        return ActionOutcome(ok=True, result=bound_result(result))
    except ActionFailed as exc:
        return ActionOutcome(ok=False, error=exc.message)
    except Exception as exc:
        # A bug in a handler fails this step only; the worker keeps serving others.
        log.exception("handler %r crashed on %s", item.uses, item.idempotency_key)
        return ActionOutcome(ok=False, error=f"{item.uses}: unexpected {type(exc).__name__}: {exc}")
