"""User-facing CLI commands: apply pipeline YAML, emit a trigger, and inspect runs.

``apply`` and ``runs`` talk to the HTTP API; ``emit`` publishes straight to NATS
JetStream, the same way any outside program may (the API need not be running).
Every command prints a readable table by default and raw JSON with ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
import nats
import typer
import yaml
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError, NoServersError

from baton.events.bus import headers_for
from baton.events.subjects import TRIGGER_TYPE_RE, Subjects
from baton.events.trigger import TENANT_RE, TriggerMessage, trigger_id_for

DEFAULT_API_URL = "http://127.0.0.1:8080"
REQUEST_TIMEOUT_SECONDS = 15.0
PUBLISH_TIMEOUT_SECONDS = 5.0

API_URL_OPTION = typer.Option(DEFAULT_API_URL, "--api-url", envvar="BATON_API_URL", help="Base URL of the Baton API.")
TENANT_OPTION = typer.Option("default", "--tenant", "-t", help="Tenant (workspace).")
JSON_OPTION = typer.Option(False, "--json", help="Print raw JSON instead of a table.")

runs_app = typer.Typer(help="Inspect runs (list, show, timeline); cancel or retry one.", no_args_is_help=True)


# --- output ---------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; ``None`` shows as '-'."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def format_field_errors(detail: Any) -> list[str]:
    """One ``field.path: message`` line per problem of a 422 ``detail`` list (or the detail as is)."""
    if not isinstance(detail, list):
        return [str(detail)]
    lines = []
    for problem in detail:
        if not isinstance(problem, dict):
            lines.append(str(problem))
            continue
        loc = [part for part in problem.get("loc", []) if part != "body"]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
        lines.append(f"{path or '(document)'}: {problem.get('msg', problem)}")
    return lines


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# --- HTTP -----------------------------------------------------------------------------------


def _call_api(api_url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Send one request; unreachable API or a server error ends the command with a clear message."""
    try:
        with httpx.Client(base_url=api_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the Baton API at {api_url} ({exc}); is it running (baton up)?")
    if response.status_code >= 500:
        _fail(f"{method} {path}: HTTP {response.status_code}: {_detail(response)}")
    return response


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text


def _get_json(api_url: str, path: str, params: dict[str, Any] | None = None) -> Any:
    return _checked_json(_call_api(api_url, "GET", path, params=params))


def _post_json(api_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST ``body``; a 4xx ends the command with the API's message (e.g. the runner's 409 reason)."""
    return _checked_json(_call_api(api_url, "POST", path, json=body or {}))


def _checked_json(response: httpx.Response) -> Any:
    if response.status_code in (404, 409):
        _fail(str(_detail(response)))
    if response.status_code >= 400:
        _fail("\n  ".join([f"HTTP {response.status_code}:", *format_field_errors(_detail(response))]))
    return response.json()


# --- apply ----------------------------------------------------------------------------------


def load_pipeline_documents(file: Path) -> list[dict[str, Any]]:
    """The YAML documents of ``file`` (separated by ``---``), skipping empty ones."""
    try:
        documents = [doc for doc in yaml.safe_load_all(file.read_text(encoding="utf-8")) if doc is not None]
    except (OSError, yaml.YAMLError) as exc:
        _fail(f"cannot read {file}: {exc}")
    for index, doc in enumerate(documents, start=1):
        body = document_kind(doc)[1] if isinstance(doc, dict) else doc
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            _fail(f"{file}: document {index} is not a pipeline or monitor mapping with a 'name'")
    return documents


def document_kind(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """('pipeline' or 'monitor', the definition): ``kind: monitor`` or a single top-level ``monitor:`` key."""
    if set(doc) == {"monitor"} and isinstance(doc["monitor"], dict):
        return "monitor", doc["monitor"]
    kind = str(doc.get("kind", "pipeline"))
    return kind, {key: value for key, value in doc.items() if key != "kind"}


def apply_command(
    file: Path = typer.Argument(
        ..., help="Pipeline or monitor YAML ('kind: monitor'); several may be separated by '---'."
    ),
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Create or update pipelines and monitors from a YAML file; a version is added only when a definition changed."""
    results: list[dict[str, Any]] = []
    failed = 0
    for raw in load_pipeline_documents(file):
        kind, doc = document_kind(raw)
        if kind not in ("pipeline", "monitor"):
            _fail(f"{file}: unknown kind {kind!r} (use 'pipeline' or 'monitor')")
        name = doc["name"]
        response = _call_api(api_url, "PUT", f"/v1/tenants/{tenant}/{kind}s/{name}", json=doc)
        if response.status_code in (200, 201):
            results.append(response.json() if kind == "pipeline" else {**response.json(), "kind": kind})
            continue
        failed += 1
        results.append({"name": name, "status": response.status_code, "detail": _detail(response)})
        if not json_output:
            typer.echo(f"{kind} {name}: rejected (HTTP {response.status_code})", err=True)
            for line in format_field_errors(_detail(response)):
                typer.echo(f"  {line}", err=True)
    if json_output:
        _print_json(results)
    else:
        applied = [r for r in results if "version" in r]
        if applied:
            typer.echo(
                format_table(
                    ["name", "version", "changed"],
                    [(r["name"], r["version"], "yes" if r["changed"] else "no") for r in applied],
                )
            )
    if failed:
        raise typer.Exit(1)


# --- emit -----------------------------------------------------------------------------------


async def publish_trigger(nats_url: str, subject: str, body: bytes, key: str) -> tuple[int, bool]:
    """Publish one trigger to JetStream; returns (stream sequence, was it a duplicate)."""
    nc = await nats.connect(servers=[nats_url], connect_timeout=PUBLISH_TIMEOUT_SECONDS, max_reconnect_attempts=1)
    try:
        ack = await nc.jetstream().publish(subject, body, timeout=PUBLISH_TIMEOUT_SECONDS, headers=headers_for(key))
        return ack.seq, bool(ack.duplicate)
    finally:
        await nc.close()


def emit_command(
    tenant: str = typer.Argument(..., metavar="TENANT", help="Tenant (workspace), e.g. 'acme'."),
    trigger_type: str = typer.Argument(..., metavar="TYPE", help="Trigger type, e.g. 'orders.ready'."),
    payload: str = typer.Option("{}", "--payload", "-p", help="JSON object passed to the run as trigger.payload."),
    source: str = typer.Option("cli", "--source", help="Who is sending the trigger."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", "-k", help="Same key, same trigger (default: a fresh one)."
    ),
    nats_url: str = typer.Option(
        "nats://127.0.0.1:4222", "--nats-url", envvar=["BATON_NATS_URL", "NATS_URL"], help="NATS server URL."
    ),
    prefix: str = typer.Option("baton", "--prefix", envvar="BATON_SUBJECT_PREFIX", help="NATS subject prefix."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Publish a trigger straight to NATS JetStream and print its trigger id."""
    if not TENANT_RE.match(tenant):
        raise typer.BadParameter(f"must match {TENANT_RE.pattern}", param_hint="TENANT")
    if not TRIGGER_TYPE_RE.match(trigger_type):
        raise typer.BadParameter("dot-separated tokens of [A-Za-z0-9_-]", param_hint="TYPE")
    try:
        payload_value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--payload") from exc
    if not isinstance(payload_value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--payload")
    try:
        subjects = Subjects(prefix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--prefix") from exc
    key = idempotency_key or uuid.uuid4().hex
    message = TriggerMessage(
        source=source,
        type=trigger_type,
        tenant=tenant,
        payload=payload_value,
        idempotency_key=key,
        triggered_by="manual",
    )
    subject = subjects.trigger(tenant, trigger_type)
    try:
        seq, duplicate = asyncio.run(
            publish_trigger(nats_url, subject, message.model_dump_json(exclude_none=True).encode(), key)
        )
    except NoServersError:
        _fail(f"cannot connect to NATS at {nats_url}; is it running (baton up)?")
    except NoRespondersError:
        _fail(f"no JetStream stream takes {subject}; has a Baton service started with prefix {prefix!r}?")
    except (NatsError, TimeoutError, OSError) as exc:
        _fail(f"publishing to {subject} failed: {exc or type(exc).__name__}")
    trigger_id = trigger_id_for(tenant, key)
    if json_output:
        _print_json(
            {"trigger_id": trigger_id, "idempotency_key": key, "subject": subject, "seq": seq, "duplicate": duplicate}
        )
        return
    note = " (duplicate: already accepted)" if duplicate else ""
    typer.echo(f"trigger {trigger_id} published on {subject}{note}")
    typer.echo(f"idempotency key: {key}")


# --- runs -----------------------------------------------------------------------------------


@runs_app.command("list")
def list_runs(
    tenant: str = TENANT_OPTION,
    pipeline: str | None = typer.Option(None, "--pipeline", help="Only runs of this pipeline."),
    status: str | None = typer.Option(
        None, "--status", help="Only runs in this status: pending, running, waiting, completed, failed, canceled."
    ),
    slice_key: str | None = typer.Option(None, "--slice-key", help="Only runs of this slice (partition key)."),
    replays: bool | None = typer.Option(
        None, "--replays/--originals", help="Only replays, or only original runs (default: both)."
    ),
    limit: int = typer.Option(20, "--limit", min=1, max=500, help="How many runs (newest first)."),
    cursor: str | None = typer.Option(None, "--cursor", help="Continue after a previous page."),
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """List runs, newest first."""
    params = {
        "pipeline": pipeline, "status": status, "slice_key": slice_key, "limit": limit, "cursor": cursor,
        "is_replay": None if replays is None else str(replays).lower(),
    }
    page = _get_json(api_url, f"/v1/tenants/{tenant}/runs", {k: v for k, v in params.items() if v is not None})
    if json_output:
        _print_json(page)
        return
    if not page["runs"]:
        typer.echo("no runs")
        return
    typer.echo(
        format_table(
            ["run id", "pipeline", "version", "status", "slice", "replay", "created", "finished"],
            [
                (r["run_id"], r["pipeline"], r["pipeline_version"], r["status"], r.get("slice_key"),
                 "yes" if r.get("is_replay") else "", r["created_at"], r["finished_at"])
                for r in page["runs"]
            ],
        )
    )
    if page.get("next_cursor"):
        typer.echo(f"\nmore: --cursor {page['next_cursor']}")


@runs_app.command("show")
def show_run(
    run_id: str = typer.Argument(..., help="Run id."),
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Show one run: status, trigger, error, and its steps."""
    run = _get_json(api_url, f"/v1/tenants/{tenant}/runs/{run_id}")
    if json_output:
        _print_json(run)
        return
    trigger = run.get("trigger") or {}
    fields = [
        ("run", run["run_id"]),
        ("pipeline", f"{run.get('pipeline')} v{run.get('pipeline_version')}"),
        ("status", run.get("status")),
        ("trigger", f"{trigger.get('trigger_id', '-')} ({trigger.get('type', '-')})"),
        ("created", run.get("created_at")),
        ("finished", run.get("finished_at")),
    ]
    if run.get("error"):
        error = run["error"]
        fields.append(("error", f"{error.get('message')} (step {error.get('step') or '-'})"))
    typer.echo("\n".join(f"{label + ':':<10}{'-' if value is None else value}" for label, value in fields))
    typer.echo("")
    typer.echo(
        format_table(
            ["step", "kind", "status", "attempt", "duration ms", "error"],
            [
                (s["step"], s.get("kind"), s.get("status"), s.get("attempt"), s.get("duration_ms"), s.get("error"))
                for s in run.get("steps", [])
            ],
        )
    )


@runs_app.command("timeline")
def show_timeline(
    run_id: str = typer.Argument(..., help="Run id."),
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Show a run's timeline: every recorded event, in order."""
    timeline = _get_json(api_url, f"/v1/tenants/{tenant}/runs/{run_id}/timeline")
    if json_output:
        _print_json(timeline)
        return
    typer.echo(
        format_table(
            ["seq", "at", "kind", "message"],
            [(e["seq"], e["at"], e["kind"], e.get("message")) for e in timeline["entries"]],
        )
    )


REASON_OPTION = typer.Option("", "--reason", "-r", help="Why (recorded in the run's events).")


def _report_command(result: dict[str, Any], json_output: bool) -> None:
    if json_output:
        _print_json(result)
    else:
        typer.echo(result.get("message", "done"))


@runs_app.command("cancel")
def cancel_run(
    run_id: str = typer.Argument(..., help="Run id."),
    reason: str = REASON_OPTION,
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Cancel a run that has not finished (a finished run is refused with the reason)."""
    _report_command(_post_json(api_url, f"/v1/tenants/{tenant}/runs/{run_id}/cancel", {"reason": reason}),
                    json_output)


@runs_app.command("retry")
def retry_run(
    run_id: str = typer.Argument(..., help="Run id."),
    reason: str = REASON_OPTION,
    tenant: str = TENANT_OPTION,
    api_url: str = API_URL_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Run a failed run again from its first failed step; completed steps keep their results."""
    _report_command(_post_json(api_url, f"/v1/tenants/{tenant}/runs/{run_id}/retry", {"reason": reason}),
                    json_output)
