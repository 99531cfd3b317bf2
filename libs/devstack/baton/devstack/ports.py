"""TCP port helpers: pick a free port, or fail early and clearly when a configured one is taken."""

from __future__ import annotations

import socket


class PortInUseError(Exception):
    """A configured TCP port is already bound by another process."""

    def __init__(self, host: str, port: int, setting_name: str) -> None:
        super().__init__(
            f"port {port} on {host} is already in use; set {setting_name} to another port "
            f"(or stop the process listening on it)"
        )
        self.host = host
        self.port = port
        self.setting_name = setting_name


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a port the kernel reports free on `host` right now (racy by nature: use it promptly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(host: str, port: int, setting_name: str) -> None:
    """Raise PortInUseError naming `setting_name` if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so that sockets lingering in TIME_WAIT from a previous run do not count as
        # "in use": the servers we start set it too, so only a live listener makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(host, port, setting_name) from exc
