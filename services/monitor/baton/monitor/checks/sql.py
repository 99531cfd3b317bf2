"""The ``sql`` check: one query through SQLAlchemy on a named or inline connection.

Queries run on a synchronous engine in a worker thread, so any SQLAlchemy dialect with
an installed driver works; engines are pooled per URL and disposed on shutdown.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import uuid
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from baton.events.monitor import SqlSettings
from baton.monitor.checks import CheckFailed


def resolve_connection(reference: str, named: dict[str, str]) -> str:
    """A configured connection's URL by name, or the reference itself when it is a URL."""
    if reference in named:
        return named[reference]
    if "://" in reference:
        return reference
    known = ", ".join(sorted(named)) or "none configured"
    raise CheckFailed(f"unknown connection {reference!r} (named connections: {known}; or give a SQLAlchemy URL)")


def _driver_url(url: str) -> str:
    """PostgreSQL URLs go through psycopg 3 (the driver Baton installs); others are used as given."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class SqlChecker:
    """Runs sql monitor queries; one pooled engine per connection URL."""

    def __init__(self, named_connections: dict[str, str]) -> None:
        self._named = named_connections
        self._engines: dict[str, Engine] = {}

    def _engine(self, url: str) -> Engine:
        engine = self._engines.get(url)
        if engine is None:
            try:
                engine = create_engine(_driver_url(url), pool_size=2, max_overflow=2, pool_pre_ping=True)
            except (ArgumentError, SQLAlchemyError, ImportError, ValueError) as exc:
                raise CheckFailed(f"cannot use connection: {type(exc).__name__}: {exc}") from exc
            self._engines[url] = engine
        return engine

    def _run(self, url: str, settings: SqlSettings) -> dict[str, Any]:
        try:
            with self._engine(url).connect() as conn:
                result = conn.execute(text(settings.query))
                if not result.returns_rows:
                    raise CheckFailed("the query returned no rows (a monitor query must SELECT)")
                columns = list(result.keys())
                rows = [dict(zip(columns, (_jsonable(v) for v in row), strict=True))
                        for row in result.fetchmany(settings.max_rows)]
                conn.rollback()  # a monitor only reads
        except SQLAlchemyError as exc:
            raise CheckFailed(f"query failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        value = rows[0][columns[0]] if rows and columns else None
        return {"value": value, "rows": rows, "row_count": len(rows), "columns": columns}

    async def observe(self, connection: str, settings: SqlSettings) -> dict[str, Any]:
        """Run the query with the monitor's timeout; raises CheckFailed on any database error."""
        url = resolve_connection(connection, self._named)
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._run, url, settings), settings.timeout_ms / 1000)
        except TimeoutError as exc:
            raise CheckFailed(f"query timed out after {settings.timeout_ms} ms") from exc

    def close(self) -> None:
        """Dispose every pooled engine."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
