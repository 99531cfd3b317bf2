"""Alert on failed runs with nothing but nats-py: a durable JetStream consumer on Baton's EVENTS stream.

Every run and step transition is published to ``<prefix>.evt.<tenant>.<stream_type>.<event_type>``
(see docs/hooks.md). This script follows ``<prefix>.evt.<tenant>.run.run_failed`` with a durable
pull consumer, prints one JSON line per failed run and, with ``--webhook``, POSTs it there. It acks
an event only after the alert went out, so a crash or restart never loses one (it may repeat one:
the alert carries the event id for de-duplication).

    python examples/alert_on_failure.py --tenant acme
    python examples/alert_on_failure.py --tenant '*' --webhook https://chat.example/hooks/T0 --deliver all

It imports nothing from Baton on purpose: any NATS client in any language can do the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import urllib.request
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def events_stream(prefix: str) -> str:
    """The JetStream stream holding relayed events: EVENTS, or PREFIX_EVENTS for another prefix."""
    return "EVENTS" if prefix == "baton" else f"{prefix.upper().replace('-', '_')}_EVENTS"


def alert_for(event: dict[str, Any]) -> dict[str, Any]:
    """The alert for one relayed ``run_failed`` event (the envelope described in docs/hooks.md)."""
    data = event["data"]
    return {
        "alert": "run_failed",
        "tenant": event["tenant"],
        "run_id": data["run_id"],
        "step": data.get("step"),
        "code": data.get("code"),
        "error": data["error"],
        "at": event["recorded_at"],
        "event_id": event["event_id"],
    }


def post_json(url: str, body: dict[str, Any]) -> None:
    """POST `body` as JSON to `url`; raises on a network error or a non-2xx answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


async def watch(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Deliver alerts until `stop` is set or `--max-alerts` went out; returns how many were sent."""
    nc = await nats.connect(args.nats_url, name="baton-alert-on-failure")
    sent = 0
    try:
        js = nc.jetstream()
        subject = f"{args.prefix}.evt.{args.tenant}.run.run_failed"
        # The durable consumer remembers what was acked: a restart carries on where it stopped.
        # DeliverPolicy only matters the first time the consumer is created.
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL if args.deliver == "all" else DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=10,
        )
        subscription = await js.pull_subscribe(
            subject, durable=args.durable, stream=events_stream(args.prefix), config=config
        )
        print(f"listening on {subject} (durable {args.durable})", file=sys.stderr, flush=True)
        while not stop.is_set() and (args.max_alerts is None or sent < args.max_alerts):
            try:
                messages = await subscription.fetch(batch=10, timeout=1)
            except NatsTimeoutError:
                continue  # nothing new within a second: check `stop` and poll again
            for msg in messages:
                alert = alert_for(json.loads(msg.data))
                try:
                    if args.webhook:
                        await asyncio.to_thread(post_json, args.webhook, alert)
                except OSError as exc:
                    print(f"webhook failed, will retry: {exc}", file=sys.stderr, flush=True)
                    await msg.nak(delay=5)
                    continue
                print(json.dumps(alert), flush=True)
                await msg.ack()
                sent += 1
    finally:
        await nc.close()
    return sent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="baton", help="Baton's subject prefix (BATON_SUBJECT_PREFIX).")
    parser.add_argument("--tenant", default="*", help="One tenant, or '*' for all.")
    parser.add_argument("--durable", default="alert-on-failure", help="Durable consumer name.")
    parser.add_argument(
        "--deliver", choices=("new", "all"), default="new",
        help="First start only: alert on failures from now on ('new') or on those still in the stream ('all').",
    )
    parser.add_argument("--webhook", help="POST each alert as JSON to this URL.")
    parser.add_argument("--max-alerts", type=int, help="Exit after this many alerts (for tests and demos).")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    """Run until SIGINT/SIGTERM (or --max-alerts)."""
    args = parse_args(argv)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await watch(args, stop)


if __name__ == "__main__":
    asyncio.run(main())
