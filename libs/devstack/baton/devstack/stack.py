"""The embedded infrastructure Baton needs: NATS with JetStream, and PostgreSQL with a `baton` database."""

from __future__ import annotations

from pathlib import Path

from baton.devstack.nats_server import EmbeddedNats
from baton.devstack.ports import ensure_port_free
from baton.devstack.postgres_server import EmbeddedPostgres

DATABASE_NAME = "baton"
NATS_PORT_SETTING = "BATON_NATS_PORT"
PG_PORT_SETTING = "BATON_PG_PORT"


class DevStack:
    """NATS under `data_dir/nats` and PostgreSQL under `data_dir/postgres`, started and stopped together."""

    def __init__(
        self,
        data_dir: Path,
        nats_port: int,
        pg_port: int,
        fast_unsafe: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.nats = EmbeddedNats(self.data_dir / "nats", nats_port, host=host)
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres", pg_port, host=host, fast_unsafe=fast_unsafe)

    @property
    def nats_url(self) -> str:
        """Client URL of the NATS server."""
        return self.nats.url

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of the `baton` database."""
        return self.postgres.url(DATABASE_NAME)

    def start(self) -> None:
        """Check both ports, start NATS then PostgreSQL, and create the `baton` database."""
        # Both checks before anything starts: a half-started stack is worse than a clear error.
        ensure_port_free(self.host, self.nats.port, NATS_PORT_SETTING)
        ensure_port_free(self.host, self.postgres.port, PG_PORT_SETTING)
        self.nats.start()
        try:
            self.postgres.start()
            self.postgres.create_database(DATABASE_NAME)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop PostgreSQL and NATS (reverse start order); safe to call more than once."""
        try:
            self.postgres.stop()
        finally:
            self.nats.stop()
