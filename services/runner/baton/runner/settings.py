"""Runner service settings (environment ``BATON_*``), loaded once at start-up."""

from __future__ import annotations

from pydantic import Field

from baton.events.settings import ServiceSettings


class RunnerSettings(ServiceSettings):
    """How the run router consumes triggers, dispatches work and relays events."""

    relay: bool = Field(default=True, description="Run the event relay (store -> NATS EVENTS) in this process.")
    intake_batch: int = Field(default=256, ge=1, le=5000, description="Triggers fetched per pull.")
    trigger_ack_wait_seconds: float = Field(default=15.0, ge=1.0, description="Redelivery delay of unacked triggers.")
    max_trigger_deliveries: int = Field(default=10, ge=2, description="Attempts before a trigger is dead-lettered.")
    redispatch_after_seconds: float = Field(
        default=10.0, gt=0, description="Re-dispatch a step no worker picked up after this long."
    )
    max_trigger_bytes: int = Field(default=1_048_576, ge=1024)
    tenant_max_concurrent_runs: int | None = Field(
        default=None, ge=1, description="Default limit of running runs per tenant (queued beyond it)."
    )
    tenant_limits: dict[str, int] = Field(
        default_factory=dict, description='Per-tenant overrides, JSON: {"acme": 20}.'
    )
    timer_resend_after_seconds: float = Field(
        default=30.0, gt=0, description="Re-send a timer request the scheduler has not fired this long after due."
    )
    command_timeout_seconds: float = Field(default=10.0, gt=0, description="Longest a command may take.")

    def tenant_limit(self, tenant: str) -> int | None:
        """The running-run limit of ``tenant`` (None: unlimited)."""
        return self.tenant_limits.get(tenant, self.tenant_max_concurrent_runs)
