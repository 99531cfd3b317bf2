"""Stream id conventions in one place: '<stream type>-<id>' (the prefix is the stream type)."""

from __future__ import annotations


def run_stream(run_id: str) -> str:
    """The stream of one run."""
    return f"run-{run_id}"


def trigger_stream(trigger_id: str) -> str:
    """The stream of one trigger (accepted or rejected)."""
    return f"trigger-{trigger_id}"


def pipeline_stream(tenant: str, name: str) -> str:
    """The stream of one pipeline's versions."""
    return f"pipeline-{tenant}.{name}"


def monitor_stream(tenant: str, name: str) -> str:
    """The stream of one monitor's definition versions (and its deletion)."""
    return f"monitor-{tenant}.{name}"


def monitor_ticks_stream(tenant: str, name: str) -> str:
    """The stream of one monitor's ticks: kept apart so definition writes never contend with ticks."""
    return f"monitor_ticks-{tenant}.{name}"


def monitor_of(stream_id: str) -> tuple[str, str]:
    """(tenant, name) of a monitor or monitor-ticks stream id."""
    head, sep, rest = stream_id.partition("-")
    tenant, dot, name = rest.partition(".")
    if not sep or head not in ("monitor", "monitor_ticks") or not dot:
        raise ValueError(f"{stream_id!r} is not a monitor stream")
    return tenant, name


def schedule_stream(tenant: str, pipeline: str) -> str:
    """The stream of one pipeline's schedule: activations, fires, skips and backfills."""
    return f"schedule-{tenant}.{pipeline}"


def run_id_of(stream_id: str) -> str:
    """The run id inside a run stream id."""
    if not stream_id.startswith("run-"):
        raise ValueError(f"{stream_id!r} is not a run stream")
    return stream_id[len("run-") :]
