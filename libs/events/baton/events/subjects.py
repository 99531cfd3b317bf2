"""The NATS subject map and JetStream resource names, under a configurable prefix.

The prefix (default ``baton``) lets several Baton installations, or test sessions,
share one NATS server without seeing each other's messages.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# A trigger type is one or more dot-separated tokens ("orders.ready").
TRIGGER_TYPE_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def is_token(value: str) -> bool:
    """True when ``value`` is usable as one NATS subject token (no dots, spaces or wildcards)."""
    return bool(TOKEN_RE.match(value))


@dataclass(frozen=True)
class Subjects:
    """Every subject and stream name Baton uses, derived from one prefix."""

    prefix: str = "baton"

    def __post_init__(self) -> None:
        if not is_token(self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} must be one token of [A-Za-z0-9_-]")

    # --- JetStream streams, consumers and buckets -----------------------------------
    def stream(self, name: str) -> str:
        """Stream name: plain for the default prefix (TRIGGERS), else PREFIX_TRIGGERS."""
        if self.prefix == "baton":
            return name
        return f"{self.prefix.upper().replace('-', '_')}_{name}"

    @property
    def triggers_stream(self) -> str:
        """JetStream stream holding inbound triggers."""
        return self.stream("TRIGGERS")

    @property
    def events_stream(self) -> str:
        """JetStream stream the relay publishes committed events to."""
        return self.stream("EVENTS")

    @property
    def dlq_stream(self) -> str:
        """JetStream stream of messages a consumer could not accept."""
        return self.stream("DLQ")

    @property
    def timers_stream(self) -> str:
        """JetStream stream of timer requests (runner -> scheduler) and fires (scheduler -> runner)."""
        return self.stream("TIMERS")

    @property
    def defs_bucket(self) -> str:
        """KV bucket carrying current pipeline definitions to the services."""
        return self.stream("DEFS").lower()

    # --- subjects -------------------------------------------------------------------
    def trigger(self, tenant: str, trigger_type: str) -> str:
        """Where a trigger for ``tenant`` of ``trigger_type`` is published."""
        return f"{self.prefix}.trigger.{tenant}.{trigger_type}"

    @property
    def trigger_wildcard(self) -> str:
        """Every trigger subject."""
        return f"{self.prefix}.trigger.>"

    def parse_trigger_subject(self, subject: str) -> tuple[str, str]:
        """Split ``<prefix>.trigger.<tenant>.<type...>`` into (tenant, type)."""
        head = f"{self.prefix}.trigger."
        if not subject.startswith(head):
            raise ValueError(f"subject {subject!r} is not a trigger subject")
        tenant, sep, trigger_type = subject[len(head) :].partition(".")
        if not sep or not tenant or not trigger_type:
            raise ValueError(f"subject {subject!r} lacks a tenant and a type")
        return tenant, trigger_type

    def event(self, tenant: str, stream_type: str, event_type: str) -> str:
        """Subject of a relayed event."""
        return f"{self.prefix}.evt.{tenant}.{stream_type}.{event_type}"

    @property
    def event_wildcard(self) -> str:
        """Every relayed event."""
        return f"{self.prefix}.evt.>"

    def dlq(self, reason: str) -> str:
        """Dead-letter subject for messages rejected for ``reason`` (e.g. 'trigger')."""
        return f"{self.prefix}.dlq.{reason}"

    @property
    def dlq_wildcard(self) -> str:
        """Every dead-letter subject."""
        return f"{self.prefix}.dlq.>"

    def work(self, target: str, tenant: str, pipeline: str) -> str:
        """Where a step of ``pipeline`` is dispatched for workers of ``target`` ('managed')."""
        return f"{self.prefix}.work.{target}.{tenant}.{pipeline}"

    def work_wildcard(self, target: str = "managed") -> str:
        """Every work subject of one target."""
        return f"{self.prefix}.work.{target}.>"

    def result(self, tenant: str, run_id: str) -> str:
        """Where workers report a step's progress and result for a run."""
        return f"{self.prefix}.result.{tenant}.{run_id}"

    @property
    def result_wildcard(self) -> str:
        """Every result subject."""
        return f"{self.prefix}.result.>"

    # --- timers (durable, owned by the scheduler service) ------------------------------
    @property
    def timer_set(self) -> str:
        """Runner -> scheduler: arm a timer (a ``TimerRequest``)."""
        return f"{self.prefix}.timer.set"

    @property
    def timer_cancel(self) -> str:
        """Runner -> scheduler: disarm a timer (a ``TimerCancel``)."""
        return f"{self.prefix}.timer.cancel"

    @property
    def timer_fired(self) -> str:
        """Scheduler -> runner: a timer came due (a ``TimerFired``)."""
        return f"{self.prefix}.timer.fired"

    @property
    def timer_wildcard(self) -> str:
        """Every timer subject (the TIMERS stream)."""
        return f"{self.prefix}.timer.>"

    # --- commands (api, CLI -> runner; request/reply) ---------------------------------
    def command(self, tenant: str, verb: str) -> str:
        """Where a command ('cancel', 'retry', 'replay') for ``tenant`` is sent as a request."""
        return f"{self.prefix}.cmd.{tenant}.{verb}"

    @property
    def command_wildcard(self) -> str:
        """Every command subject."""
        return f"{self.prefix}.cmd.>"

    # --- monitors (api -> monitor service; request/reply) -------------------------------
    def monitor_request(self, verb: str, tenant: str, name: str) -> str:
        """Where the API asks the monitor service to 'evaluate' a monitor now or take a gateway 'report'."""
        return f"{self.prefix}.monitor.{verb}.{tenant}.{name}"

    @property
    def monitor_request_wildcard(self) -> str:
        """Every monitor request subject."""
        return f"{self.prefix}.monitor.>"

    @property
    def monitor_leases_bucket(self) -> str:
        """KV bucket (entries expire) in which monitor replicas hold their slot leases."""
        return self.stream("MONITOR_LEASES").lower()

    def monitor_consumer(self, tenant: str, name: str) -> str:
        """Durable EVENTS consumer of one upstream monitor (a NATS-safe name)."""
        digest = hashlib.sha256(f"{tenant}/{name}".encode()).hexdigest()[:20]
        return f"{self.prefix}_monitor_{digest}"

    # --- definitions ----------------------------------------------------------------
    def definition_key(self, kind: str, tenant: str, name: str) -> str:
        """KV key of a definition ('pipeline', tenant, name) or of a pipeline's control state ('control')."""
        return f"{kind}.{tenant}.{name}"

    @property
    def notify_channel(self) -> str:
        """PostgreSQL NOTIFY channel signalling new committed events."""
        return f"{self.prefix}_events"
