"""Monitor definitions and the pure decisions per type: cursors, conditions, idempotency keys, backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from baton.events.monitor import FileMonitor, GatewayReport, parse_monitor
from baton.monitor.checks import CheckFailed
from baton.monitor.checks.files import scan_directory
from baton.monitor.checks.sql import resolve_connection
from baton.monitor.evaluation import (
    MonitorCursor,
    backoff_seconds,
    decide,
    decide_report,
)

pytestmark = pytest.mark.unit
T = "acme"


def monitor(type_: str, settings: dict[str, Any] | None = None, **fields: Any) -> Any:
    doc: dict[str, Any] = {"name": "m1", "type": type_, "pipeline": "target", **fields}
    if settings is not None:
        doc["settings"] = settings
    return parse_monitor(doc)


def locs(exc: ValidationError) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


# --- definitions ----------------------------------------------------------------------------


def test_interval_accepts_units_and_refuses_below_one_second() -> None:
    assert monitor("file", {"directory": "/x"}, interval="5m").interval == 300
    assert monitor("file", {"directory": "/x"}, interval="1500ms").interval == 1.5
    assert monitor("file", {"directory": "/x"}, interval=2).interval == 2
    with pytest.raises(ValidationError) as info:
        monitor("file", {"directory": "/x"}, interval="500ms")
    assert ("file", "interval") in locs(info.value)


@pytest.mark.parametrize(
    ("type_", "settings", "fields", "loc"),
    [
        ("file", {}, {}, ("file", "settings", "directory")),
        ("file", {"directory": "/x", "mode": "count"}, {}, ("file", "threshold")),
        ("sql", {"query": "select 1"}, {}, ("sql", "connection")),
        ("http", {"url": "ftp://x"}, {}, ("http", "settings", "url")),
        ("http", {"url": "http://x"}, {"threshold": 3}, ("http", "threshold")),
        ("upstream", {"pipeline": "target"}, {}, ("upstream", "settings", "pipeline")),
        ("file", {"directory": "/x"}, {"condition": "files >"}, ("file", "condition")),
        ("file", {"directory": "/x"}, {"runs_on": "cloud"}, ("file", "runs_on")),
        ("file", {"directory": "/x"}, {"connection": "db"}, ("file", "connection")),
    ],
)
def test_invalid_definitions_name_the_field(
    type_: str, settings: dict[str, Any], fields: dict[str, Any], loc: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as info:
        monitor(type_, settings, **fields)
    assert loc in locs(info.value)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        parse_monitor({"name": "m", "type": "ftp", "pipeline": "p"})


def test_gateway_and_report_monitors_are_not_evaluated_by_the_service() -> None:
    assert monitor("file", {"directory": "/x"}).evaluated_by_service
    assert not monitor("file", {"directory": "/x"}, runs_on="gateway").evaluated_by_service
    assert not monitor("report").evaluated_by_service


# --- file -----------------------------------------------------------------------------------


def obs(*files: tuple[str, int, int]) -> dict[str, Any]:
    entries = [{"name": n, "size": s, "mtime_ns": t} for n, s, t in files]
    return {"directory": "/in", "glob": "*", "count": len(entries), "files": entries}


def test_file_new_fires_once_per_file_and_remembers_it() -> None:
    m = monitor("file", {"directory": "/in"})
    cursor = MonitorCursor.fresh("file")
    first = decide(m, T, obs(("a.csv", 1, 10)), cursor)
    assert [f.idempotency_key for f in first.fires] == ["monitor:acme/m1:file:a.csv|10|1"]
    second = decide(m, T, obs(("a.csv", 1, 10), ("b.csv", 2, 11)), first.cursor)
    assert [f.observation_key for f in second.fires] == ["b.csv|11|2"]
    again = decide(m, T, obs(("a.csv", 1, 10), ("b.csv", 2, 11)), second.cursor)
    assert again.fires == [] and again.outcome == "no_fire"
    # A rewritten file (new mtime/size) is a new observation.
    changed = decide(m, T, obs(("a.csv", 5, 20), ("b.csv", 2, 11)), again.cursor)
    assert [f.observation_key for f in changed.fires] == ["a.csv|20|5"]


def test_file_cursor_survives_a_round_trip_through_the_tick_event() -> None:
    m = monitor("file", {"directory": "/in"})
    first = decide(m, T, obs(("a", 1, 1)), MonitorCursor.fresh("file"))
    resumed = MonitorCursor.resume("file", first.cursor.model_dump(mode="json"))
    assert decide(m, T, obs(("a", 1, 1)), resumed).fires == []
    # A cursor of another type is not reused.
    assert MonitorCursor.resume("http", first.cursor.model_dump(mode="json")) == MonitorCursor.fresh("http")


def test_file_without_existing_files_remembers_them_first() -> None:
    m = monitor("file", {"directory": "/in", "include_existing": False})
    first = decide(m, T, obs(("old", 1, 1)), MonitorCursor.fresh("file"))
    assert first.fires == [] and first.cursor.initialised
    second = decide(m, T, obs(("old", 1, 1), ("new", 1, 2)), first.cursor)
    assert [f.observation_key for f in second.fires] == ["new|2|1"]


def test_file_batch_mode_fires_one_trigger_for_all_new_files() -> None:
    m = monitor("file", {"directory": "/in", "each_file": False})
    decision = decide(m, T, obs(("a", 1, 1), ("b", 1, 2)), MonitorCursor.fresh("file"))
    assert len(decision.fires) == 1
    assert [f["name"] for f in decision.fires[0].observation["files"]] == ["a", "b"]


def test_file_condition_false_keeps_new_files_new() -> None:
    m = monitor("file", {"directory": "/in"}, condition="observation.new_count >= 2")
    first = decide(m, T, obs(("a", 1, 1)), MonitorCursor.fresh("file"))
    assert first.fires == []
    second = decide(m, T, obs(("a", 1, 1), ("b", 1, 2)), first.cursor)
    assert sorted(f.observation_key for f in second.fires) == ["a|1|1", "b|2|1"]


def test_file_count_fires_on_reaching_the_threshold_and_rearms() -> None:
    m = monitor("file", {"directory": "/in", "mode": "count"}, threshold=2)
    cursor = MonitorCursor.fresh("file")
    one = decide(m, T, obs(("a", 1, 1)), cursor)
    assert one.fires == [] and "< threshold" in one.reason
    two = decide(m, T, obs(("a", 1, 1), ("b", 1, 2)), one.cursor)
    assert len(two.fires) == 1
    assert decide(m, T, obs(("a", 1, 1), ("b", 1, 2)), two.cursor).fires == []
    three = decide(m, T, obs(("a", 1, 1), ("b", 1, 2), ("c", 1, 3)), two.cursor)
    assert len(three.fires) == 1 and three.fires[0].idempotency_key != two.fires[0].idempotency_key


def test_scan_directory_lists_matches_and_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("1")
    (tmp_path / "b.txt").write_text("2")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.csv").write_text("3")
    m = monitor("file", {"directory": str(tmp_path), "glob": "*.csv"})
    assert [f["name"] for f in scan_directory(m.settings)["files"]] == ["a.csv"]
    deep = monitor("file", {"directory": str(tmp_path), "glob": "*.csv", "recursive": True})
    assert sorted(f["name"] for f in scan_directory(deep.settings)["files"]) == ["a.csv", "sub/c.csv"]
    gone = monitor("file", {"directory": str(tmp_path / "missing")})
    with pytest.raises(CheckFailed, match="does not exist"):
        scan_directory(gone.settings)


# --- http -----------------------------------------------------------------------------------


def response(status: int, body: Any) -> dict[str, Any]:
    return {"url": "http://x", "status": status, "json": body, "body": "", "headers": {}}


def test_http_default_fires_on_2xx_once_per_distinct_body() -> None:
    m = monitor("http", {"url": "http://x"})
    cursor = MonitorCursor.fresh("http")
    down = decide(m, T, response(503, None), cursor)
    assert down.fires == [] and "not 2xx" in down.reason
    up = decide(m, T, response(200, {"v": 1}), down.cursor)
    assert len(up.fires) == 1
    assert decide(m, T, response(200, {"v": 1}), up.cursor).fires == []
    assert len(decide(m, T, response(200, {"v": 2}), up.cursor).fires) == 1


def test_http_condition_on_json_field_and_refire_key_is_deterministic() -> None:
    m = monitor("http", {"url": "http://x"}, condition="response.status == 200 && response.json.ready == true")
    cursor = MonitorCursor.fresh("http")
    assert decide(m, T, response(200, {"ready": False}), cursor).fires == []
    a = decide(m, T, response(200, {"ready": True}), cursor)
    b = decide(m, T, response(200, {"ready": True}), cursor)  # same cursor: e.g. after a crash
    assert a.fires[0].idempotency_key == b.fires[0].idempotency_key


def test_http_condition_error_is_an_error_decision_not_an_exception() -> None:
    m = monitor("http", {"url": "http://x"}, condition="response.json.missing.deeper == 1")
    decision = decide(m, T, response(200, {"a": 1}), MonitorCursor.fresh("http"))
    assert decision.outcome == "error" and decision.condition_error


def test_value_monitor_refires_when_the_condition_comes_back_with_the_same_value() -> None:
    m = monitor("http", {"url": "http://x"})
    up = decide(m, T, response(200, {"v": 1}), MonitorCursor.fresh("http"))
    down = decide(m, T, response(500, None), up.cursor)
    back = decide(m, T, response(200, {"v": 1}), down.cursor)
    assert len(back.fires) == 1 and back.fires[0].idempotency_key != up.fires[0].idempotency_key


# --- sql ------------------------------------------------------------------------------------


def result(value: Any, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rows = rows if rows is not None else [{"n": value}]
    return {"value": value, "rows": rows, "row_count": len(rows), "columns": ["n"]}


def test_sql_scalar_threshold_and_condition() -> None:
    m = monitor("sql", {"query": "select count(*) from t"}, connection="db", threshold=10)
    cursor = MonitorCursor.fresh("sql")
    low = decide(m, T, result(3), cursor)
    assert low.fires == [] and "3 < threshold 10" in low.reason
    high = decide(m, T, result(12), low.cursor)
    assert len(high.fires) == 1 and high.fires[0].observation["value"] == 12
    cond = monitor("sql", {"query": "q"}, connection="db", condition="result.value > 5")
    assert len(decide(cond, T, result(6), cursor).fires) == 1
    assert decide(cond, T, result(5), cursor).fires == []


def test_sql_rows_mode_fires_on_any_row_and_on_changed_rows() -> None:
    m = monitor("sql", {"query": "q", "mode": "rows"}, connection="db")
    cursor = MonitorCursor.fresh("sql")
    assert decide(m, T, result(None, []), cursor).fires == []
    one = decide(m, T, result(1, [{"id": 1}]), cursor)
    assert len(one.fires) == 1
    assert decide(m, T, result(1, [{"id": 1}]), one.cursor).fires == []
    assert len(decide(m, T, result(1, [{"id": 1}, {"id": 2}]), one.cursor).fires) == 1


def test_named_connections_resolve_and_unknown_names_fail() -> None:
    assert resolve_connection("wh", {"wh": "sqlite://"}) == "sqlite://"
    assert resolve_connection("postgresql://u@h/db", {}) == "postgresql://u@h/db"
    with pytest.raises(CheckFailed, match="unknown connection 'nope'"):
        resolve_connection("nope", {"wh": "sqlite://"})


# --- upstream and reports -------------------------------------------------------------------


def test_upstream_fires_once_per_completed_run_of_its_pipeline() -> None:
    m = monitor("upstream", {"pipeline": "extract"})
    completions = [
        {"run_id": "r1", "pipeline": "extract", "status": "completed"},
        {"run_id": "r2", "pipeline": "other", "status": "completed"},
        {"run_id": "r3", "pipeline": "extract", "status": "completed"},
    ]
    decision = decide(m, T, completions, MonitorCursor.fresh("upstream"))
    assert [f.idempotency_key for f in decision.fires] == ["monitor:acme/m1:run:r1", "monitor:acme/m1:run:r3"]
    assert decision.fires[0].observation["upstream"]["run_id"] == "r1"
    assert decision.cursor.last_run_id == "r3"
    idle = decide(m, T, [], decision.cursor)
    assert idle.fires == [] and idle.cursor.last_run_id == "r3"


def test_report_fires_once_per_report_id() -> None:
    m = monitor("report", condition="report.observation.rows > 0")
    cursor = MonitorCursor.fresh("report")
    first = decide_report(m, T, GatewayReport(report_id="r-1", observation={"rows": 3}), cursor)
    assert [f.idempotency_key for f in first.fires] == ["monitor:acme/m1:report:r-1"]
    repeat = decide_report(m, T, GatewayReport(report_id="r-1", observation={"rows": 3}), first.cursor)
    assert repeat.fires == [] and "already handled" in repeat.reason
    empty = decide_report(m, T, GatewayReport(report_id="r-2", observation={"rows": 0}), first.cursor)
    assert empty.fires == []


def test_a_gateway_report_for_a_file_monitor_uses_the_file_rules() -> None:
    m = monitor("file", {"directory": "/behind/firewall"}, runs_on="gateway")
    assert isinstance(m, FileMonitor)
    report = GatewayReport(observation=obs(("x.csv", 1, 1)))
    decision = decide_report(m, T, report, MonitorCursor.fresh("file"))
    assert [f.observation_key for f in decision.fires] == ["x.csv|1|1"]
    bad = decide_report(m, T, GatewayReport(observation={"files": [{"nope": 1}]}), MonitorCursor.fresh("file"))
    assert bad.outcome == "error"


def test_backoff_doubles_from_the_first_error_and_is_capped() -> None:
    delays = [backoff_seconds(n, interval=1.0, initial=1.0, maximum=30.0) for n in range(0, 8)]
    assert delays == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_seconds(2, interval=60.0, initial=1.0, maximum=30.0) == 60.0
