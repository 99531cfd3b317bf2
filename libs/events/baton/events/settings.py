"""Settings every service shares: where NATS and PostgreSQL are, and the subject prefix.

Each service subclasses ``ServiceSettings`` with its own fields; settings are loaded
once at start-up and passed down (schemas and domain code never read them).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from baton.events.subjects import Subjects


class ServiceSettings(BaseSettings):
    """Connection settings from the environment (``BATON_*``, or plain ``NATS_URL`` / ``DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore")

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("BATON_NATS_URL", "NATS_URL"),
        description="NATS server URL (JetStream enabled).",
    )
    database_url: str = Field(
        validation_alias=AliasChoices("BATON_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL URL of the event store, e.g. postgresql://user:pass@host/baton.",
    )
    subject_prefix: str = Field(default="baton", pattern=r"^[A-Za-z0-9_-]+$", description="NATS subject prefix.")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @property
    def subjects(self) -> Subjects:
        """The subject map for this installation."""
        return Subjects(self.subject_prefix)
