"""The API application: assembles connections once (lifespan), mounts the routers, maps errors to JSON.

When ``settings.projector`` is on, this process also hosts the read-model projector
and the commit listener that wakes it, so read-your-writes needs no extra service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from baton.api import (
    routes_dead_letters,
    routes_health,
    routes_monitors,
    routes_pipelines,
    routes_replays,
    routes_runs,
    routes_triggers,
)
from baton.api.definitions import republish_all_definitions
from baton.api.dependencies import ApiResources
from baton.api.monitor_store import republish_all_monitors
from baton.api.pipeline_control import republish_all_controls
from baton.api.routes_schedules import router as schedules_router
from baton.api.settings import ApiSettings
from baton.events.bus import connect, definitions_bucket, ensure_streams
from baton.events.db import make_engine
from baton.events.listener import listen_for_commits
from baton.events.postgres_store import PostgresEventStore
from baton.events.projector import Projector
from baton.events.store import StoreUnavailable

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


def create_app(settings: ApiSettings) -> FastAPI:
    """Build the FastAPI app for ``settings`` (nothing connects until the lifespan starts)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running_resources(settings) as resources:
            app.state.resources = resources
            yield

    app = FastAPI(
        title="Baton API",
        version="1",
        description="Pipeline definitions, triggers, runs and their timelines.",
        lifespan=lifespan,
    )
    app.include_router(routes_health.router)
    app.include_router(routes_pipelines.router)
    app.include_router(routes_triggers.router)
    app.include_router(routes_runs.router)
    app.include_router(routes_dead_letters.router)
    app.include_router(routes_replays.router)
    app.include_router(routes_monitors.router)
    app.include_router(schedules_router)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StoreUnavailable, _store_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    return app


@contextlib.asynccontextmanager
async def _running_resources(settings: ApiSettings) -> AsyncIterator[ApiResources]:
    """Connect to PostgreSQL and NATS, start the projector tasks, and undo it all on exit."""
    subjects = settings.subjects
    engine = make_engine(settings.database_url)
    stop = asyncio.Event()
    wakeup = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    nc = None
    try:
        nc = await connect(settings.nats_url, name="baton-api")
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        kv = await definitions_bucket(js, subjects)
        if settings.projector:
            tasks.append(asyncio.create_task(Projector(engine).run(stop, wakeup), name="projector"))
            tasks.append(
                asyncio.create_task(
                    listen_for_commits(settings.database_url, subjects.notify_channel, wakeup, stop),
                    name="commit-listener",
                )
            )
        for task in tasks:
            task.add_done_callback(_report_crash)
        healed = await republish_all_definitions(engine, kv, subjects)
        if healed:
            log.info("republished %d pipeline definition(s) missing from the bucket", healed)
        healed = await republish_all_controls(engine, kv, subjects)
        if healed:
            log.info("republished %d pipeline operator state(s) missing from the bucket", healed)
        if healed_monitors := await republish_all_monitors(engine, kv, subjects):
            log.info("healed %d monitor definition(s) in the bucket", healed_monitors)
        yield ApiResources(
            settings=settings,
            subjects=subjects,
            engine=engine,
            store=PostgresEventStore(engine, notify_channel=subjects.notify_channel),
            nc=nc,
            js=js,
            definitions=kv,
            projector_wakeup=wakeup,
        )
    finally:
        stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                log.warning("%s did not stop in %.0fs; cancelling", task.get_name(), SHUTDOWN_GRACE_SECONDS)
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if nc is not None:
            with contextlib.suppress(Exception):  # already closed or disconnected: nothing left to flush
                await nc.drain()
        await engine.dispose()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A background loop must only end on shutdown; say so loudly if it died of an error."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped unexpectedly", task.get_name(), exc_info=task.exception())


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one ``{loc, msg, type}`` per problem; inputs are not echoed back."""
    problems = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()]
    return JSONResponse({"detail": problems}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "event store unavailable; retry"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)
