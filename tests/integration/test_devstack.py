"""The embedded stack and the shared fixtures give a real JetStream and a real PostgreSQL."""

from __future__ import annotations

import signal
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import pytest
from sqlalchemy import create_engine, text

from baton.devstack.ports import PortInUseError, ensure_port_free, find_free_port
from baton.devstack.postgres_server import EmbeddedPostgres, PostgresServerError

if TYPE_CHECKING:
    from tests.conftest import InfraEndpoints

pytestmark = pytest.mark.integration


async def test_nats_fixture_has_jetstream(nats_url: str, subject_prefix: str) -> None:
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await js.add_stream(name=f"{subject_prefix}_S", subjects=[f"{subject_prefix}.>"])
        ack = await js.publish(f"{subject_prefix}.hello", b"hi")
        assert ack.stream == f"{subject_prefix}_S"
        assert ack.seq == 1
        await js.delete_stream(f"{subject_prefix}_S")
    finally:
        await client.close()


def test_database_fixture_is_a_working_postgres(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
            assert conn.execute(text("select current_database()")).scalar_one() == database_url.rsplit("/", 1)[1]
    finally:
        engine.dispose()


def test_each_test_gets_its_own_database(database_url: str, infra: InfraEndpoints) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("create table only_here (x int)"))
    engine.dispose()
    sibling_name = f"t_{uuid.uuid4().hex[:12]}"
    sibling = create_engine(infra.create_database(sibling_name))
    try:
        with sibling.connect() as conn:
            assert conn.execute(text("select to_regclass('only_here')")).scalar_one() is None
    finally:
        sibling.dispose()
        infra.drop_database(sibling_name)


def test_embedded_postgres_restarts_after_sigkill(tmp_path: Path) -> None:
    postgres_dir = tmp_path / "pg"
    # Durable settings on purpose: with synchronous_commit=off a SIGKILL may lose the last commit.
    server = EmbeddedPostgres(postgres_dir, find_free_port())
    server.start()
    try:
        server.create_database("kept")
        engine = create_engine(server.url("kept"))
        with engine.begin() as conn:
            conn.execute(text("create table survivor (x int)"))
            conn.execute(text("insert into survivor values (42)"))
        engine.dispose()
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        assert (postgres_dir / "postmaster.pid").exists()  # stale: the restart must cope with it
    finally:
        server.stop()

    restarted = EmbeddedPostgres(postgres_dir, server.port)
    restarted.start()
    try:
        restarted.create_database("kept")  # idempotent
        engine = create_engine(restarted.url("kept"))
        with engine.connect() as conn:
            assert conn.execute(text("select x from survivor")).scalar_one() == 42
        engine.dispose()
    finally:
        restarted.stop()


def test_second_server_on_a_running_data_dir_fails_fast(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", find_free_port(), fast_unsafe=True)
    server.start()
    try:
        with pytest.raises(PostgresServerError, match="already running"):
            EmbeddedPostgres(tmp_path / "pg", find_free_port(), fast_unsafe=True).start(timeout=5)
    finally:
        server.stop()


def test_ensure_port_free_names_the_setting() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(PortInUseError) as excinfo:
            ensure_port_free("127.0.0.1", port, "BATON_NATS_PORT")
    assert str(port) in str(excinfo.value)
    assert "BATON_NATS_PORT" in str(excinfo.value)


def test_ensure_port_free_accepts_a_free_port() -> None:
    ensure_port_free("127.0.0.1", find_free_port(), "BATON_PG_PORT")
