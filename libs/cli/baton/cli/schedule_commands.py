"""CLI for schedules: backfill a range of slots, list schedules with their next fires, read a history."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from baton.cli.client_commands import (
    API_URL_OPTION,
    JSON_OPTION,
    TENANT_OPTION,
    _call_api,
    _detail,
    _fail,
    _get_json,
    _print_json,
    format_field_errors,
    format_table,
)

schedules_app = typer.Typer(help="Cron schedules: list them, read their history.", no_args_is_help=True)


def _instant(value: str, option: str) -> str:
    """An ISO 8601 instant; one without a timezone is read as UTC."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=option) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def backfill_command(
    pipeline: str = typer.Argument(..., help="Pipeline whose schedule slots to run."),
    from_time: str = typer.Option(..., "--from", help="First instant, ISO 8601 (UTC unless it says otherwise)."),
    to_time: str = typer.Option(..., "--to", help="Last instant (inclusive)."),
    rate: float = typer.Option(100.0, "--rate", min=0.1, max=2000, help="Triggers per second at most."),
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Publish one trigger per schedule slot in [--from, --to], each with its slot as slice key (idempotent)."""
    body = {"from": _instant(from_time, "--from"), "to": _instant(to_time, "--to"), "rate": rate}
    response = _call_api(api_url, "POST", f"/v1/tenants/{tenant}/pipelines/{pipeline}/backfill", json=body)
    if response.status_code >= 400:
        _fail("\n  ".join([f"HTTP {response.status_code}:", *format_field_errors(_detail(response))]))
    result = response.json()
    if json_output:
        _print_json(result)
        return
    typer.echo(
        f"backfill of {pipeline}: {result['count']} slot(s), {result['published']} new trigger(s), "
        f"{result['duplicates']} already published"
    )
    if result["slots"]:
        typer.echo(format_table(["slot", "trigger id"], [(s["slice_key"], s["trigger_id"]) for s in result["slots"]]))


@schedules_app.command("list")
def list_schedules(tenant: str = TENANT_OPTION, api_url: str = API_URL_OPTION, json_output: bool = JSON_OPTION) -> None:
    """Every scheduled pipeline with its next fire time and last outcome."""
    listing = _get_json(api_url, f"/v1/tenants/{tenant}/schedules")
    if json_output:
        _print_json(listing)
        return
    if not listing["schedules"]:
        typer.echo("no schedules")
        return
    rows = []
    for s in listing["schedules"]:
        outcome = s.get("last_outcome") or {}
        rows.append(
            (s["pipeline"], " | ".join(s["cron"]), s["timezone"], s["missed"], "yes" if s["enabled"] else "no",
             (s["next_fires"] or [None])[0], outcome.get("kind"), outcome.get("slot") or outcome.get("last_slot"))
        )
    typer.echo(format_table(["pipeline", "cron", "timezone", "missed", "enabled", "next fire", "last", "slot"], rows))


@schedules_app.command("history")
def schedule_history(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """A schedule's fires, skips, backfills and activations, newest first."""
    history = _get_json(api_url, f"/v1/tenants/{tenant}/schedules/{pipeline}/history", {"limit": limit})
    if json_output:
        _print_json(history)
        return
    typer.echo(
        format_table(
            ["at", "kind", "slot", "detail"],
            [
                (e["at"], e["kind"], e.get("slot") or e.get("first_slot") or e.get("since"),
                 e.get("reason") or e.get("fire_kind") or (f"{e['count']} slot(s)" if "count" in e else None))
                for e in history["entries"]
            ],
        )
    )
