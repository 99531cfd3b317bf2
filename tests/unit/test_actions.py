"""Action handlers (shell, http, python) and the registry's failure and size handling.

Shell tests spawn /bin/sh and HTTP tests talk to a local server on 127.0.0.1: those are the
actions under test, so this is the smallest I/O that proves them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.events.catalogue import LogLine, TelemetrySample
from baton.events.messages import (
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES,
    MAX_RESULT_BYTES,
    MAX_TELEMETRY_SAMPLES,
    StepLogBatch,
    StepOutcome,
    WorkItem,
)
from baton.runner.actions import registry
from baton.runner.actions.context import StepContext
from baton.runner.actions.head_tail import HeadTailBuffer
from baton.runner.actions.registry import ActionOutcome, execute_action
from baton.runner.actions.shell import MARKER_RESERVE, OUTPUT_TAIL_BYTES, LineLogger
from baton.runner.worker import encode_reply
from tests.helpers import wait_for

pytestmark = pytest.mark.unit

HERE = "tests.unit.test_actions"


def make_item(uses: str, settings: dict[str, Any], step_type: str = "action", **extra: Any) -> WorkItem:
    """A WorkItem for one attempt of step `s1` of run `r1`."""
    fields: dict[str, Any] = {
        "tenant": "acme",
        "run_id": "r1",
        "pipeline": "p",
        "pipeline_version": 3,
        "step": "s1",
        "step_type": step_type,
        "uses": uses,
        "settings": settings,
        "attempt": 2,
        "idempotency_key": "r1:s1:2",
        "trigger": {"n": 4},
        "context": {"s0": {"x": 1}},
        "config": {"region": "eu"},
        "reply_subject": "baton.result.acme.r1",
    }
    fields.update(extra)
    return WorkItem.model_validate(fields)


async def run_item(item: WorkItem, client: httpx.AsyncClient | None = None) -> tuple[ActionOutcome, StepContext]:
    """Execute `item` through the registry, as the worker does."""
    ctx = StepContext.from_work_item(item)
    if client is not None:
        return await execute_action(item, ctx, client), ctx
    async with httpx.AsyncClient() as own_client:
        return await execute_action(item, ctx, own_client), ctx


# --- python handlers referenced as tests.unit.test_actions:<name> -------------------------
def sync_add(ctx: StepContext) -> dict[str, Any]:
    return {
        "sum": ctx.settings["a"] + ctx.settings["b"],
        "on_main_thread": threading.current_thread() is threading.main_thread(),
    }


async def async_inputs(ctx: StepContext) -> dict[str, Any]:
    return {
        "run": ctx.run,
        "step": ctx.step,
        "results": ctx.results,
        "config": ctx.config,
        "trigger": ctx.trigger,
        "attempt": ctx.attempt,
        "key": ctx.idempotency_key,
    }


def noisy(ctx: StepContext) -> int:
    for index in range(MAX_LOG_LINES + 50):
        ctx.log(f"line {index}", index=index)
    ctx.log("x" * (MAX_LOG_LINE_CHARS + 1000), level="error")
    return 1


def returns_set(ctx: StepContext) -> Any:
    return {"ids": {1, 2}}


def returns_nan(ctx: StepContext) -> float:
    return float("nan")


def raises(ctx: StepContext) -> None:
    raise ValueError("boom")


async def never_returns(ctx: StepContext) -> None:
    await asyncio.Event().wait()


def returns_one(ctx: StepContext) -> int:
    return 1


def even(ctx: StepContext) -> bool:
    return ctx.trigger["n"] % 2 == 0


def huge(ctx: StepContext) -> str:
    return "é" * MAX_RESULT_BYTES


not_callable = 42


# --- shell ----------------------------------------------------------------------------------
async def test_shell_success_parses_json_stdout() -> None:
    outcome, ctx = await run_item(make_item("shell", {"command": "echo '{\"a\": [1, 2]}'"}))
    assert outcome.ok, outcome.error
    assert outcome.result["exit_code"] == 0
    assert outcome.result["stdout"] == '{"a": [1, 2]}'
    assert outcome.result["json"] == {"a": [1, 2]}
    assert [line.message for line in ctx.logs] == ['{"a": [1, 2]}']


async def test_shell_plain_stdout_has_no_json_key() -> None:
    outcome, _ = await run_item(make_item("shell", {"command": ["echo", "hello world"]}))
    assert outcome.ok
    assert outcome.result["stdout"] == "hello world"
    assert "json" not in outcome.result


async def test_shell_nonzero_exit_fails_with_code_and_stderr() -> None:
    outcome, ctx = await run_item(make_item("shell", {"command": "echo partial; echo 'disk is full' >&2; exit 3"}))
    assert not outcome.ok
    assert "exited with code 3" in (outcome.error or "")
    assert "disk is full" in (outcome.error or "")
    assert [(line.level, line.message) for line in ctx.logs] == [("info", "partial"), ("warning", "disk is full")]


async def test_shell_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The background sleep is a grandchild: only killing the whole group takes it down.
    command = f"sleep 60 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    outcome, _ = await run_item(make_item("shell", {"command": command, "timeout_ms": 300}))
    assert time.monotonic() - started < 10
    assert not outcome.ok
    assert outcome.error is not None and "timed out after 300 ms" in outcome.error
    child = int(pid_file.read_text())
    await wait_for(lambda: not _alive(child), timeout=5, message=f"background child {child} still running")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited and only waits to be reaped by its new parent


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    """The test's temporary directory with symlinks resolved, as `pwd` prints it."""
    return str(tmp_path.resolve())


async def test_shell_honours_env_and_cwd(workdir: str) -> None:
    settings = {
        "command": 'printf "%s|%s|%s" "$BATON_T_FOO" "$(pwd)" "${PATH:+has-path}"',
        "env": {"BATON_T_FOO": "bar"},
        "cwd": workdir,
    }
    outcome, _ = await run_item(make_item("shell", settings))
    assert outcome.ok, outcome.error
    # PATH comes from the worker's own environment: `env` is merged over it, not instead of it.
    assert outcome.result["stdout"] == f"bar|{workdir}|has-path"


async def test_shell_sees_the_attempt_in_baton_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_PARTITION_KEY", "stale-from-the-worker")
    command = 'printf "%s|%s|%s|%s|%s" "$BATON_RUN_ID" "$BATON_STEP" "$BATON_ATTEMPT" "$BATON_IDEMPOTENCY_KEY" ' \
        '"${BATON_PARTITION_KEY-unset}"'
    outcome, _ = await run_item(make_item("shell", {"command": command, "env": {"BATON_ATTEMPT": "99"}}))
    assert outcome.ok, outcome.error
    assert outcome.result["stdout"] == "r1|s1|2|r1:s1:2|unset"
    outcome, _ = await run_item(make_item("shell", {"command": 'echo "$BATON_PARTITION_KEY"'}, partition_key="p-7"))
    assert outcome.result["stdout"] == "p-7"


async def test_shell_argv_list_is_not_interpreted_by_a_shell() -> None:
    outcome, _ = await run_item(make_item("shell", {"command": ["echo", "$HOME; rm -rf /"]}))
    assert outcome.ok
    assert outcome.result["stdout"] == "$HOME; rm -rf /"


async def test_shell_missing_program_or_cwd_fails_clearly(tmp_path: Path) -> None:
    outcome, _ = await run_item(make_item("shell", {"command": ["/no/such/program"]}))
    assert not outcome.ok and "cannot start '/no/such/program'" in (outcome.error or "")
    outcome, _ = await run_item(make_item("shell", {"command": "true", "cwd": str(tmp_path / "missing")}))
    assert not outcome.ok and "cannot start" in (outcome.error or "")


async def test_shell_keeps_only_a_bounded_tail_of_output() -> None:
    total = OUTPUT_TAIL_BYTES * 3
    # One long line of x's, then numbered lines: the end must survive, the start must not.
    command = f"head -c {total} /dev/zero | tr '\\0' 'x'; echo; seq 1 5000"
    outcome, ctx = await run_item(make_item("shell", {"command": command}))
    assert outcome.ok, outcome.error
    stdout = outcome.result["stdout"]
    assert stdout.startswith("…[truncated ")
    assert stdout.endswith("\n5000")
    assert len(stdout.encode()) < OUTPUT_TAIL_BYTES + 100
    assert len(ctx.logs) <= MAX_LOG_LINES
    assert ctx.logs[-1].message == "5000"


async def test_shell_logs_each_line_and_cuts_endless_ones() -> None:
    # 100,000 x's without a newline, then a normal line on stderr.
    command = "head -c 100000 /dev/zero | tr '\\0' 'x'; echo; printf 'tail without newline' >&2"
    outcome, ctx = await run_item(make_item("shell", {"command": command}))
    assert outcome.ok, outcome.error
    long_line, last = ctx.logs
    kept = MAX_LOG_LINE_CHARS - MARKER_RESERVE
    assert long_line.level == "info" and long_line.message == "x" * kept + f"…[truncated {100_000 - kept} bytes]"
    assert (last.level, last.message) == ("warning", "tail without newline")


def test_line_logger_splits_chunks_into_lines() -> None:
    ctx = StepContext.from_work_item(make_item("shell", {"command": "true"}))
    lines = LineLogger(ctx, "info")
    for chunk in (b"one\r\ntw", b"o\n", "thr\u00e9".encode()[:4], "thr\u00e9".encode()[4:], b"e\n\nlast"):
        lines.feed(chunk)
    lines.close()
    assert [line.message for line in ctx.logs] == ["one", "two", "thr\u00e9e", "", "last"]


async def test_invalid_shell_settings_fail() -> None:
    outcome, _ = await run_item(make_item("shell", {"cmd": "echo"}))
    assert not outcome.ok and "invalid settings" in (outcome.error or "")


# --- python ---------------------------------------------------------------------------------
async def test_python_sync_handler_runs_off_the_event_loop_thread() -> None:
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:sync_add", "a": 2, "b": 3}))
    assert outcome == ActionOutcome(ok=True, result={"sum": 5, "on_main_thread": False})


async def test_python_async_handler_sees_the_step_context() -> None:
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:async_inputs"}))
    assert outcome.ok, outcome.error
    assert outcome.result == {
        "run": {"id": "r1", "pipeline": "p", "pipeline_version": 3, "tenant": "acme"},
        "step": "s1",
        "results": {"s0": {"x": 1}},
        "config": {"region": "eu"},
        "trigger": {"n": 4},
        "attempt": 2,
        "key": "r1:s1:2",
    }


async def test_ctx_log_keeps_the_first_and_last_lines_and_truncates_long_messages() -> None:
    outcome, ctx = await run_item(make_item("python", {"ref": f"{HERE}:noisy"}))
    assert outcome.ok
    logs = ctx.logs
    assert len(logs) == MAX_LOG_LINES
    assert ctx.truncated == 51  # 251 lines written, 200 kept
    half = MAX_LOG_LINES // 2
    assert logs[0].message == "line 0" and logs[0].data == {"index": 0}
    assert logs[half - 1].message == f"line {half - 1}"
    # The tail starts after the 51 dropped lines.
    assert logs[half].message == f"line {half + 51}" and logs[half].data == {"index": half + 51}
    last = logs[-1]
    assert last.level == "error"
    assert last.message.endswith("…[truncated 1000 chars]")
    assert len(last.message) < MAX_LOG_LINE_CHARS + 40


def test_ctx_log_accepts_level_message_data_and_the_older_forms() -> None:
    ctx = StepContext.from_work_item(make_item("python", {"ref": f"{HERE}:noisy"}))
    ctx.log("just a message")
    ctx.log("warning", "disk at 91%", {"disk": "/data", "used": 0.91})
    ctx.log("error", "failed", data={"code": 7})
    ctx.log("debug", "details", step_rows=3)
    ctx.log("WARN", "alias")
    ctx.log("older form", level="error", index=1)
    ctx.log("merged", data={"a": 1}, b=2)
    assert [(line.level, line.message, line.data) for line in ctx.logs] == [
        ("info", "just a message", None),
        ("warning", "disk at 91%", {"disk": "/data", "used": 0.91}),
        ("error", "failed", {"code": 7}),
        ("debug", "details", {"step_rows": 3}),
        ("warning", "alias", None),
        ("error", "older form", {"index": 1}),
        ("info", "merged", {"a": 1, "b": 2}),
    ]
    with pytest.raises(TypeError):
        ctx.log()
    with pytest.raises(TypeError):
        ctx.log("info", "twice", level="error")


def test_ctx_telemetry_records_samples_and_refuses_nonsense() -> None:
    ctx = StepContext.from_work_item(make_item("python", {"ref": f"{HERE}:noisy"}))
    ctx.telemetry(rows=10, bytes=2048, progress=0.25)
    ctx.telemetry(progress=1.0000000002, data={"table": "orders"})
    first, second = ctx.samples
    assert (first.rows, first.bytes, first.progress, first.data) == (10, 2048, 0.25, None)
    assert (second.rows, second.progress, second.data) == (None, 1.0, {"table": "orders"})
    with pytest.raises(ValueError, match="at least one"):
        ctx.telemetry()
    with pytest.raises(ValueError, match="negative"):
        ctx.telemetry(rows=-1)
    with pytest.raises(TypeError, match="rows must be an int"):
        ctx.telemetry(rows=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress"):
        ctx.telemetry(progress=float("nan"))
    assert len(ctx.samples) == 2


def test_ctx_telemetry_is_bounded_like_the_log() -> None:
    ctx = StepContext.from_work_item(make_item("python", {"ref": f"{HERE}:noisy"}))
    for index in range(MAX_TELEMETRY_SAMPLES + 30):
        ctx.telemetry(rows=index)
    rest = ctx.take_rest()
    assert len(rest.telemetry) == MAX_TELEMETRY_SAMPLES and rest.telemetry_truncated == 30
    half = MAX_TELEMETRY_SAMPLES // 2
    assert [s.rows for s in rest.telemetry[:2]] == [0, 1]
    assert rest.telemetry[half].rows == half + 30
    assert rest.telemetry[-1].rows == MAX_TELEMETRY_SAMPLES + 29


def test_live_batches_and_the_rest_add_up_to_the_bounded_record() -> None:
    ctx = StepContext.from_work_item(make_item("python", {"ref": f"{HERE}:noisy"}))
    total = MAX_LOG_LINES * 2
    taken: list[str] = []
    for index in range(total):
        ctx.log(f"line {index}")
        if index % 37 == 0:  # the worker flushing now and then while the step runs
            taken += [line.message for line in ctx.take_live().logs]
    rest = ctx.take_rest()
    messages = taken + [line.message for line in rest.logs]
    assert len(messages) == MAX_LOG_LINES and len(set(messages)) == MAX_LOG_LINES
    assert rest.logs_truncated == total - MAX_LOG_LINES
    half = MAX_LOG_LINES // 2
    # Only head lines are ever sent early: the live batches hold exactly the first half.
    assert taken == [f"line {i}" for i in range(half)]
    assert messages[half:] == [f"line {i}" for i in range(total - half, total)]
    assert ctx.take_live().empty


def test_head_tail_buffer_keeps_first_and_last() -> None:
    buffer: HeadTailBuffer[int] = HeadTailBuffer(5)
    for value in range(12):
        buffer.append(value)
    assert buffer.items() == [0, 1, 2, 10, 11]
    assert buffer.dropped == 7
    assert buffer.take_head() == [0, 1, 2]
    assert buffer.take_head() == []
    assert buffer.take_rest() == [10, 11]
    tiny: HeadTailBuffer[int] = HeadTailBuffer(1)
    for value in range(3):
        tiny.append(value)
    assert tiny.items() == [0] and tiny.dropped == 2
    with pytest.raises(ValueError):
        HeadTailBuffer(0)


def test_ctx_exposes_attempt_partition_and_replay_flags() -> None:
    item = make_item("python", {"ref": f"{HERE}:noisy"}, partition_key="2026-11-22")
    ctx = StepContext.from_work_item(item)
    assert (ctx.attempt, ctx.idempotency_key, ctx.partition_key) == (2, "r1:s1:2", "2026-11-22")
    assert not ctx.is_replay and not ctx.dry_run
    # Older runners send no partition_key: the trigger snapshot's slice_key stands in.
    replay = make_item(
        "python", {"ref": f"{HERE}:noisy"}, trigger={"slice_key": "eu", "replay_of": "t-0", "dry_run": True}
    )
    ctx = StepContext.from_work_item(replay)
    assert ctx.partition_key == "eu" and ctx.is_replay and ctx.dry_run


def test_replies_that_exceed_the_payload_limit_shed_old_lines_first() -> None:
    now = datetime.now(UTC)
    lines = [LogLine(at=now, message=f"{i} " + "x" * 1000) for i in range(50)]
    samples = [TelemetrySample(at=now, rows=i, data={"pad": "y" * 500}) for i in range(50)]
    batch = StepLogBatch(run_id="r1", step="s1", attempt=1, worker="w", logs=lines, telemetry=samples)
    decoded = StepLogBatch.model_validate_json(encode_reply(batch, 20_000))
    assert decoded.logs == [] and decoded.logs_truncated == 50
    assert 0 < len(decoded.telemetry) < 50 and decoded.telemetry_truncated == 50 - len(decoded.telemetry)
    assert decoded.telemetry[-1].rows == 49  # the newest survive
    outcome = StepOutcome(
        run_id="r1", step="s1", attempt=1, worker="w", ok=True, result="z" * 50_000, started_at=now,
        duration_ms=1, logs=lines[:5],
    )
    decoded_outcome = StepOutcome.model_validate_json(encode_reply(outcome, 20_000))
    assert decoded_outcome.logs == [] and decoded_outcome.logs_truncated == 5
    assert decoded_outcome.result["truncated"] is True and decoded_outcome.result["bytes"] > 50_000


def test_ctx_log_makes_data_json_safe() -> None:
    ctx = StepContext.from_work_item(make_item("python", {"ref": f"{HERE}:noisy"}))
    ctx.log("odd data", level="LOUD", when=object(), ratio=float("nan"))
    (line,) = ctx.logs
    assert line.level == "info"
    assert line.data is not None and set(line.data) == {"when", "ratio"}
    json.dumps(line.data, allow_nan=False)


async def test_python_non_serialisable_result_fails() -> None:
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:returns_set"}))
    assert not outcome.ok and "not JSON-serialisable" in (outcome.error or "")
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:returns_nan"}))
    assert not outcome.ok and "not JSON-serialisable" in (outcome.error or "")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("tests.unit.no_such_module:f", "cannot import module 'tests.unit.no_such_module'"),
        (f"{HERE}:missing", "has no attribute 'missing'"),
        (f"{HERE}:not_callable", "is not callable"),
    ],
)
async def test_python_bad_ref_fails_clearly(ref: str, expected: str) -> None:
    outcome, _ = await run_item(make_item("python", {"ref": ref}))
    assert not outcome.ok
    assert expected in (outcome.error or "")


async def test_python_exception_fails_and_logs_the_traceback() -> None:
    outcome, ctx = await run_item(make_item("python", {"ref": f"{HERE}:raises"}))
    assert not outcome.ok
    assert outcome.error == f"python: {HERE}:raises raised ValueError: boom"
    assert ctx.logs[-1].level == "error" and "Traceback" in ctx.logs[-1].message


async def test_python_timeout_cancels_an_async_handler() -> None:
    started = time.monotonic()
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:never_returns", "timeout_ms": 100}))
    assert time.monotonic() - started < 5
    assert not outcome.ok and "timed out after 100 ms" in (outcome.error or "")


async def test_condition_returns_its_bool_value() -> None:
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:even"}, step_type="condition"))
    assert outcome == ActionOutcome(ok=True, result={"value": True})


async def test_condition_returning_a_non_bool_fails() -> None:
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:returns_one"}, step_type="condition"))
    assert not outcome.ok and "must return a bool, got int" in (outcome.error or "")


async def test_condition_with_a_non_python_kind_fails() -> None:
    outcome, _ = await run_item(make_item("shell", {"command": "true"}, step_type="condition"))
    assert not outcome.ok and "uses: python" in (outcome.error or "")


# --- registry ---------------------------------------------------------------------------------
async def test_oversized_result_is_replaced_by_a_preview() -> None:
    outcome, _ = await run_item(make_item("python", {"ref": f"{HERE}:huge"}))
    assert outcome.ok
    assert outcome.result["truncated"] is True
    assert outcome.result["bytes"] > MAX_RESULT_BYTES
    assert 0 < len(outcome.result["preview"].encode()) <= 4_096


async def test_unknown_kind_fails() -> None:
    outcome, _ = await run_item(make_item("teleport", {}))
    assert not outcome.ok and "unknown action kind 'teleport'" in (outcome.error or "")


async def test_a_crashing_handler_is_a_failure_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    async def buggy(item: WorkItem, ctx: StepContext, client: httpx.AsyncClient) -> Any:
        return {}["missing"]

    monkeypatch.setitem(registry.HANDLERS, "shell", buggy)
    outcome, _ = await run_item(make_item("shell", {"command": "true"}))
    assert not outcome.ok
    assert outcome.error == "shell: unexpected KeyError: 'missing'"


# --- http -------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"null")
        if self.path == "/echo":
            self._send(200, "application/json", json.dumps({"got": body, "auth": self.headers.get("x-token")}))
        elif self.path == "/key":
            self._send(200, "text/plain", self.headers.get("idempotency-key", "<none>"))
        else:
            self._send(500, "text/plain", "database unavailable")

    def do_GET(self) -> None:
        if self.path == "/created":
            self._send(201, "text/plain", "made")
        else:
            self._send(500, "text/plain", "database unavailable")

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as shared:
        yield shared


async def test_http_json_success(http_base: str, client: httpx.AsyncClient) -> None:
    settings = {"url": f"{http_base}/echo", "method": "post", "json": {"a": 1}, "headers": {"x-token": "t"}}
    outcome, ctx = await run_item(make_item("http", settings), client)
    assert outcome.ok, outcome.error
    assert outcome.result == {
        "status": 200,
        "body": {"got": {"a": 1}, "auth": "t"},
        "headers": {"content-type": "application/json"},
    }
    assert ctx.logs[0].message == f"POST {http_base}/echo -> 200"


async def test_http_sends_the_idempotency_key_unless_the_user_set_one(
    http_base: str, client: httpx.AsyncClient
) -> None:
    outcome, _ = await run_item(make_item("http", {"url": f"{http_base}/key", "method": "POST"}), client)
    assert outcome.ok and outcome.result["body"] == "r1:s1:2"
    settings = {"url": f"{http_base}/key", "method": "POST", "headers": {"idempotency-KEY": "mine"}}
    outcome, _ = await run_item(make_item("http", settings), client)
    assert outcome.ok and outcome.result["body"] == "mine"


async def test_http_unexpected_status_fails(http_base: str, client: httpx.AsyncClient) -> None:
    outcome, _ = await run_item(make_item("http", {"url": f"{http_base}/broken"}), client)
    assert not outcome.ok
    assert outcome.error == f"http: GET {http_base}/broken returned HTTP 500, expected any 2xx: database unavailable"


async def test_http_expected_status_list(http_base: str, client: httpx.AsyncClient) -> None:
    outcome, _ = await run_item(
        make_item("http", {"url": f"{http_base}/broken", "expected_status": [500, 503]}), client
    )
    assert outcome.ok and outcome.result["body"] == "database unavailable"
    outcome, _ = await run_item(make_item("http", {"url": f"{http_base}/created", "expected_status": 200}), client)
    assert not outcome.ok and "returned HTTP 201, expected 200" in (outcome.error or "")


async def test_http_connection_refused_fails(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    outcome, _ = await run_item(make_item("http", {"url": f"http://127.0.0.1:{port}/", "timeout_ms": 5_000}), client)
    assert not outcome.ok
    assert outcome.error is not None and outcome.error.startswith(f"http: GET http://127.0.0.1:{port}/ failed: Connect")
