"""Operator CLI commands, through the HTTP API: replay triggers, list and re-drive dead letters,
and pause, resume or drain pipelines. Readable output by default, raw JSON with ``--json``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from baton.cli.client_commands import (
    API_URL_OPTION,
    JSON_OPTION,
    REASON_OPTION,
    TENANT_OPTION,
    _get_json,
    _post_json,
    _print_json,
    format_table,
)

dead_letters_app = typer.Typer(help="Steps that ran out of attempts: list them, re-drive one.", no_args_is_help=True)
pipelines_app = typer.Typer(help="Operate pipelines: pause, resume, drain.", no_args_is_help=True)


def _moment(value: str | None, option: str) -> str | None:
    """An ISO 8601 time for the API; a time without an offset is taken as UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("an ISO 8601 time, e.g. 2024-05-01 or 2024-05-01T12:00:00+02:00",
                                 param_hint=option) from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


# --- replay ---------------------------------------------------------------------------------


def replay_command(
    trigger_id: str | None = typer.Argument(None, help="Replay this trigger; omit it to replay in bulk by filter."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Skip every action; record what would have run."),
    replay_id: str | None = typer.Option(None, "--replay-id", help="Name the replay, to repeat it safely."),
    pipeline: str | None = typer.Option(None, "--pipeline", help="Only this pipeline (bulk: runs of it)."),
    created_from: str | None = typer.Option(None, "--from", help="Bulk: runs created at or after (ISO 8601, UTC)."),
    created_to: str | None = typer.Option(None, "--to", help="Bulk: runs created before (ISO 8601, UTC)."),
    status: str | None = typer.Option(None, "--status", help="Bulk: runs in this status, e.g. failed."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="Bulk: at most this many triggers."),
    batch_id: str | None = typer.Option(None, "--batch-id", help="Bulk: name the batch, to repeat it safely."),
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Re-run stored triggers as replays: one by id, or every original trigger whose runs match the filters.

    Actions registered replay_safe: false are skipped; --dry-run skips every action.
    """
    if trigger_id is not None:
        if created_from or created_to or status or batch_id:
            raise typer.BadParameter("--from, --to, --status and --batch-id select triggers for a bulk replay; "
                                     "leave them out when naming TRIGGER_ID")
        body = {"dry_run": dry_run, "replay_id": replay_id, "pipeline": pipeline}
        result = _post_json(api_url, f"/v1/tenants/{tenant}/triggers/{trigger_id}/replay",
                            {k: v for k, v in body.items() if v is not None})
        if json_output:
            _print_json(result)
            return
        data = result.get("data", {})
        typer.echo(f"{result['message']} (replay id {result['replay_id']})")
        if data.get("trigger_id"):
            typer.echo(f"new trigger: {data['trigger_id']}")
        for run_id in data.get("runs", []):
            typer.echo(f"run: {run_id}")
        return
    if not (pipeline or created_from or created_to or status):
        raise typer.BadParameter("give TRIGGER_ID, or at least one of --pipeline, --from, --to, --status")
    bulk: dict[str, Any] = {
        "pipeline": pipeline, "from": _moment(created_from, "--from"), "to": _moment(created_to, "--to"),
        "status": status, "dry_run": dry_run, "limit": limit, "batch_id": batch_id,
    }
    summary = _post_json(api_url, f"/v1/tenants/{tenant}/replays", {k: v for k, v in bulk.items() if v is not None})
    if json_output:
        _print_json(summary)
        return
    typer.echo(
        f"batch {summary['batch_id']}: {summary['selected']} selected, {summary['replayed']} replayed, "
        f"{summary['failed']} refused, {summary['not_sent']} not sent{' (dry run)' if summary['dry_run'] else ''}"
    )
    if summary["results"]:
        typer.echo(
            format_table(
                ["trigger", "status", "new trigger", "message"],
                [(r["trigger_id"], r["status"], r.get("data", {}).get("trigger_id"), r["message"])
                 for r in summary["results"]],
            )
        )
    if summary["not_sent"]:
        raise typer.Exit(1)


# --- dead letters ---------------------------------------------------------------------------


@dead_letters_app.command("list")
def list_dead_letters(
    include_all: bool = typer.Option(False, "--all", help="Include dead letters already re-driven."),
    pipeline: str | None = typer.Option(None, "--pipeline", help="Only dead letters of this pipeline."),
    limit: int = typer.Option(100, "--limit", min=1, max=500),
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """List dead letters, newest first (open ones unless --all)."""
    params = {"include": "all" if include_all else "open", "pipeline": pipeline, "limit": limit}
    page = _get_json(api_url, f"/v1/tenants/{tenant}/dead-letters", {k: v for k, v in params.items() if v})
    if json_output:
        _print_json(page)
        return
    if not page["dead_letters"]:
        typer.echo("no dead letters")
        return
    typer.echo(
        format_table(
            ["id", "pipeline", "attempts", "at", "re-driven", "last error"],
            [(d["dead_letter_id"], d["pipeline"], d["attempts"], d["dead_lettered_at"], d.get("redriven_at"),
              d["last_error"]) for d in page["dead_letters"]],
        )
    )


@dead_letters_app.command("redrive")
def redrive_dead_letter(
    dead_letter_id: str = typer.Argument(..., help="Dead letter id (<run_id>:<step>:<attempts>)."),
    reason: str = REASON_OPTION,
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Retry the dead letter's run from the step that ran out of attempts."""
    result = _post_json(api_url, f"/v1/tenants/{tenant}/dead-letters/{dead_letter_id}/redrive", {"reason": reason})
    if json_output:
        _print_json(result)
    else:
        typer.echo(result.get("message", "re-driven"))


# --- pipelines ------------------------------------------------------------------------------


def _operator_action(action: str, name: str, reason: str, tenant: str, api_url: str, json_output: bool) -> None:
    result = _post_json(api_url, f"/v1/tenants/{tenant}/pipelines/{name}/{action}", {"reason": reason})
    if json_output:
        _print_json(result)
        return
    note = "" if result["changed"] else f" (already; since {result.get('changed_at') or 'always'})"
    typer.echo(f"pipeline {name}: {result['state']}{note}")


@pipelines_app.command("pause")
def pause_pipeline(
    name: str = typer.Argument(..., help="Pipeline name."),
    reason: str = REASON_OPTION,
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Pause: new runs queue as pending; none starts until resumed."""
    _operator_action("pause", name, reason, tenant, api_url, json_output)


@pipelines_app.command("resume")
def resume_pipeline(
    name: str = typer.Argument(..., help="Pipeline name."),
    reason: str = REASON_OPTION,
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Resume: queued runs start, first in first out."""
    _operator_action("resume", name, reason, tenant, api_url, json_output)


@pipelines_app.command("drain")
def drain_pipeline(
    name: str = typer.Argument(..., help="Pipeline name."),
    reason: str = REASON_OPTION,
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Drain: no new runs are accepted; those in flight or queued finish."""
    _operator_action("drain", name, reason, tenant, api_url, json_output)


@pipelines_app.command("list")
def list_pipelines(
    tenant: str = TENANT_OPTION, api_url: str = API_URL_OPTION, json_output: bool = JSON_OPTION
) -> None:
    """List pipelines with their version and operator state."""
    page = _get_json(api_url, f"/v1/tenants/{tenant}/pipelines")
    if json_output:
        _print_json(page)
        return
    typer.echo(
        format_table(
            ["name", "version", "enabled", "state", "trigger", "updated"],
            [(p["name"], p["version"], p["enabled"], p.get("state", "active"), p["trigger_type"], p["updated_at"])
             for p in page["pipelines"]],
        )
    )
