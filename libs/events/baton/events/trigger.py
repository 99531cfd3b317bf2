"""Trigger messages: the documented JSON schema anyone may publish to NATS, and its validation.

Validation is pure: it takes the subject, headers and raw body and returns either an
``AcceptedTrigger`` or a ``TriggerRejection`` with a reason code. The runner records
both; nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from baton.events.subjects import TRIGGER_TYPE_RE, Subjects

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_TRIGGER_BYTES = 1_048_576
TRIGGER_ID_NAMESPACE = uuid.UUID("6f1c2a4e-8f0b-4c1e-9a57-3b7f0e2d9c11")
TRIGGERED_BY = ("schedule", "monitor", "webhook", "api", "pipeline", "replay", "manual", "nats")


class TriggerMessage(BaseModel):
    """The JSON body of a message on ``baton.trigger.<tenant>.<type>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(min_length=1, max_length=200, description="Who sent it, e.g. 'shop-backend'.")
    type: str | None = Field(default=None, max_length=200, description="Must equal the subject's type.")
    tenant: str | None = Field(default=None, max_length=63, description="Must equal the subject's tenant.")
    resource_type: str | None = Field(default=None, max_length=200)
    resource_id: str | None = Field(default=None, max_length=500)
    environment: str | None = Field(default=None, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    triggered_by: str = Field(default="nats", description=f"One of: {', '.join(TRIGGERED_BY)}.")
    pipeline: str | None = Field(
        default=None, max_length=63,
        description="Start only this pipeline (schedules, monitors, backfills); it must still match the type.",
    )
    slice_key: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="The slice (partition) this trigger is for, e.g. '2026-11-22'. A pipeline makes one run "
        "per slice; handlers see it as partition_key.",
    )
    rerun_slice: bool = Field(default=False, description="Run the slice again even if it already has a run.")
    scheduled_at: datetime | None = Field(default=None, description="Set by schedules: the slot's due time.")


@dataclass(frozen=True)
class AcceptedTrigger:
    """A valid trigger, with its tenant and type taken from the subject."""

    trigger_id: str
    tenant: str
    type: str
    message: TriggerMessage
    idempotency_key: str


@dataclass(frozen=True)
class TriggerRejection:
    """Why a trigger message was refused."""

    trigger_id: str
    tenant: str | None
    reason: str
    detail: str


def trigger_id_for(tenant: str, idempotency_key: str) -> str:
    """Deterministic trigger id: the same (tenant, key) always names the same trigger."""
    return str(uuid.uuid5(TRIGGER_ID_NAMESPACE, f"{tenant}\x00{idempotency_key}"))


def run_id_for(trigger_id: str, pipeline: str) -> str:
    """Deterministic run id: one trigger starts at most one run per pipeline."""
    return str(uuid.uuid5(uuid.UUID(trigger_id), pipeline))


def slice_run_id(tenant: str, pipeline: str, slice_key: str) -> str:
    """Deterministic run id of a slice's first run: one run per (pipeline, slice) unless re-run."""
    return str(uuid.uuid5(TRIGGER_ID_NAMESPACE, f"slice\x00{tenant}\x00{pipeline}\x00{slice_key}"))


def validate_trigger(
    subjects: Subjects,
    subject: str,
    body: bytes,
    dedup_key: str,
    max_bytes: int = MAX_TRIGGER_BYTES,
) -> AcceptedTrigger | TriggerRejection:
    """Validate one trigger message.

    ``dedup_key`` is the Nats-Msg-Id header or, failing that, a key stable across
    redeliveries (the JetStream sequence); a body ``idempotency_key`` wins over both.
    """
    tenant: str | None = None
    try:
        tenant, trigger_type = subjects.parse_trigger_subject(subject)
    except ValueError as exc:
        return _reject(None, dedup_key, "invalid_subject", str(exc))
    if not TENANT_RE.match(tenant):
        return _reject(None, dedup_key, "invalid_tenant", f"tenant {tenant!r} must match {TENANT_RE.pattern}")
    if not TRIGGER_TYPE_RE.match(trigger_type):
        return _reject(tenant, dedup_key, "invalid_type", f"trigger type {trigger_type!r} is malformed")
    if len(body) > max_bytes:
        return _reject(tenant, dedup_key, "oversized", f"body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _reject(tenant, dedup_key, "invalid_json", f"body is not JSON: {exc}")
    if not isinstance(raw, dict):
        return _reject(tenant, dedup_key, "invalid_schema", "body must be a JSON object")
    try:
        message = TriggerMessage.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        return _reject(tenant, dedup_key, "invalid_schema", problems)
    if message.tenant is not None and message.tenant != tenant:
        return _reject(
            tenant, dedup_key, "tenant_mismatch", f"body tenant {message.tenant!r} != subject tenant {tenant!r}"
        )
    if message.type is not None and message.type != trigger_type:
        return _reject(
            tenant, dedup_key, "type_mismatch", f"body type {message.type!r} != subject type {trigger_type!r}"
        )
    if message.triggered_by not in TRIGGERED_BY:
        return _reject(
            tenant, dedup_key, "invalid_schema", f"triggered_by must be one of {', '.join(TRIGGERED_BY)}"
        )
    key = message.idempotency_key or dedup_key
    return AcceptedTrigger(
        trigger_id=trigger_id_for(tenant, key),
        tenant=tenant,
        type=trigger_type,
        message=message,
        idempotency_key=key,
    )


def _reject(tenant: str | None, dedup_key: str, reason: str, detail: str) -> TriggerRejection:
    return TriggerRejection(
        trigger_id=trigger_id_for(tenant or "_", f"rejected\x00{dedup_key}"),
        tenant=tenant,
        reason=reason,
        detail=detail,
    )
