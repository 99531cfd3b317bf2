"""LISTEN for the store's commit notifications and turn them into an asyncio wake-up.

A notification only says "something committed": readers still read by position,
so a missed notification costs latency (the idle poll catches up), never events.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from baton.events.db import libpq_url
from baton.events.waiting import wait_any

log = logging.getLogger(__name__)


async def listen_for_commits(
    database_url: str, channel: str, wakeup: asyncio.Event, stop: asyncio.Event
) -> None:
    """Set ``wakeup`` on every NOTIFY on ``channel``; reconnect with backoff until ``stop``."""
    backoff = 0.2
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True) as conn:
                await conn.execute(f'LISTEN "{channel}"')
                backoff = 0.2
                wakeup.set()  # catch up on anything committed while we were not listening
                notifies = conn.notifies()
                stop_task = asyncio.ensure_future(stop.wait())
                try:
                    while not stop.is_set():
                        next_notify = asyncio.ensure_future(anext(notifies))
                        done, _ = await asyncio.wait({next_notify, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                        if next_notify in done:
                            next_notify.result()
                            wakeup.set()
                        else:
                            next_notify.cancel()
                finally:
                    stop_task.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: log it and listen again; readers still poll meanwhile
            log.warning("commit listener failed (%s: %s); reconnecting in %.1fs", type(exc).__name__, exc, backoff)
            await wait_any(stop, None, backoff)
            backoff = min(backoff * 2, 5.0)
