"""Fault test: SIGKILL the scheduler while it fires 100 timers; after a restart all fire, none twice."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import text

from baton.events.bus import ensure_streams
from baton.events.db import make_engine
from baton.events.subjects import Subjects
from baton.scheduler.timers import CONSUMER
from tests.e2e.conftest import REPO, Services
from tests.helpers import wait_for
from tests.timer_helpers import due_in, fired_ids, fired_in_stream, set_timer, stored_count

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

TIMERS = 100


@pytest.fixture
def scheduler_processes(database_url: str, nats_url: str, subject_prefix: str, tmp_path: Path) -> Iterator[Services]:
    """Scheduler processes (``python -m baton.scheduler.main``) on a fresh database and prefix."""
    env = {
        **os.environ,
        "BATON_DATABASE_URL": database_url,
        "BATON_NATS_URL": nats_url,
        "BATON_SUBJECT_PREFIX": subject_prefix,
        "BATON_TIMER_POLL_SECONDS": "0.5",
        "BATON_TIMER_ACK_WAIT_SECONDS": "3",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    services = Services(env=env, api_url="", log_dir=tmp_path)
    try:
        yield services
    finally:
        services.stop_all()


async def test_scheduler_killed_mid_firing_fires_every_timer_exactly_once_after_restart(
    scheduler_processes: Services, nats_url: str, subject_prefix: str, database_url: str
) -> None:
    subjects = Subjects(subject_prefix)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        scheduler_processes.start("scheduler", "baton.scheduler.main")

        async def consuming() -> bool:
            try:
                await js.consumer_info(subjects.timers_stream, CONSUMER)
                return True
            except NotFoundError:
                return False

        await wait_for(consuming, timeout=60, interval=0.1, message="scheduler consumer created")

        # Due over the next ~3 s, so the kill lands while timers are still being fired.
        for i in range(TIMERS):
            await set_timer(js, subjects, f"fault-{i:03d}", due_in(0.5 + i * 0.03))

        async def fired_so_far() -> int:
            return await stored_count(js, subjects.timers_stream, subjects.timer_fired)

        async def fired_at_least(n: int) -> bool:
            return await fired_so_far() >= n

        await wait_for(lambda: fired_at_least(20), timeout=30, message="some timers fired")
        scheduler_processes.kill("scheduler")
        before_restart = await fired_so_far()
        print(f"fired before the kill: {before_restart}")

        scheduler_processes.start("scheduler-2", "baton.scheduler.main")
        try:
            await wait_for(
                lambda: fired_at_least(TIMERS), timeout=60, interval=0.1, message="all timers fired after the restart"
            )
        except AssertionError:
            raise AssertionError(scheduler_processes.logs()) from None

        fired = await fired_in_stream(js, subjects)
        stored = await fired_so_far()
        engine = make_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                armed = await conn.execute(
                    text("SELECT count(*) FROM scheduler_timers WHERE fired_at IS NULL AND NOT canceled")
                )
                still_armed = armed.scalar_one()
        finally:
            await engine.dispose()
    finally:
        await nc.close()

    counts = Counter(fired_ids(fired))
    assert before_restart < TIMERS, "the kill came after every timer had fired: nothing was tested"
    assert set(counts) == {f"fault-{i:03d}" for i in range(TIMERS)}
    assert [t for t, n in counts.items() if n > 1] == []
    # Stored messages, not deliveries: a refire after the kill could only be absorbed by
    # JetStream's de-duplication on the same Nats-Msg-Id, never stored twice.
    assert stored == TIMERS
    assert still_armed == 0
    assert all(f.fired_at >= f.due_at for f in fired)

