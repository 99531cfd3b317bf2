"""Slot leases: how several monitor replicas split the monitors so each is evaluated by exactly one.

Monitors hash onto a fixed number of slots. Each replica announces itself in a NATS KV
bucket whose entries expire (``replica.<id>``), computes with rendezvous hashing which
slots the live replicas should own, and holds a lease (``slot.<n>``, created only if
absent, renewed by compare-and-set on its revision) for each slot it owns. Entries expire
after the TTL, so a crashed replica's slots become free and are claimed by the others.

A replica evaluates a monitor only while it holds the slot's lease by its own clock: the
lease counts as held until (time the renewal was sent + TTL - a safety margin), which is
never later than the server lets the entry live. A check is cut off at that instant, so
two replicas never check the same monitor at once. Leasing slots rather than monitors
keeps the renewal traffic constant (one write per slot) however many monitors exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from baton.events.waiting import wait_any

log = logging.getLogger(__name__)

SlotCallback = Callable[[int], Awaitable[None]]


def slot_of(tenant: str, name: str, slots: int) -> int:
    """The slot a monitor hashes onto (stable across processes and restarts)."""
    digest = hashlib.sha256(f"{tenant}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % slots


def owner_of(slot: int, replicas: list[str]) -> str | None:
    """Rendezvous hashing: the replica with the highest score for this slot (None without replicas)."""
    if not replicas:
        return None
    return max(replicas, key=lambda r: hashlib.sha256(f"{r}/{slot}".encode()).digest())


async def lease_bucket(js: JetStreamContext, bucket: str, ttl_seconds: float) -> KeyValue:
    """The KV bucket holding leases; its entries expire ``ttl_seconds`` after their last write."""
    try:
        return await js.key_value(bucket)
    except (NotFoundError, BadRequestError):
        try:
            return await js.create_key_value(bucket=bucket, ttl=ttl_seconds, history=1)
        except BadRequestError:
            return await js.key_value(bucket)


@dataclass
class _Held:
    revision: int
    valid_until: float


class SlotLeases:
    """This replica's slot leases: claims, renews and releases them in a loop."""

    def __init__(
        self,
        kv: KeyValue,
        replica: str,
        slots: int,
        ttl_seconds: float,
        on_acquire: SlotCallback,
        on_release: SlotCallback,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self.replica = replica
        self.slots = slots
        self._ttl = ttl_seconds
        self._safety = min(1.0, ttl_seconds / 5)
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._clock = clock
        self._held: dict[int, _Held] = {}
        self.epochs: dict[int, int] = {}
        self.ready = asyncio.Event()

    def remaining(self, slot: int) -> float:
        """Seconds this replica may still act on ``slot`` (0 when it does not hold it)."""
        held = self._held.get(slot)
        if held is None:
            return 0.0
        return max(held.valid_until - self._clock(), 0.0)

    def holds(self, slot: int) -> bool:
        """True while this replica holds the slot's lease."""
        return self.remaining(slot) > 0

    @property
    def held_slots(self) -> set[int]:
        """The slots currently held."""
        return {s for s in self._held if self.holds(s)}

    async def run(self, stop: asyncio.Event) -> None:
        """Renew, claim and release every third of the TTL until ``stop``; then release everything."""
        period = max(self._ttl / 3, 0.2)
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except (NatsError, TimeoutError) as exc:
                    log.warning("lease round failed: %s", exc)
                except Exception:
                    log.exception("lease round failed")
                self.ready.set()
                await wait_any(stop, None, period)
        finally:
            await self.release_all()

    async def step(self) -> None:
        """One round: heartbeat, compute the wanted slots, release, renew and claim."""
        sent = self._clock()
        await self._kv.put(f"replica.{self.replica}", b"1")
        replicas = await self._live_replicas()
        wanted = {s for s in range(self.slots) if owner_of(s, replicas) == self.replica}
        for slot in sorted(set(self._held) - wanted):
            await self._release(slot)
        for slot in sorted(set(self._held) & wanted):
            await self._renew(slot, sent)
        for slot in sorted(wanted - set(self._held)):
            await self._claim(slot, sent)

    async def _live_replicas(self) -> list[str]:
        watcher = await self._kv.watch("replica.>", ignore_deletes=True, meta_only=True)
        replicas: set[str] = set()
        try:
            async for entry in watcher:
                if entry is None:  # the end of the current values
                    break
                replicas.add(entry.key.partition(".")[2])
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        replicas.add(self.replica)
        return sorted(replicas)

    async def _claim(self, slot: int, sent: float) -> None:
        try:
            revision = await self._kv.create(f"slot.{slot}", self.replica.encode())
        except KeyWrongLastSequenceError:
            return  # held by another replica until it releases it or its lease expires
        self._held[slot] = _Held(revision, sent + self._ttl - self._safety)
        self.epochs[slot] = self.epochs.get(slot, 0) + 1
        log.debug("%s acquired slot %d", self.replica, slot)
        await self._on_acquire(slot)

    async def _renew(self, slot: int, sent: float) -> None:
        held = self._held[slot]
        try:
            revision = await self._kv.update(f"slot.{slot}", self.replica.encode(), last=held.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            log.warning("%s lost slot %d (the lease expired and was taken)", self.replica, slot)
            self._held.pop(slot, None)
            await self._on_release(slot)
            return
        if self._clock() - sent > self._ttl - self._safety:  # the renewal itself came too late
            self._held.pop(slot, None)
            await self._on_release(slot)
            return
        self._held[slot] = _Held(revision, sent + self._ttl - self._safety)

    async def _release(self, slot: int) -> None:
        """Stop acting on the slot, let in-flight checks finish, then free the lease for its new owner."""
        held = self._held.pop(slot)
        await self._on_release(slot)
        try:
            await self._kv.delete(f"slot.{slot}", last=held.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError, NatsError, TimeoutError) as exc:
            log.debug("releasing slot %d: %s", slot, exc)

    async def release_all(self) -> None:
        """Free every lease and the replica's announcement (a clean stop hands monitors over at once)."""
        for slot in sorted(self._held):
            await self._release(slot)
        try:
            await self._kv.delete(f"replica.{self.replica}")
        except (NatsError, TimeoutError, KeyNotFoundError) as exc:
            log.debug("removing replica entry: %s", exc)
