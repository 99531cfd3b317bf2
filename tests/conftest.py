"""Shared test infrastructure: one NATS + PostgreSQL per session, an isolated database per test.

Sources, in order (shared/DESIGN.md section 7):
1. `BATON_TEST_NATS_URL` and `BATON_TEST_DATABASE_URL` (a server-level URL; tests create their own
   databases in it), when both are set;
2. testcontainers, when that package is importable and a Docker engine answers;
3. the embedded binaries from `baton.devstack` on free ports with temporary data directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class InfraEndpoints:
    """Where the session's NATS and PostgreSQL live, plus per-test database management."""

    nats_url: str
    server_url: str  # SQLAlchemy URL of a maintenance database (e.g. `postgres`) on the server
    source: str  # "env", "testcontainers" or "embedded"
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def database_url(self, name: str) -> str:
        """SQLAlchemy (psycopg 3) URL of database `name` on the session's server."""
        from sqlalchemy.engine import make_url

        url = make_url(self.server_url).set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)

    def _admin_conninfo(self) -> str:
        from sqlalchemy.engine import make_url

        # psycopg takes a libpq URI: same URL without SQLAlchemy's "+driver" suffix.
        return make_url(self.server_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (named `t_<hex>` unless given) and return its URL."""
        import psycopg
        from psycopg import sql

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, disconnecting whatever a test left open; failures only warn."""
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(self._admin_conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            warnings.warn(f"could not drop test database {name}: {exc}", stacklevel=2)


def _infra_from_env() -> InfraEndpoints | None:
    nats_url = os.environ.get("BATON_TEST_NATS_URL")
    database_url = os.environ.get("BATON_TEST_DATABASE_URL")
    if not nats_url or not database_url:
        return None
    return InfraEndpoints(nats_url=nats_url, server_url=database_url, source="env")


def _infra_from_testcontainers() -> InfraEndpoints | None:
    """Start NATS and PostgreSQL containers; None when testcontainers or a Docker engine is missing."""
    try:
        import docker
        from testcontainers.core.container import DockerContainer
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        return None
    try:
        docker.from_env().ping()
    except Exception:  # any failure means "no engine answers": fall back to the embedded binaries
        return None

    from baton.devstack.nats_server import port_accepts_connections

    started: list[DockerContainer] = []
    try:
        nats = DockerContainer(os.environ.get("BATON_NATS_IMAGE", "nats:2.10"))
        nats.with_command("-js").with_exposed_ports(4222)
        nats.start()
        started.append(nats)
        postgres = PostgresContainer(os.environ.get("BATON_POSTGRES_IMAGE", "postgres:16"), driver="psycopg")
        postgres.start()
        started.append(postgres)
        nats_host, nats_port = nats.get_container_host_ip(), int(nats.get_exposed_port(4222))
        deadline = time.monotonic() + 30
        while not port_accepts_connections(nats_host, nats_port):
            if time.monotonic() > deadline:
                raise RuntimeError("NATS container did not accept connections within 30s")
            time.sleep(0.1)
    except Exception as exc:  # images missing offline, engine quirks: use the embedded binaries instead
        warnings.warn(f"testcontainers unavailable ({exc}); using embedded binaries", stacklevel=2)
        for container in reversed(started):
            with contextlib.suppress(Exception):
                container.stop()
        return None
    infra = InfraEndpoints(
        nats_url=f"nats://{nats_host}:{nats_port}",
        server_url=postgres.get_connection_url(),
        source="testcontainers",
    )
    infra._cleanups.extend(container.stop for container in reversed(started))
    return infra


def _infra_from_embedded() -> InfraEndpoints:
    from baton.devstack.ports import find_free_port
    from baton.devstack.stack import DevStack

    data_dir = tempfile.mkdtemp(prefix="baton-test-")
    stack = DevStack(
        data_dir=Path(data_dir),
        nats_port=find_free_port(),
        pg_port=find_free_port(),
        fast_unsafe=True,
    )
    try:
        stack.start()
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    infra = InfraEndpoints(nats_url=stack.nats_url, server_url=stack.postgres.url(), source="embedded")
    infra._cleanups.append(stack.stop)
    infra._cleanups.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
    return infra


@pytest.fixture(scope="session")
def infra() -> Iterator[InfraEndpoints]:
    """The session's NATS and PostgreSQL server (see module docstring for where they come from)."""
    endpoints = _infra_from_env() or _infra_from_testcontainers() or _infra_from_embedded()
    try:
        yield endpoints
    finally:
        for cleanup in endpoints._cleanups:
            cleanup()


@pytest.fixture
def database_url(infra: InfraEndpoints) -> Iterator[str]:
    """A fresh, empty database for this test only; dropped afterwards even if connections remain."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = infra.create_database(name)
    try:
        yield url
    finally:
        infra.drop_database(name)


@pytest.fixture
def nats_url(infra: InfraEndpoints) -> str:
    """URL of the session's NATS server; isolate by using `subject_prefix`."""
    return infra.nats_url


@pytest.fixture
def subject_prefix() -> str:
    """A prefix unique to this test, for its subjects and stream names (`bt` + 8 hex chars)."""
    return f"bt{uuid.uuid4().hex[:8]}"
