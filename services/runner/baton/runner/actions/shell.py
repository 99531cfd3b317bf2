"""The `shell` action: run a command in its own process group with bounded output capture.

Each output line is logged as it arrives (stdout at info, stderr at warning), so the worker's
live log batches show a long command's progress; the step's bounded log keeps its first and
latest lines. The result holds the last OUTPUT_TAIL_BYTES of each stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

import httpx
from pydantic import ValidationError

from baton.events.messages import MAX_LOG_LINE_CHARS, WorkItem
from baton.events.pipeline import ShellSettings

from .context import ActionFailed, StepContext

OUTPUT_TAIL_BYTES = 64 * 1024
"""How much of the end of stdout and of stderr is kept; earlier output is dropped and counted."""
LINE_BUFFER_BYTES = MAX_LOG_LINE_CHARS * 4
"""Bytes of one unfinished output line held at most (a UTF-8 character is at most 4 bytes)."""
MARKER_RESERVE = 40
ERROR_STDERR_CHARS = 2_000
READ_CHUNK = 64 * 1024


class OutputTail:
    """The last `limit` bytes of a stream, plus how many bytes came before them."""

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        """Append `chunk`, discarding the oldest bytes beyond the limit."""
        self.buffer.extend(chunk)
        excess = len(self.buffer) - self.limit
        if excess > 0:
            del self.buffer[:excess]
            self.dropped += excess

    def text(self) -> str:
        """The kept bytes as text, prefixed with a marker when earlier output was dropped."""
        # A cut can land inside a multi-byte character: "replace" keeps the rest readable.
        body = self.buffer.decode("utf-8", errors="replace")
        if self.dropped:
            return f"…[truncated {self.dropped} bytes]\n{body}"
        return body


class LineLogger:
    """Logs each line of a stream as soon as it is complete, so a long command's output shows while it runs."""

    def __init__(self, ctx: StepContext, level: str) -> None:
        self.ctx = ctx
        self.level = level
        self._partial = bytearray()
        self._overflow = 0

    def feed(self, chunk: bytes) -> None:
        """Add output; log the lines it completes; hold at most LINE_BUFFER_BYTES of an unfinished one."""
        self._partial.extend(chunk)
        while (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[:end])
            del self._partial[: end + 1]
            self._emit(line)
        excess = len(self._partial) - LINE_BUFFER_BYTES
        if excess > 0:
            del self._partial[LINE_BUFFER_BYTES:]
            self._overflow += excess

    def close(self) -> None:
        """Log the last line when the output did not end with a newline."""
        if self._partial or self._overflow:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").removesuffix("\r")
        overflow, self._overflow = self._overflow, 0
        if overflow:
            kept = text[: MAX_LOG_LINE_CHARS - MARKER_RESERVE]  # room for the marker within the line limit
            dropped = len(raw) - len(kept.encode()) + overflow
            text = f"{kept}…[truncated {dropped} bytes]"
        self.ctx.log(self.level, text)


async def _drain_stream(stream: asyncio.StreamReader | None, tail: OutputTail, lines: LineLogger) -> None:
    if stream is None:
        return
    while chunk := await stream.read(READ_CHUNK):
        tail.feed(chunk)
        lines.feed(chunk)
    lines.close()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # The child was started in a new session, so its pid is also its process-group id: killing
    # the group takes down whatever the shell spawned, not just the shell.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def attempt_environment(ctx: StepContext) -> dict[str, str]:
    """`BATON_*` variables describing the attempt, so a script can make its side effects idempotent."""
    env = {
        "BATON_TENANT": str(ctx.run.get("tenant", "")),
        "BATON_PIPELINE": str(ctx.run.get("pipeline", "")),
        "BATON_RUN_ID": str(ctx.run.get("id", "")),
        "BATON_STEP": ctx.step,
        "BATON_ATTEMPT": str(ctx.attempt),
        "BATON_IDEMPOTENCY_KEY": ctx.idempotency_key,
    }
    if ctx.partition_key is not None:
        env["BATON_PARTITION_KEY"] = ctx.partition_key
    if ctx.is_replay:
        env["BATON_IS_REPLAY"] = "1"
    return env


async def _spawn(settings: ShellSettings, ctx: StepContext) -> asyncio.subprocess.Process:
    argv = ["/bin/sh", "-c", settings.command] if isinstance(settings.command, str) else settings.command
    if not argv:
        raise ActionFailed("shell: command is an empty list")
    # The attempt's variables come last: they describe this attempt and cannot be overridden
    # (a partition key inherited from the worker's own environment would be a lie).
    inherited = {k: v for k, v in os.environ.items() if k not in ("BATON_PARTITION_KEY", "BATON_IS_REPLAY")}
    env = {**inherited, **settings.env, **attempt_environment(ctx)}
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=settings.cwd,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        missing = exc.filename or argv[0]
        raise ActionFailed(f"shell: cannot start {argv[0]!r}: no such file or directory ({missing})") from exc
    except OSError as exc:
        raise ActionFailed(f"shell: cannot start {argv[0]!r}: {exc}") from exc


async def run_command(settings: ShellSettings, ctx: StepContext) -> dict[str, Any]:
    """Run the command of `settings`; return exit code and output tails, or raise ActionFailed."""
    process = await _spawn(settings, ctx)
    stdout, stderr = OutputTail(), OutputTail()
    readers = asyncio.gather(
        _drain_stream(process.stdout, stdout, LineLogger(ctx, "info")),
        _drain_stream(process.stderr, stderr, LineLogger(ctx, "warning")),
    )
    timeout_s = settings.timeout_ms / 1000
    timed_out = False
    try:
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
        # The step ends when its process ends. Anything it left running in its group (a
        # background job still holding the pipes open) is killed so the readers reach EOF
        # and nothing outlives the step on this worker.
        _kill_group(process)
        await readers
    finally:
        # Reached with the process still alive only when this task is cancelled (worker stop).
        if process.returncode is None:
            _kill_group(process)
        if not readers.done():
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await readers
    out_text, err_text = stdout.text(), stderr.text()
    if timed_out:
        raise ActionFailed(f"shell: timed out after {settings.timeout_ms} ms (process group killed)")
    exit_code = process.returncode
    if exit_code is None:  # pragma: no cover - wait() returned, so the code is known
        raise ActionFailed("shell: process ended without an exit status")
    if exit_code != 0:
        how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
        tail = err_text.strip()[-ERROR_STDERR_CHARS:]
        raise ActionFailed(f"shell: command {how}" + (f"; stderr: {tail}" if tail else ""))
    result: dict[str, Any] = {"exit_code": exit_code, "stdout": out_text.strip(), "stderr": err_text}
    if not stdout.dropped and result["stdout"]:
        with contextlib.suppress(ValueError):
            result["json"] = json.loads(result["stdout"])
    return result


async def execute(item: WorkItem, ctx: StepContext, http_client: httpx.AsyncClient) -> Any:
    """Action handler for `uses: shell`."""
    try:
        settings = ShellSettings.model_validate(ctx.settings)
    except ValidationError as exc:
        raise ActionFailed(f"shell: invalid settings: {exc}") from exc
    return await run_command(settings, ctx)
