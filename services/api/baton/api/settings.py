"""Settings of the HTTP API process, loaded once from the environment at start-up."""

from __future__ import annotations

from pydantic import Field

from baton.events.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    """Where the API listens, and whether this process also hosts the read-model projector."""

    host: str = Field(default="127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port uvicorn listens on.")
    projector: bool = Field(
        default=True,
        description="Run the projector and the commit listener in this process (one API replica should).",
    )
    read_your_writes_seconds: float = Field(
        default=3.0,
        ge=0.0,
        le=60.0,
        description="How long a write waits for the read models to include it before answering anyway.",
    )
    command_timeout_seconds: float = Field(
        default=5.0,
        gt=0.0,
        le=60.0,
        description="How long cancel/retry/replay wait for the runner's answer before a 503.",
    )
