"""Settings of a worker process, read once from `BATON_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Worker configuration: where NATS is, which subject prefix to serve, how much to run at once."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore")

    nats_url: str = Field(
        default="nats://127.0.0.1:4222", min_length=1, description="NATS server URL(s), comma-separated."
    )
    subject_prefix: str = Field(default="baton", pattern=r"^[A-Za-z0-9_-]+$", description="Subject prefix to serve.")
    worker_concurrency: int = Field(default=64, ge=1, le=10_000, description="Steps executed at once.")
    worker_name: str | None = Field(default=None, description="Name reported in replies; default host-pid.")
    worker_drain_seconds: float = Field(
        default=30.0, ge=0, le=3_600, description="On stop, how long in-flight steps may take to finish."
    )
    worker_flush_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often a running step's new log lines and telemetry are sent."
    )
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
