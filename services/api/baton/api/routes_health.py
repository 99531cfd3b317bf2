"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from baton.api import queries
from baton.api.dependencies import ApiResources, get_resources

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
READINESS_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "NATS or PostgreSQL is unreachable."}})
async def readyz(resources: ApiResources = Depends(get_resources)) -> JSONResponse:
    """Ready when NATS is connected and PostgreSQL answers ``SELECT 1``; 503 names what failed."""
    checks = {"nats": "ok" if resources.nc.is_connected else "disconnected", "postgres": "ok"}
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            await queries.ping(resources.engine)
    except Exception as exc:  # any failure to answer means "not ready"; the reason is reported
        log.warning("readiness: postgres check failed: %s", exc)
        checks["postgres"] = f"failed: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        failed = ", ".join(name for name, value in checks.items() if value != "ok")
        body["detail"] = f"unavailable: {failed}"
    return JSONResponse(body, status_code=200 if ready else 503)
