"""Trigger intake as a pure decision: an accepted trigger and its matches -> one atomic unit.

The trigger's stream and every run it starts are appended together with
``NO_STREAM`` expectations, so a redelivered trigger (same trigger id, same run ids)
conflicts instead of creating a second set of runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from baton.events.catalogue import MatchedRun, SkippedMatch, TriggerReceived, TriggerRejected
from baton.events.envelope import EventMetadata
from baton.events.store import NO_STREAM, AppendRequest
from baton.events.stream_ids import trigger_stream
from baton.events.trigger import AcceptedTrigger, TriggerRejection, run_id_for
from baton.runner.decide import Decision, create_run
from baton.runner.definitions import PipelineVersion

REJECTED_TENANT = "_rejected"
MAX_EXCERPT = 512


@dataclass(frozen=True)
class MatchPlan:
    """What to do with one matched pipeline, decided by the runner from what it knows.

    ``run_id`` None means no run: ``skip_reason`` says why (draining, slice taken).
    ``queued_reason`` set means the run is created 'pending' and waits for a slot.
    """

    pipeline: PipelineVersion
    run_id: str | None
    skip_reason: str | None = None
    existing_run: str | None = None
    queued_reason: str | None = None


@dataclass(frozen=True)
class TriggerIntake:
    """What accepting a trigger means: the unit to append and the runs it starts."""

    unit: list[AppendRequest]
    runs: list[Decision]


def trigger_snapshot(
    accepted: AcceptedTrigger, replay_of: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """The trigger as frozen into each run (what handlers and conditions see as ``trigger``)."""
    message = accepted.message
    snapshot: dict[str, Any] = {
        "trigger_id": accepted.trigger_id,
        "tenant": accepted.tenant,
        "type": accepted.type,
        "source": message.source,
        "resource_type": message.resource_type,
        "resource_id": message.resource_id,
        "environment": message.environment,
        "payload": message.payload,
        "idempotency_key": accepted.idempotency_key,
        "triggered_by": message.triggered_by,
        "slice_key": message.slice_key,
        "scheduled_at": message.scheduled_at.isoformat() if message.scheduled_at else None,
        "pipeline": message.pipeline,
    }
    if replay_of is not None:
        snapshot["replay_of"] = replay_of
        snapshot["dry_run"] = dry_run
    return snapshot


def plan_matches(accepted: AcceptedTrigger, matches: list[PipelineVersion]) -> list[MatchPlan]:
    """Plans that start one run per match, right away (no limits, no slices): for tests and simple callers."""
    return [MatchPlan(match, run_id_for(accepted.trigger_id, match.name)) for match in matches]


def accept_trigger(
    accepted: AcceptedTrigger,
    plans: list[MatchPlan] | list[PipelineVersion],
    subject: str,
    now: datetime,
    replay_of: str | None = None,
    dry_run: bool = False,
) -> TriggerIntake:
    """Decide the events for an accepted trigger: trigger_received plus a run per planned match."""
    trigger_id = accepted.trigger_id
    snapshot = trigger_snapshot(accepted, replay_of, dry_run)
    resolved = [p if isinstance(p, MatchPlan) else MatchPlan(p, run_id_for(trigger_id, p.name)) for p in plans]
    runs = [
        create_run(
            run_id=plan.run_id,
            tenant=accepted.tenant,
            pipeline=plan.pipeline.name,
            pipeline_version=plan.pipeline.version,
            definition=plan.pipeline.document,
            trigger=snapshot,
            now=now,
            metadata=EventMetadata(causation_id=trigger_id, correlation_id=trigger_id, actor="runner"),
            queued_reason=plan.queued_reason,
        )
        for plan in resolved
        if plan.run_id is not None
    ]
    skipped = [
        SkippedMatch(pipeline=plan.pipeline.name, reason=plan.skip_reason or "not started", run_id=plan.existing_run)
        for plan in resolved
        if plan.run_id is None
    ]
    received = TriggerReceived(
        trigger_id=trigger_id,
        tenant=accepted.tenant,
        source=accepted.message.source,
        type=accepted.type,
        resource_type=accepted.message.resource_type,
        resource_id=accepted.message.resource_id,
        environment=accepted.message.environment,
        payload=accepted.message.payload,
        idempotency_key=accepted.idempotency_key,
        triggered_by=accepted.message.triggered_by,
        subject=subject,
        runs=[
            MatchedRun(run_id=d.state.run_id, pipeline=d.state.pipeline, pipeline_version=d.state.pipeline_version)
            for d in runs
        ],
        skipped=skipped,
        pipeline=accepted.message.pipeline,
        slice_key=accepted.message.slice_key,
        rerun_slice=accepted.message.rerun_slice,
        scheduled_at=accepted.message.scheduled_at,
        replay_of=replay_of,
        dry_run=dry_run,
    ).to_event(EventMetadata(correlation_id=trigger_id, actor="runner"), now)
    unit = [AppendRequest(trigger_stream(trigger_id), accepted.tenant, [received], NO_STREAM)]
    unit.extend(AppendRequest(d.state.stream_id, accepted.tenant, d.events, NO_STREAM) for d in runs)
    return TriggerIntake(unit=unit, runs=runs)


def reject_trigger(rejection: TriggerRejection, subject: str, body: bytes, now: datetime) -> AppendRequest:
    """The append recording a rejected trigger message, with an excerpt of what was sent."""
    event = TriggerRejected(
        trigger_id=rejection.trigger_id,
        tenant=rejection.tenant,
        subject=subject,
        reason=rejection.reason,
        detail=rejection.detail,
        body_excerpt=body[:MAX_EXCERPT].decode("utf-8", errors="replace"),
    ).to_event(EventMetadata(correlation_id=rejection.trigger_id, actor="runner"), now)
    return AppendRequest(
        trigger_stream(rejection.trigger_id), rejection.tenant or REJECTED_TENANT, [event], NO_STREAM
    )
