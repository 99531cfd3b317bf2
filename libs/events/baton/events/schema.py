"""SQLAlchemy Core table definitions (the DDL itself lives in versioned migrations).

Projection tables live in their own PostgreSQL schema (``proj``) so a rebuild can
fill a twin schema beside the live one and swap it in with two renames.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

PROJECTION_SCHEMA = "proj"

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("position", BigInteger, primary_key=True),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("stream_id", Text, nullable=False),
    Column("stream_type", Text, nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

projection_checkpoint = Table(
    "projection_checkpoint",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    schema=PROJECTION_SCHEMA,
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("pipeline", Text, nullable=False),
    Column("pipeline_version", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("trigger_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("last_position", BigInteger, nullable=False),
    Column("doc", JSONB, nullable=False),
    Column("slice_key", Text),
    Column("is_replay", Boolean, nullable=False),
    schema=PROJECTION_SCHEMA,
)

step_runs = Table(
    "step_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("step", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("position_in_run", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

timeline = Table(
    "timeline",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

triggers = Table(
    "triggers",
    metadata,
    Column("trigger_id", Text, primary_key=True),
    Column("tenant", Text),
    Column("type", Text),
    Column("status", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

pipelines = Table(
    "pipelines",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("trigger_type", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("doc", JSONB, nullable=False),
    Column("state", Text, nullable=False),
    schema=PROJECTION_SCHEMA,
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("dead_letter_id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("pipeline", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("step", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False),
    Column("redriven_at", DateTime(timezone=True)),
    Column("redriven_by", Text),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

monitors = Table(
    "monitors",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("type", Text),
    Column("pipeline", Text),
    Column("enabled", Boolean, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

monitor_ticks = Table(
    "monitor_ticks",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("decision", Text, nullable=False),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

schedules = Table(
    "schedules",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("pipeline", Text, primary_key=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

schedule_history = Table(
    "schedule_history",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("pipeline", Text, primary_key=True),
    Column("position", BigInteger, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("doc", JSONB, nullable=False),
    schema=PROJECTION_SCHEMA,
)

PROJECTION_TABLES = (
    projection_checkpoint, runs, step_runs, timeline, triggers, pipelines, dead_letters, monitors, monitor_ticks,
    schedules, schedule_history,
)
