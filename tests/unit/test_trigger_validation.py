"""Trigger message validation: subject parsing, body schema, rejection codes and deterministic ids."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from baton.events.subjects import Subjects
from baton.events.trigger import (
    AcceptedTrigger,
    TriggerRejection,
    run_id_for,
    trigger_id_for,
    validate_trigger,
)

pytestmark = pytest.mark.unit

SUBJECTS = Subjects()
# Every reason code a rejection may carry (the trigger_rejected event's documented vocabulary).
REASON_CODES = frozenset(
    {
        "invalid_subject",
        "invalid_tenant",
        "invalid_type",
        "oversized",
        "invalid_json",
        "invalid_schema",
        "tenant_mismatch",
        "type_mismatch",
    }
)


def body(**fields: Any) -> bytes:
    """A JSON trigger body; ``source`` defaults to a valid value unless given (or set to None)."""
    fields.setdefault("source", "shop-backend")
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


def accept(subject: str, raw: bytes, dedup_key: str = "seq-1", **kwargs: Any) -> AcceptedTrigger:
    result = validate_trigger(SUBJECTS, subject, raw, dedup_key, **kwargs)
    assert isinstance(result, AcceptedTrigger), result
    return result


def reject(subject: str, raw: bytes, dedup_key: str = "seq-1", **kwargs: Any) -> TriggerRejection:
    result = validate_trigger(SUBJECTS, subject, raw, dedup_key, **kwargs)
    assert isinstance(result, TriggerRejection), result
    assert result.reason in REASON_CODES
    assert result.detail
    return result


# --- subjects --------------------------------------------------------------------------


def test_type_may_contain_dots() -> None:
    accepted = accept("baton.trigger.acme.orders.ready", body(payload={"amount": 5}))
    assert (accepted.tenant, accepted.type) == ("acme", "orders.ready")
    assert accepted.message.payload == {"amount": 5}
    assert accepted.message.triggered_by == "nats"


def test_subject_prefix_is_respected() -> None:
    subjects = Subjects(prefix="bt1234")
    result = validate_trigger(subjects, "bt1234.trigger.acme.deploy", body(), "k")
    assert isinstance(result, AcceptedTrigger)
    assert result.type == "deploy"
    assert subjects.parse_trigger_subject(subjects.trigger("acme", "a.b.c")) == ("acme", "a.b.c")
    wrong_prefix = validate_trigger(subjects, "baton.trigger.acme.deploy", body(), "k")
    assert isinstance(wrong_prefix, TriggerRejection)
    assert wrong_prefix.reason == "invalid_subject"


@pytest.mark.parametrize(
    "subject",
    ["baton.events.acme.deploy", "baton.trigger.acme", "baton.trigger.acme.", "baton.trigger..deploy", "other"],
)
def test_malformed_subject_is_rejected(subject: str) -> None:
    rejection = reject(subject, body())
    assert rejection.reason == "invalid_subject"
    assert rejection.tenant is None


@pytest.mark.parametrize("tenant", ["Acme", "-acme", "_acme", "ac me", "a" * 64, "acme*"])
def test_tenant_format_is_enforced(tenant: str) -> None:
    rejection = reject(f"baton.trigger.{tenant}.deploy", body())
    assert rejection.reason == "invalid_tenant"
    assert rejection.tenant is None


@pytest.mark.parametrize("tenant", ["acme", "a", "acme-eu_1", "0acme", "a" * 63])
def test_valid_tenants_are_accepted(tenant: str) -> None:
    assert accept(f"baton.trigger.{tenant}.deploy", body()).tenant == tenant


@pytest.mark.parametrize("trigger_type", ["orders..ready", "orders.", "orders.*", "orders.>", "or ders"])
def test_malformed_type_is_rejected(trigger_type: str) -> None:
    rejection = reject(f"baton.trigger.acme.{trigger_type}", body())
    assert rejection.reason == "invalid_type"
    assert rejection.tenant == "acme"


# --- body ------------------------------------------------------------------------------


def test_body_tenant_and_type_may_repeat_the_subject() -> None:
    accepted = accept("baton.trigger.acme.orders.ready", body(tenant="acme", type="orders.ready"))
    assert (accepted.tenant, accepted.type) == ("acme", "orders.ready")


def test_body_tenant_mismatch() -> None:
    rejection = reject("baton.trigger.acme.deploy", body(tenant="globex"))
    assert rejection.reason == "tenant_mismatch"
    assert "globex" in rejection.detail and "acme" in rejection.detail


def test_body_type_mismatch() -> None:
    rejection = reject("baton.trigger.acme.orders.ready", body(type="orders"))
    assert rejection.reason == "type_mismatch"
    assert rejection.tenant == "acme"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00", b'{"source": "x"'])
def test_bad_json(raw: bytes) -> None:
    assert reject("baton.trigger.acme.deploy", raw).reason == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b'[{"source": "x"}]'])
def test_non_object_body(raw: bytes) -> None:
    rejection = reject("baton.trigger.acme.deploy", raw)
    assert rejection.reason == "invalid_schema"
    assert "object" in rejection.detail


def test_unknown_field_is_rejected_and_named() -> None:
    rejection = reject("baton.trigger.acme.deploy", body(colour="red"))
    assert rejection.reason == "invalid_schema"
    assert "colour" in rejection.detail


def test_missing_source_is_rejected_and_named() -> None:
    rejection = reject("baton.trigger.acme.deploy", json.dumps({"payload": {}}).encode())
    assert rejection.reason == "invalid_schema"
    assert "source" in rejection.detail


@pytest.mark.parametrize(
    "fields",
    [
        {"source": ""},
        {"payload": [1, 2]},
        {"idempotency_key": ""},
        {"triggered_by": "carrier-pigeon"},
        {"resource_id": 17},
    ],
)
def test_schema_violations(fields: dict[str, Any]) -> None:
    assert reject("baton.trigger.acme.deploy", body(**fields)).reason == "invalid_schema"


def test_oversized_body_is_rejected_before_parsing() -> None:
    raw = body(payload={"blob": "x" * 200})
    assert accept("baton.trigger.acme.deploy", raw, max_bytes=len(raw)).type == "deploy"
    rejection = reject("baton.trigger.acme.deploy", raw, max_bytes=len(raw) - 1)
    assert rejection.reason == "oversized"
    # Size is checked before JSON: an oversized non-JSON body is still "oversized".
    assert reject("baton.trigger.acme.deploy", b"x" * 11, max_bytes=10).reason == "oversized"


def test_subject_checks_come_before_body_checks() -> None:
    assert reject("baton.trigger.ACME.deploy", b"{bad").reason == "invalid_tenant"
    assert reject("baton.trigger.acme.a..b", b"{bad").reason == "invalid_type"


# --- ids -------------------------------------------------------------------------------


def test_idempotency_key_beats_dedup_key() -> None:
    raw = body(idempotency_key="order-42")
    first = accept("baton.trigger.acme.deploy", raw, dedup_key="nats-msg-1")
    second = accept("baton.trigger.acme.deploy", raw, dedup_key="nats-msg-2")
    assert first.idempotency_key == second.idempotency_key == "order-42"
    assert first.trigger_id == second.trigger_id == trigger_id_for("acme", "order-42")


def test_dedup_key_is_used_without_idempotency_key() -> None:
    first = accept("baton.trigger.acme.deploy", body(), dedup_key="nats-msg-1")
    again = accept("baton.trigger.acme.deploy", body(), dedup_key="nats-msg-1")
    other = accept("baton.trigger.acme.deploy", body(), dedup_key="nats-msg-2")
    assert first.idempotency_key == "nats-msg-1"
    assert first.trigger_id == again.trigger_id == trigger_id_for("acme", "nats-msg-1")
    assert other.trigger_id != first.trigger_id


def test_trigger_ids_are_deterministic_and_tenant_scoped() -> None:
    assert trigger_id_for("acme", "k") == trigger_id_for("acme", "k")
    assert trigger_id_for("acme", "k") != trigger_id_for("globex", "k")
    assert trigger_id_for("acme", "k") != trigger_id_for("acme", "k2")
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert trigger_id_for("ab", "c") != trigger_id_for("a", "bc")
    assert uuid.UUID(trigger_id_for("acme", "k")).version == 5
    acme = accept("baton.trigger.acme.deploy", body(idempotency_key="same"))
    globex = accept("baton.trigger.globex.deploy", body(idempotency_key="same"))
    assert acme.trigger_id != globex.trigger_id


def test_run_ids_are_deterministic_per_trigger_and_pipeline() -> None:
    trigger_id = trigger_id_for("acme", "k")
    assert run_id_for(trigger_id, "orders-sync") == run_id_for(trigger_id, "orders-sync")
    assert run_id_for(trigger_id, "orders-sync") != run_id_for(trigger_id, "billing")
    assert run_id_for(trigger_id, "orders-sync") != run_id_for(trigger_id_for("acme", "k2"), "orders-sync")
    assert run_id_for(trigger_id, "orders-sync") != trigger_id


def test_rejection_ids_are_stable_per_delivery_and_distinct_from_accepted_ids() -> None:
    first = reject("baton.trigger.acme.deploy", b"{bad", dedup_key="seq-9")
    redelivered = reject("baton.trigger.acme.deploy", b"{bad", dedup_key="seq-9")
    other = reject("baton.trigger.acme.deploy", b"{bad", dedup_key="seq-10")
    assert first.trigger_id == redelivered.trigger_id
    assert first.trigger_id != other.trigger_id
    assert first.trigger_id != trigger_id_for("acme", "seq-9")
    # A rejection without a known tenant still gets a stable id.
    no_tenant = reject("nope", b"{}", dedup_key="seq-9")
    assert no_tenant.trigger_id == reject("nope", b"{}", dedup_key="seq-9").trigger_id
