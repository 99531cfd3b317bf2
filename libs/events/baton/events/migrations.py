"""Versioned, idempotent schema migrations, applied by ``baton migrate`` (and by ``baton up``).

Each migration runs once, in its own transaction, recorded in ``schema_migrations``.
A PostgreSQL advisory lock makes concurrent callers (several services starting at
once) wait for each other instead of racing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x0BA7_0001


@dataclass(frozen=True)
class Migration:
    """One schema step: a version number, a name and its SQL."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "event store",
        """
        CREATE TABLE events (
            position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id        uuid        NOT NULL UNIQUE,
            stream_id       text        NOT NULL,
            stream_type     text        NOT NULL,
            stream_version  integer     NOT NULL CHECK (stream_version >= 1),
            tenant          text        NOT NULL,
            type            text        NOT NULL,
            schema_version  integer     NOT NULL,
            data            jsonb       NOT NULL,
            metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
            recorded_at     timestamptz NOT NULL,
            committed_at    timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
        );
        CREATE INDEX events_tenant_type_idx ON events (tenant, type, position);
        -- The runner's recovery scans run_created events past a low-water mark.
        CREATE INDEX events_type_position_idx ON events (type, position);
        CREATE TABLE checkpoints (
            name        text PRIMARY KEY,
            position    bigint NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        2,
        "projections",
        """
        CREATE SCHEMA proj;
        CREATE TABLE proj.projection_checkpoint (
            name        text PRIMARY KEY,
            position    bigint NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE proj.runs (
            run_id            text PRIMARY KEY,
            tenant            text NOT NULL,
            pipeline          text NOT NULL,
            pipeline_version  integer NOT NULL,
            status            text NOT NULL,
            trigger_id        text NOT NULL,
            created_at        timestamptz NOT NULL,
            updated_at        timestamptz NOT NULL,
            finished_at       timestamptz,
            last_position     bigint NOT NULL,
            doc               jsonb NOT NULL
        );
        CREATE INDEX runs_tenant_created_idx ON proj.runs (tenant, created_at DESC, run_id DESC);
        CREATE INDEX runs_tenant_pipeline_idx ON proj.runs (tenant, pipeline, created_at DESC, run_id DESC);
        CREATE INDEX runs_tenant_status_idx ON proj.runs (tenant, status, created_at DESC, run_id DESC);
        CREATE INDEX runs_trigger_idx ON proj.runs (trigger_id);
        CREATE TABLE proj.step_runs (
            run_id           text NOT NULL,
            step             text NOT NULL,
            tenant           text NOT NULL,
            position_in_run  integer NOT NULL,
            status           text NOT NULL,
            attempt          integer NOT NULL,
            doc              jsonb NOT NULL,
            PRIMARY KEY (run_id, step)
        );
        CREATE TABLE proj.timeline (
            run_id  text NOT NULL,
            seq     integer NOT NULL,
            tenant  text NOT NULL,
            at      timestamptz NOT NULL,
            kind    text NOT NULL,
            doc     jsonb NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE proj.triggers (
            trigger_id   text PRIMARY KEY,
            tenant       text,
            type         text,
            status       text NOT NULL,
            received_at  timestamptz NOT NULL,
            doc          jsonb NOT NULL
        );
        CREATE INDEX triggers_tenant_idx ON proj.triggers (tenant, received_at DESC);
        CREATE TABLE proj.pipelines (
            tenant        text NOT NULL,
            name          text NOT NULL,
            version       integer NOT NULL,
            enabled       boolean NOT NULL,
            trigger_type  text NOT NULL,
            updated_at    timestamptz NOT NULL,
            doc           jsonb NOT NULL,
            PRIMARY KEY (tenant, name)
        );
        """,
    ),
    Migration(
        3,
        "run semantics read models: slices, replays, dead letters, operator state",
        """
        ALTER TABLE proj.runs ADD COLUMN IF NOT EXISTS slice_key text;
        ALTER TABLE proj.runs ADD COLUMN IF NOT EXISTS is_replay boolean NOT NULL DEFAULT false;
        CREATE INDEX IF NOT EXISTS runs_tenant_slice_idx
            ON proj.runs (tenant, slice_key, created_at DESC, run_id DESC) WHERE slice_key IS NOT NULL;
        CREATE INDEX IF NOT EXISTS runs_tenant_replay_idx
            ON proj.runs (tenant, is_replay, created_at DESC, run_id DESC);
        ALTER TABLE proj.pipelines ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'active';
        CREATE TABLE IF NOT EXISTS proj.dead_letters (
            dead_letter_id    text PRIMARY KEY,
            tenant            text NOT NULL,
            pipeline          text NOT NULL,
            run_id            text NOT NULL,
            step              text NOT NULL,
            reason            text NOT NULL,
            last_error        text NOT NULL,
            attempts          integer NOT NULL,
            dead_lettered_at  timestamptz NOT NULL,
            redriven_at       timestamptz,
            redriven_by       text,
            doc               jsonb NOT NULL
        );
        CREATE INDEX IF NOT EXISTS dead_letters_tenant_idx
            ON proj.dead_letters (tenant, dead_lettered_at DESC, dead_letter_id DESC);
        CREATE INDEX IF NOT EXISTS dead_letters_open_idx
            ON proj.dead_letters (tenant, dead_lettered_at DESC) WHERE redriven_at IS NULL;
        CREATE INDEX IF NOT EXISTS dead_letters_run_idx ON proj.dead_letters (run_id);
        """,
    ),
    Migration(
        4,
        "scheduler timers",
        """
        -- Durable timers (baton.scheduler.timers). A row is armed (fired_at IS NULL AND NOT
        -- canceled), fired, or canceled. A cancel that arrives before its set leaves a
        -- tombstone (canceled, no due_at) so the late set cannot arm it; fired rows are kept
        -- (not deleted) so a late duplicate set cannot arm the timer again. Both are purged
        -- after a retention longer than the TIMERS stream keeps its messages.
        CREATE TABLE scheduler_timers (
            timer_id    text PRIMARY KEY,
            tenant      text,
            due_at      timestamptz,
            payload     jsonb,
            created_at  timestamptz NOT NULL DEFAULT now(),
            canceled    boolean NOT NULL DEFAULT false,
            fired_at    timestamptz,
            CONSTRAINT scheduler_timers_armed_has_due CHECK (canceled OR due_at IS NOT NULL)
        );
        CREATE INDEX scheduler_timers_due_idx ON scheduler_timers (due_at)
            WHERE fired_at IS NULL AND NOT canceled;
        CREATE INDEX scheduler_timers_done_idx ON scheduler_timers ((coalesce(fired_at, created_at)))
            WHERE fired_at IS NOT NULL OR canceled;
        """,
    ),
    Migration(
        5,
        "monitor projections",
        """
        CREATE TABLE proj.monitors (
            tenant      text NOT NULL,
            name        text NOT NULL,
            version     integer NOT NULL,
            type        text,
            pipeline    text,
            enabled     boolean NOT NULL,
            deleted     boolean NOT NULL,
            updated_at  timestamptz NOT NULL,
            doc         jsonb NOT NULL,
            PRIMARY KEY (tenant, name)
        );
        -- Newest first per monitor is a backward scan of the primary key.
        CREATE TABLE proj.monitor_ticks (
            tenant    text NOT NULL,
            name      text NOT NULL,
            seq       integer NOT NULL,
            at        timestamptz NOT NULL,
            decision  text NOT NULL,
            doc       jsonb NOT NULL,
            PRIMARY KEY (tenant, name, seq)
        );
        """,
    ),
    Migration(
        6,
        "schedule projections",
        """
        CREATE TABLE IF NOT EXISTS proj.schedules (
            tenant      text NOT NULL,
            pipeline    text NOT NULL,
            updated_at  timestamptz NOT NULL,
            doc         jsonb NOT NULL,
            PRIMARY KEY (tenant, pipeline)
        );
        CREATE TABLE IF NOT EXISTS proj.schedule_history (
            tenant    text NOT NULL,
            pipeline  text NOT NULL,
            position  bigint NOT NULL,
            at        timestamptz NOT NULL,
            kind      text NOT NULL,
            doc       jsonb NOT NULL,
            PRIMARY KEY (tenant, pipeline, position)
        );
        """,
    ),
)


async def migrate(engine: AsyncEngine) -> list[int]:
    """Apply every pending migration; returns the versions applied by this call."""
    applied: list[int] = []
    async with engine.connect() as conn:
        # Session-level lock held across the per-migration transactions below.
        await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        try:
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            await conn.commit()
            done = {row[0] for row in await conn.execute(text("SELECT version FROM schema_migrations"))}
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                log.info("applying migration %04d %s", migration.version, migration.name)
                await conn.exec_driver_sql(migration.sql)
                await conn.execute(
                    text("INSERT INTO schema_migrations (version, name) VALUES (:v, :n)"),
                    {"v": migration.version, "n": migration.name},
                )
                await conn.commit()
                applied.append(migration.version)
        finally:
            await conn.rollback()
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            await conn.commit()
    return applied
