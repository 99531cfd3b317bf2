"""A small process supervisor: prefixed output, restart with backoff, ordered shutdown.

Generic on purpose: it runs named argv lists and knows nothing about what they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

_COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[91m", "\033[96m", "\033[93m")
_RESET = "\033[0m"
# asyncio's default 64KiB line limit would abort on one long log line (a big JSON dump).
_LINE_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class RestartPolicy:
    """Capped exponential backoff between restarts of a child that exits on its own."""

    initial_delay: float = 0.5
    max_delay: float = 30.0
    # A child that stayed up this long is considered healthy again: the next crash starts the
    # backoff from `initial_delay` instead of punishing it for a crash an hour ago.
    stable_after: float = 10.0

    def delay(self, consecutive_failures: int) -> float:
        """Delay before the restart following `consecutive_failures` (>= 1) quick exits."""
        return float(min(self.max_delay, self.initial_delay * 2 ** (consecutive_failures - 1)))


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None
    colour: str
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0


class Supervisor:
    """Runs named child processes until asked to stop, then stops them in reverse start order."""

    def __init__(
        self,
        output: TextIO | None = None,
        restart_policy: RestartPolicy | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self._output = output if output is not None else sys.stdout
        self._policy = restart_policy or RestartPolicy()
        self._stop_timeout = stop_timeout
        self._children: list[_Child] = []
        self._colours = itertools.cycle(_COLOURS)
        self._use_colour = self._output.isatty()
        self._stop_event: asyncio.Event | None = None
        self._prefix_width = len("supervisor")

    def add(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        """Register a child; `env` (if given) replaces the inherited environment entirely."""
        if not argv:
            raise ValueError(f"child {name!r} needs a non-empty argv")
        if any(child.name == name for child in self._children):
            raise ValueError(f"a child named {name!r} is already registered")
        child_env = dict(env) if env is not None else None
        self._children.append(_Child(name, list(argv), child_env, next(self._colours)))
        self._prefix_width = max(self._prefix_width, len(name))

    def pid_of(self, name: str) -> int | None:
        """PID of the currently running process of child `name`, if any."""
        for child in self._children:
            if child.name == name and child.process is not None and child.process.returncode is None:
                return child.process.pid
        return None

    def restarts_of(self, name: str) -> int:
        """How many times child `name` has been restarted after exiting on its own."""
        return next(child.restarts for child in self._children if child.name == name)

    def stop(self) -> None:
        """Ask a running `run()` to shut everything down (safe to call from signal handlers)."""
        if self._stop_event is not None:
            self._stop_event.set()

    async def run(self, stop_event: asyncio.Event, handle_signals: bool = True) -> None:
        """Start every child, keep each alive until `stop_event` is set (or SIGINT/SIGTERM), then stop all."""
        self._stop_event = stop_event
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        # Signal handlers can only be installed from the main thread; embedded uses (tests) pass
        # handle_signals=False and drive shutdown through the event.
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop_event.set)
                installed.append(signum)
        tasks: list[asyncio.Task[None]] = []
        for child in self._children:
            child.stop_requested = asyncio.Event()  # fresh per run: run() may be called again
        try:
            for child in self._children:
                tasks.append(asyncio.create_task(self._keep_alive(child), name=f"supervise-{child.name}"))
            await stop_event.wait()
            self._say(None, "shutting down")
        finally:
            # Reverse start order: what started last (typically depends on what started first)
            # stops first, so e.g. services leave before the infrastructure they talk to.
            for child, task in reversed(list(zip(self._children, tasks, strict=False))):
                child.stop_requested.set()
                await asyncio.gather(task, return_exceptions=True)
            for signum in installed:
                loop.remove_signal_handler(signum)
            self._stop_event = None

    async def _keep_alive(self, child: _Child) -> None:
        consecutive_failures = 0
        while not child.stop_requested.is_set():
            started = time.monotonic()
            exit_code = await self._run_once(child)
            if child.stop_requested.is_set():
                return
            if time.monotonic() - started >= self._policy.stable_after:
                consecutive_failures = 0
            consecutive_failures += 1
            delay = self._policy.delay(consecutive_failures)
            self._say(child, f"exited unexpectedly with code {exit_code}; restarting in {delay:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.stop_requested.wait(), timeout=delay)
            if not child.stop_requested.is_set():
                child.restarts += 1
                self._say(child, f"restart #{child.restarts}")

    async def _run_once(self, child: _Child) -> int | None:
        """Run the child once until it exits or a stop is requested; return its exit code."""
        try:
            process = await asyncio.create_subprocess_exec(
                *child.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=child.env,
                limit=_LINE_LIMIT,
                # Own process group: a terminal Ctrl-C reaches only us, so we decide the order in
                # which children stop, and killpg also reaches their own subprocesses.
                start_new_session=True,
            )
        except OSError as exc:
            self._say(child, f"failed to start {child.argv[0]!r}: {exc}")
            return None
        child.process = process
        self._say(child, f"started (pid {process.pid})")
        pump = asyncio.create_task(self._pump_output(child, process))
        stop_wait = asyncio.create_task(child.stop_requested.wait())
        exit_wait = asyncio.create_task(process.wait())
        await asyncio.wait({stop_wait, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not exit_wait.done():
            await self._terminate(child, process)
        exit_code = await exit_wait
        # Drain what the child printed before exiting; bounded, in case a grandchild holds the pipe.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump), timeout=2.0)
        pump.cancel()
        if child.stop_requested.is_set():
            self._say(child, f"stopped (exit code {exit_code})")
        return exit_code

    async def _terminate(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        self._signal_group(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self._stop_timeout)
        except TimeoutError:
            self._say(child, f"did not stop within {self._stop_timeout:.0f}s of SIGTERM; sending SIGKILL")
            self._signal_group(process, signal.SIGKILL)
            await process.wait()

    @staticmethod
    def _signal_group(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
        # Suppressed: the group is already gone, nothing left to signal.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    async def _pump_output(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        stream = process.stdout
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self._emit(child, exc.partial)
                return
            except asyncio.LimitOverrunError as exc:
                # Over-long line: print what is buffered as its own line rather than dying.
                raw = await stream.readexactly(exc.consumed)
            self._emit(child, raw)

    def _emit(self, child: _Child, raw: bytes) -> None:
        self._write(child.name, child.colour, raw.decode(errors="replace").rstrip("\r\n"))

    def _say(self, child: _Child | None, message: str) -> None:
        if child is None:
            self._write("supervisor", "\033[1m", message)
        else:
            self._write("supervisor", "\033[1m", f"{child.name}: {message}")

    def _write(self, name: str, colour: str, line: str) -> None:
        prefix = f"{name:<{self._prefix_width}} | "
        if self._use_colour:
            prefix = f"{colour}{prefix}{_RESET}"
        self._output.write(prefix + line + "\n")
        self._output.flush()
