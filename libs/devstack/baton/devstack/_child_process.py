"""Shared plumbing for the embedded servers: stopping a child with a deadline and reading its log."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last `lines` lines of a log file, or a note if it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def stop_child(process: subprocess.Popen[bytes], first_signal: signal.Signals, deadline: float) -> int:
    """Send `first_signal`, wait up to `deadline` seconds, then SIGKILL; return the exit code."""
    if process.poll() is not None:
        return process.returncode
    try:
        process.send_signal(first_signal)
        return process.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        # The server ignored the polite request (stuck I/O, long checkpoint): losing it is better
        # than hanging the caller's shutdown forever.
        process.kill()
        return process.wait()
