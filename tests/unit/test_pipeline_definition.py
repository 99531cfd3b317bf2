"""Pipeline definitions: validation, the JSON round trip, trigger matching and the runner's index."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from baton.events.pipeline import PipelineDefinition
from baton.runner.definitions import DefinitionIndex

pytestmark = pytest.mark.unit

ORDERS_SYNC_YAML = """
name: orders-sync
description: Copy big orders into the warehouse and tell the team.
trigger:
  type: orders.ready
  environment: production
config:
  warehouse: analytics
steps:
  - name: extract
    type: action
    uses: shell
    with:
      command: ./extract.sh --since "$LAST_RUN"
      timeout_ms: 60000
  - name: big_enough
    type: condition
    if: trigger.payload.amount > 100
  - name: load
    type: action
    uses: python
    with:
      ref: warehouse.loader:load_orders
  - name: notify
    type: action
    uses: http
    with:
      url: https://hooks.example.com/orders
      method: post
      json:
        text: orders loaded
"""


def orders_sync() -> dict[str, Any]:
    """A fresh copy of the example document (tests mutate it)."""
    document = yaml.safe_load(ORDERS_SYNC_YAML)
    assert isinstance(document, dict)
    return document


def error_locs(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str | int, ...]]:
    return [tuple(err["loc"]) for err in exc.value.errors()]


def assert_field_named(exc: pytest.ExceptionInfo[ValidationError], step: int, kind: str, field: str) -> None:
    """Some error's ``loc`` points into step ``step`` (of ``kind``) and ends with ``field``."""
    locs = error_locs(exc)
    assert any(loc[:3] == ("steps", step, kind) and loc[-1] == field for loc in locs), locs


# --- the example -----------------------------------------------------------------------


def test_example_validates() -> None:
    pipeline = PipelineDefinition.model_validate(orders_sync())
    assert pipeline.name == "orders-sync"
    assert pipeline.enabled
    assert [(s.name, s.type) for s in pipeline.steps] == [
        ("extract", "action"),
        ("big_enough", "condition"),
        ("load", "action"),
        ("notify", "action"),
    ]
    assert pipeline.trigger.type == "orders.ready"


def test_example_round_trips_through_to_document() -> None:
    pipeline = PipelineDefinition.model_validate(orders_sync())
    document = pipeline.to_document()
    # The JSON form keeps the YAML's field names ('with', 'if'), not the Python ones.
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["big_enough"]["if"] == "trigger.payload.amount > 100"
    assert "if_" not in steps["big_enough"] and "uses" not in steps["big_enough"]
    assert steps["load"]["with"] == {"ref": "warehouse.loader:load_orders"}
    assert steps["notify"]["with"] == {"url": "https://hooks.example.com/orders", "method": "POST",
                                       "json": {"text": "orders loaded"}}
    assert document["trigger"] == {"type": "orders.ready", "environment": "production"}
    again = PipelineDefinition.model_validate(document)
    assert again == pipeline
    assert again.to_document() == document
    # And through actual JSON text, as the API and the KV bucket carry it.
    assert PipelineDefinition.model_validate_json(json.dumps(document)).to_document() == document


def test_document_drops_nothing_the_user_wrote() -> None:
    source = orders_sync()
    document = PipelineDefinition.model_validate(source).to_document()
    for key, value in source.items():
        if key != "steps":
            assert document[key] == value
    for written, dumped in zip(source["steps"], document["steps"], strict=True):
        expected = {**written, "with": {**written["with"], "method": written["with"]["method"].upper()}} if (
            "method" in written.get("with", {})
        ) else written
        assert {k: v for k, v in dumped.items() if k != "with" or v} == expected


# --- malformed definitions -------------------------------------------------------------


def test_unknown_step_type() -> None:
    doc = orders_sync()
    doc["steps"][0]["type"] = "loop"
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert any(loc[:2] == ("steps", 0) for loc in error_locs(exc))
    assert "loop" in str(exc.value)


def test_duplicate_step_names() -> None:
    doc = orders_sync()
    doc["steps"][2]["name"] = "extract"
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert ("steps",) in error_locs(exc)
    assert "duplicate step name 'extract'" in str(exc.value)


@pytest.mark.parametrize("expression", ["trigger.payload.amount >", "(((", "", "   "])
def test_bad_expression(expression: str) -> None:
    doc = orders_sync()
    doc["steps"][1]["if"] = expression
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert ("steps", 1, "condition", "if") in error_locs(exc)


def test_condition_needs_exactly_one_source() -> None:
    doc = orders_sync()
    doc["steps"][1].update({"uses": "python", "with": {"ref": "checks:big"}})
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert ("steps", 1, "condition") in error_locs(exc)
    assert "exactly one" in str(exc.value)
    doc["steps"][1] = {"name": "big_enough", "type": "condition"}
    with pytest.raises(ValidationError):
        PipelineDefinition.model_validate(doc)
    doc["steps"][1] = {"name": "big_enough", "type": "condition", "uses": "python", "with": {"ref": "checks:big"}}
    assert PipelineDefinition.model_validate(doc).steps[1].name == "big_enough"


def test_unknown_uses() -> None:
    doc = orders_sync()
    doc["steps"][0]["uses"] = "docker"
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert ("steps", 0, "action") in error_locs(exc)
    assert "'docker'" in str(exc.value) and "'uses'" in str(exc.value)


@pytest.mark.parametrize("ref", ["warehouse.loader.load_orders", "warehouse.loader:", ":load", "1mod:f", "a:b:c"])
def test_python_ref_must_be_module_colon_function(ref: str) -> None:
    doc = orders_sync()
    doc["steps"][2]["with"]["ref"] = ref
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert_field_named(exc, 2, "action", "ref")


def test_http_without_url() -> None:
    doc = orders_sync()
    del doc["steps"][3]["with"]["url"]
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert_field_named(exc, 3, "action", "url")


@pytest.mark.parametrize(
    ("path", "value", "loc"),
    [
        (("name",), "Orders Sync", ("name",)),
        (("trigger", "type"), "orders..ready", ("trigger", "type")),
        (("steps", 0, "name"), "1st", ("steps", 0, "action", "shell", "name")),
        (("steps", 3, "with", "method"), "FETCH", ("steps", 3, "action", "http", "with", "method")),
        (("steps", 3, "with", "url"), "ftp://x", ("steps", 3, "action", "http", "with", "url")),
        (("steps", 0, "with", "timeout_ms"), 0, ("steps", 0, "action", "shell", "with", "timeout_ms")),
        (("steps", 0, "with", "shell"), "bash", ("steps", 0, "action", "shell", "with", "shell")),
    ],
)
def test_field_errors_name_their_location(path: tuple[Any, ...], value: Any, loc: tuple[Any, ...]) -> None:
    doc = orders_sync()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert loc in error_locs(exc)


def test_unknown_top_level_field_and_empty_steps() -> None:
    doc = orders_sync()
    doc["schedule"] = "hourly"
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert ("schedule",) in error_locs(exc)
    doc = orders_sync()
    doc["steps"] = []
    with pytest.raises(ValidationError) as exc:
        PipelineDefinition.model_validate(doc)
    assert ("steps",) in error_locs(exc)


# --- matching --------------------------------------------------------------------------


def pipeline_with(trigger: dict[str, Any], enabled: bool = True) -> PipelineDefinition:
    doc = orders_sync()
    doc["trigger"] = trigger
    doc["enabled"] = enabled
    return PipelineDefinition.model_validate(doc)


def test_matches_on_type_only() -> None:
    pipeline = pipeline_with({"type": "orders.ready"})
    assert pipeline.matches("orders.ready", None, None)
    assert pipeline.matches("orders.ready", "staging", "order")
    assert not pipeline.matches("orders", None, None)
    assert not pipeline.matches("orders.ready.v2", None, None)


def test_matches_with_environment_and_resource_type() -> None:
    pipeline = pipeline_with({"type": "orders.ready", "environment": "production", "resource_type": "order"})
    assert pipeline.matches("orders.ready", "production", "order")
    assert not pipeline.matches("orders.ready", "staging", "order")
    assert not pipeline.matches("orders.ready", None, "order")
    assert not pipeline.matches("orders.ready", "production", "invoice")
    assert not pipeline.matches("orders.ready", "production", None)


def test_disabled_pipeline_never_matches() -> None:
    pipeline = pipeline_with({"type": "orders.ready"}, enabled=False)
    assert not pipeline.matches("orders.ready", None, None)


# --- the runner's definition index -----------------------------------------------------


def document(trigger_type: str = "orders.ready", enabled: bool = True, **trigger: str) -> dict[str, Any]:
    doc = orders_sync()
    doc["trigger"] = {"type": trigger_type, **trigger}
    doc["enabled"] = enabled
    return PipelineDefinition.model_validate(doc).to_document()


def names(index: DefinitionIndex, tenant: str, trigger_type: str, env: str | None = None,
          resource: str | None = None) -> list[str]:
    return [p.name for p in index.match(tenant, trigger_type, env, resource)]


def test_index_put_and_match_by_tenant_and_type() -> None:
    index = DefinitionIndex()
    assert index.put("acme", "zeta", 1, document()) is not None
    assert index.put("acme", "alpha", 1, document()) is not None
    index.put("acme", "other", 1, document("invoices.paid"))
    index.put("globex", "alpha", 1, document())
    index.put("acme", "prod-only", 1, document(environment="production"))
    index.put("acme", "off", 1, document(enabled=False))
    assert len(index) == 6
    assert names(index, "acme", "orders.ready") == ["alpha", "zeta"]  # sorted by name
    assert names(index, "acme", "orders.ready", "production") == ["alpha", "prod-only", "zeta"]
    assert names(index, "globex", "orders.ready") == ["alpha"]
    assert names(index, "initech", "orders.ready") == []
    assert names(index, "acme", "invoices.paid") == ["other"]
    entry = index.get("acme", "alpha")
    assert entry is not None and entry.version == 1 and entry.document == document()


def test_index_replace_moves_the_type_and_ignores_older_versions() -> None:
    index = DefinitionIndex()
    index.put("acme", "p", 2, document("orders.ready"))
    index.put("acme", "p", 3, document("invoices.paid"))
    assert names(index, "acme", "orders.ready") == []
    assert names(index, "acme", "invoices.paid") == ["p"]
    stale = index.put("acme", "p", 2, document("orders.ready"))
    assert stale is not None and stale.version == 3
    assert names(index, "acme", "orders.ready") == []
    assert index.get("acme", "p").version == 3  # type: ignore[union-attr]
    # Re-putting the same version replaces it (a KV redelivery is harmless).
    assert index.put("acme", "p", 3, document("invoices.paid")).version == 3  # type: ignore[union-attr]
    assert len(index) == 1


def test_index_rejects_invalid_definition_and_keeps_the_old_one(caplog: pytest.LogCaptureFixture) -> None:
    index = DefinitionIndex()
    index.put("acme", "p", 1, document())
    bad = document()
    bad["steps"][0]["uses"] = "docker"
    with caplog.at_level(logging.ERROR):
        assert index.put("acme", "p", 2, bad) is None
    assert "invalid definition" in caplog.text
    assert index.get("acme", "p").version == 1  # type: ignore[union-attr]
    assert names(index, "acme", "orders.ready") == ["p"]


def test_index_remove() -> None:
    index = DefinitionIndex()
    index.put("acme", "p", 1, document())
    index.remove("acme", "p")
    index.remove("acme", "never-existed")
    assert len(index) == 0
    assert index.get("acme", "p") is None
    assert names(index, "acme", "orders.ready") == []


def kv_value(version: int, doc: dict[str, Any]) -> bytes:
    return json.dumps({"version": version, "definition": doc}).encode()


def test_index_apply_kv_entry(caplog: pytest.LogCaptureFixture) -> None:
    index = DefinitionIndex()
    index.apply_kv_entry("pipeline.acme.orders-sync", kv_value(2, document()), "PUT")
    assert names(index, "acme", "orders.ready") == ["orders-sync"]
    # An older version arriving late is ignored.
    index.apply_kv_entry("pipeline.acme.orders-sync", kv_value(1, document("invoices.paid")), "PUT")
    assert names(index, "acme", "orders.ready") == ["orders-sync"]
    assert index.get("acme", "orders-sync").version == 2  # type: ignore[union-attr]
    # Malformed values are ignored with a log line, never raised.
    with caplog.at_level(logging.ERROR):
        for value in (b"{not json", b'{"definition": {}}', b'{"version": "x", "definition": {}}', b"[]"):
            index.apply_kv_entry("pipeline.acme.orders-sync", value, "PUT")
    assert "malformed" in caplog.text
    assert index.get("acme", "orders-sync").version == 2  # type: ignore[union-attr]
    # Keys of other kinds or without tenant/name are ignored.
    index.apply_kv_entry("monitor.acme.orders-sync", None, "DEL")
    index.apply_kv_entry("pipeline.acme", None, "DEL")
    assert len(index) == 1
    # DEL and PURGE remove.
    index.apply_kv_entry("pipeline.acme.orders-sync", None, "DEL")
    assert len(index) == 0
    index.apply_kv_entry("pipeline.acme.orders-sync", kv_value(3, document()), None)
    assert len(index) == 1
    index.apply_kv_entry("pipeline.acme.orders-sync", b"", "PURGE")
    assert names(index, "acme", "orders.ready") == []


def test_index_stores_documents_it_was_given_without_mutating_them() -> None:
    doc = document()
    snapshot = copy.deepcopy(doc)
    index = DefinitionIndex()
    index.put("acme", "p", 1, doc)
    assert doc == snapshot
