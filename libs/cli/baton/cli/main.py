"""The ``baton`` command: run the system, operate it, and talk to it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from baton.cli.client_commands import apply_command, emit_command, runs_app
from baton.cli.operator_commands import dead_letters_app, pipelines_app, replay_command
from baton.cli.schedule_commands import backfill_command, schedules_app

app = typer.Typer(
    help="Baton: event-sourced, push-based orchestration over NATS and PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
projections_app = typer.Typer(help="Read models folded from the event store.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(projections_app, name="projections")
app.command("apply", help="Create or update pipelines from a YAML file (through the API).")(apply_command)
app.command("emit", help="Publish a trigger straight to NATS.")(emit_command)
app.command("replay", help="Replay a stored trigger, or in bulk by filter (through the API).")(replay_command)
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(schedules_app, name="schedules")
app.command("backfill", help="Run a pipeline's schedule slots over a past time range.")(backfill_command)


def _database_url(value: str | None) -> str:
    url = value or os.environ.get("BATON_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise typer.BadParameter("set --database-url, BATON_DATABASE_URL or DATABASE_URL")
    return url


@app.command()
def up(
    data_dir: Path = typer.Option(Path(".baton"), envvar="BATON_DATA_DIR", help="Where NATS and PostgreSQL keep data."),
    nats_port: int = typer.Option(4222, envvar="BATON_NATS_PORT", help="Port of the embedded nats-server."),
    pg_port: int = typer.Option(5433, envvar="BATON_PG_PORT", help="Port of the embedded PostgreSQL."),
    api_port: int = typer.Option(8080, envvar="BATON_API_PORT", help="Port of the HTTP API."),
    workers: int = typer.Option(1, min=1, max=32, help="How many worker processes to run."),
    example: bool = typer.Option(True, help="Apply examples/hello.yaml for tenant 'demo' once the API is up."),
) -> None:
    """Start NATS, PostgreSQL and every service on this machine; Ctrl-C stops them all."""
    from baton.cli.up import run_up

    raise typer.Exit(run_up(data_dir, nats_port, pg_port, api_port, workers, example))


@app.command("migrate")
def migrate_command(database_url: str | None = typer.Option(None, help="PostgreSQL URL.")) -> None:
    """Apply pending schema migrations (idempotent)."""
    from baton.events.db import make_engine
    from baton.events.migrations import migrate

    async def run() -> list[int]:
        engine = make_engine(_database_url(database_url), pool_size=1)
        try:
            return await migrate(engine)
        finally:
            await engine.dispose()

    applied = asyncio.run(run())
    typer.echo(f"applied migrations: {applied}" if applied else "schema is up to date")


@projections_app.command("rebuild")
def rebuild_command(database_url: str | None = typer.Option(None, help="PostgreSQL URL.")) -> None:
    """Rebuild every read model from position 0 beside the live one, then swap it in."""
    from baton.events.db import make_engine
    from baton.events.migrations import migrate
    from baton.events.projector import rebuild

    async def run() -> int:
        engine = make_engine(_database_url(database_url), pool_size=2)
        try:
            await migrate(engine)
            return await rebuild(engine)
        finally:
            await engine.dispose()

    typer.echo(f"rebuilt read models from {asyncio.run(run())} events")


if __name__ == "__main__":
    app()
