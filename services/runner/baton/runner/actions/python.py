"""The `python` action and condition: call a `module:function` reference with the StepContext.

Async functions run on the worker's event loop; sync functions run in a thread
(`asyncio.to_thread`) so a slow one cannot stall other steps. `timeout_ms` is enforced with
`asyncio.wait_for`: an async function is cancelled, but a thread cannot be killed in Python,
so a timed-out sync function keeps running in the background (its result is discarded) and
holds one thread of the default executor until it returns. Long or untrusted work belongs in
a `shell` step, whose process group is killed on timeout.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import traceback
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import ValidationError

from baton.events.messages import WorkItem
from baton.events.pipeline import PythonSettings

from .context import ActionFailed, StepContext

TRACEBACK_CHARS = 3_000

_resolved: dict[str, Callable[..., Any]] = {}


def _import_ref(ref: str) -> Callable[..., Any]:
    module_name, _, attribute_path = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a module can raise anything while it executes at import time
        raise ActionFailed(
            f"python: cannot import module {module_name!r} for {ref!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for attribute in attribute_path.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError:
            raise ActionFailed(f"python: {ref!r}: {module_name!r} has no attribute {attribute_path!r}") from None
    if not callable(target):
        raise ActionFailed(f"python: {ref!r} is not callable (it is a {type(target).__name__})")
    return target  # type: ignore[no-any-return]


async def resolve_ref(ref: str) -> Callable[..., Any]:
    """Import and cache the callable named by `ref` ('package.module:function'); ActionFailed if absent."""
    function = _resolved.get(ref)
    if function is None:
        # Imports run module code that may do I/O: keep it off the loop. Failures are not
        # cached, so a fixed deployment is picked up on the next attempt.
        function = await asyncio.to_thread(_import_ref, ref)
        _resolved[ref] = function
    return function


def _is_async(function: Callable[..., Any]) -> bool:
    # Covers `async def` functions and instances of classes with an `async def __call__`.
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__)


async def _invoke(function: Callable[..., Any], ctx: StepContext) -> Any:
    value = function(ctx) if _is_async(function) else await asyncio.to_thread(function, ctx)
    # A sync function may still hand back an awaitable (e.g. it returns a coroutine).
    if inspect.isawaitable(value):
        value = await value
    return value


async def call_ref(settings: PythonSettings, ctx: StepContext) -> Any:
    """Call the referenced function within its timeout; return its JSON-serialisable value."""
    function = await resolve_ref(settings.ref)
    try:
        value = await asyncio.wait_for(_invoke(function, ctx), settings.timeout_ms / 1000)
    except TimeoutError:
        note = "" if _is_async(function) else " (a sync function's thread cannot be stopped and may still be running)"
        raise ActionFailed(f"python: {settings.ref} timed out after {settings.timeout_ms} ms{note}") from None
    except ActionFailed:
        raise
    except Exception as exc:
        ctx.log(traceback.format_exc()[-TRACEBACK_CHARS:], level="error")
        raise ActionFailed(f"python: {settings.ref} raised {type(exc).__name__}: {exc}") from exc
    try:
        # allow_nan=False: NaN/Infinity are not JSON and PostgreSQL's JSONB rejects them.
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ActionFailed(f"python: {settings.ref} returned a value that is not JSON-serialisable: {exc}") from exc
    return value


async def execute(item: WorkItem, ctx: StepContext, http_client: httpx.AsyncClient) -> Any:
    """Handler for `uses: python`: an action's result, or a condition's `{"value": bool}`."""
    try:
        settings = PythonSettings.model_validate(ctx.settings)
    except ValidationError as exc:
        raise ActionFailed(f"python: invalid settings: {exc}") from exc
    value = await call_ref(settings, ctx)
    if item.step_type == "condition":
        if not isinstance(value, bool):
            raise ActionFailed(f"python: condition {settings.ref} must return a bool, got {type(value).__name__}")
        return {"value": value}
    return value
