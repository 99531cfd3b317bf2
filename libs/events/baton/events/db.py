"""Database engine construction: one place that turns a URL into an async SQLAlchemy engine."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def normalise_database_url(url: str) -> str:
    """Accept ``postgres://``, ``postgresql://`` or ``postgresql+psycopg://``; return the psycopg 3 form."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg_async"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}; use postgresql://")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The plain ``postgresql://`` form that psycopg and libpq tools accept."""
    parsed = make_url(normalise_database_url(url)).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    """An async engine on psycopg 3 with a bounded pool and liveness checks."""
    return create_async_engine(
        normalise_database_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )
