"""The `http` action: one request through the worker's shared httpx client, body read with a bound."""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import ValidationError

from baton.events.messages import MAX_RESULT_BYTES, WorkItem
from baton.events.pipeline import HttpSettings

from .context import ActionFailed, StepContext

MAX_BODY_BYTES = MAX_RESULT_BYTES
"""Bytes of response body read at most; a larger body is cut and returned as text."""
ERROR_BODY_CHARS = 500
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _status_expected(status: int, expected: list[int] | int | None) -> bool:
    if expected is None:
        return 200 <= status < 300
    if isinstance(expected, int):
        return status == expected
    return status in expected


def _describe_expected(expected: list[int] | int | None) -> str:
    if expected is None:
        return "any 2xx"
    if isinstance(expected, int):
        return str(expected)
    return " or ".join(str(code) for code in expected)


async def _read_bounded(response: httpx.Response) -> tuple[bytes, bool]:
    """Read at most MAX_BODY_BYTES of the body; True in the second slot when more was left unread."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            return bytes(body[:MAX_BODY_BYTES]), True
    return bytes(body), False


def _decode_body(raw: bytes, cut: bool, content_type: str, encoding: str) -> Any:
    try:
        text = raw.decode(encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know: UTF-8 is the best guess
        text = raw.decode("utf-8", errors="replace")
    if cut:
        return f"{text}…[truncated: body exceeds {MAX_BODY_BYTES} bytes]"
    if "json" in content_type.lower() and text.strip():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


async def send_request(settings: HttpSettings, ctx: StepContext, client: httpx.AsyncClient) -> dict[str, Any]:
    """Send the request of `settings`; return status, body and content type, or raise ActionFailed."""
    target = f"{settings.method} {settings.url}"
    headers = dict(settings.headers)
    # A receiving service can deduplicate retried or re-dispatched attempts by this key;
    # a header the user set (in any case) wins.
    if not any(name.lower() == IDEMPOTENCY_HEADER.lower() for name in headers):
        headers[IDEMPOTENCY_HEADER] = ctx.idempotency_key
    request_kwargs: dict[str, Any] = {"headers": headers, "timeout": settings.timeout_ms / 1000}
    if settings.json_body is not None:
        request_kwargs["json"] = settings.json_body
    try:
        async with client.stream(settings.method, settings.url, **request_kwargs) as response:
            raw, cut = await _read_bounded(response)
    except httpx.TimeoutException as exc:
        raise ActionFailed(f"http: {target} timed out after {settings.timeout_ms} ms ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise ActionFailed(f"http: {target} failed: {type(exc).__name__}: {exc}") from exc
    content_type = response.headers.get("content-type", "")
    body = _decode_body(raw, cut, content_type, response.encoding or "utf-8")
    ctx.log(f"{target} -> {response.status_code}", status=response.status_code, bytes=len(raw))
    if not _status_expected(response.status_code, settings.expected_status):
        preview = body if isinstance(body, str) else json.dumps(body)
        raise ActionFailed(
            f"http: {target} returned HTTP {response.status_code}, expected "
            f"{_describe_expected(settings.expected_status)}: {preview[:ERROR_BODY_CHARS]}"
        )
    return {"status": response.status_code, "body": body, "headers": {"content-type": content_type}}


async def execute(item: WorkItem, ctx: StepContext, http_client: httpx.AsyncClient) -> Any:
    """Action handler for `uses: http`."""
    try:
        settings = HttpSettings.model_validate(ctx.settings)
    except ValidationError as exc:
        raise ActionFailed(f"http: invalid settings: {exc}") from exc
    return await send_request(settings, ctx, http_client)
