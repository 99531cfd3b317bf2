"""Named position checkpoints: read (optionally row-locked) and advanced inside the caller's transaction.

Holding the row lock for the whole transaction is what lets two replicas of a reader
(relay, projector) queue behind each other instead of processing the same batch.
"""

from __future__ import annotations

from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection


async def read_checkpoint(conn: AsyncConnection, table: Table, name: str, lock: bool = False) -> int:
    """The position stored under ``name`` (created at 0 on first use); ``lock`` holds its row."""
    await conn.execute(
        pg_insert(table).values(name=name, position=0, updated_at=func.now()).on_conflict_do_nothing()
    )
    query = select(table.c.position).where(table.c.name == name)
    if lock:
        query = query.with_for_update()
    return int((await conn.execute(query)).scalar_one())


async def write_checkpoint(conn: AsyncConnection, table: Table, name: str, position: int) -> None:
    """Store ``position`` under ``name``; commits with the caller's transaction."""
    await conn.execute(table.update().where(table.c.name == name).values(position=position, updated_at=func.now()))
