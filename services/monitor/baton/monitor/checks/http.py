"""The ``http`` check: GET one URL; the observation has the status, the JSON body (if any) and headers."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from baton.events.monitor import HttpCheckSettings
from baton.monitor.checks import CheckFailed

MAX_BODY_CHARS = 4096
KEPT_HEADERS = ("content-type", "etag", "last-modified", "content-length")


async def observe_http(client: httpx.AsyncClient, settings: HttpCheckSettings) -> dict[str, Any]:
    """One GET; a transport error (refused, timeout, DNS) is a failed check, any status is an observation."""
    started = time.perf_counter()
    try:
        response = await client.get(settings.url, headers=settings.headers, timeout=settings.timeout_ms / 1000)
    except httpx.HTTPError as exc:
        raise CheckFailed(f"GET {settings.url} failed: {type(exc).__name__}: {exc}") from exc
    body = response.text
    parsed: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    return {
        "url": settings.url,
        "status": response.status_code,
        "json": parsed,
        "body": body[:MAX_BODY_CHARS],
        "headers": {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS},
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
    }
