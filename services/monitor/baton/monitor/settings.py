"""Monitor service settings (environment ``BATON_*``), loaded once at start-up."""

from __future__ import annotations

from pydantic import Field

from baton.events.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    """How the monitor service evaluates monitors, shares them between replicas and reaches databases."""

    replica_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,100}$",
        description="Name of this replica in leases and ticks (default: monitor-<host>-<pid>).",
    )
    lease_ttl_seconds: float = Field(
        default=15.0, ge=1.0, le=600.0,
        description="A replica that stops renewing loses its monitors after this long; another takes them over.",
    )
    lease_slots: int = Field(
        default=64, ge=1, le=4096, description="Monitors hash onto this many slots; a replica leases whole slots."
    )
    max_concurrent_checks: int = Field(default=64, ge=1, le=10_000, description="Checks running at once.")
    backoff_initial_seconds: float = Field(default=1.0, gt=0, description="Wait after the first failed check.")
    backoff_max_seconds: float = Field(default=300.0, gt=0, description="Cap on the wait between failed checks.")
    connections: dict[str, str] = Field(
        default_factory=dict,
        description="Named SQL connections for sql monitors, as JSON: BATON_CONNECTIONS='{\"warehouse\": \"postgresql://...\"}'.",
    )
    upstream_ack_wait_seconds: float = Field(
        default=30.0, ge=1.0, description="Redelivery delay of upstream completions not yet recorded in a tick."
    )
