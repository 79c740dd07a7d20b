"""One owner per polling interface: leases in JetStream KV bucket ``ficus-leases``.

Folder, SFTP and ODBC interfaces are polled by one instance at a time, the holder of the
interface's lease; MLLP listeners are stateless and run on every instance (not leased).

The record (key = interface name) is JSON: ``interface``, ``owner`` (``cluster.instance``,
empty once released), ``epoch`` (one more at each new owner), ``acquired_at``,
``renewed_at``, ``expires_at`` (Unix seconds), and after a release ``released_from`` and
``released_by``. Expiry is the server's: every write of a lease carries a per-key TTL of
``lease_seconds`` (JetStream per-message TTL, nats-server 2.11+, written with nats-py's
compare-and-set), so a lease its owner stopped renewing disappears from the bucket by itself
and no instance judges another's lease by its own clock (``expires_at`` is for people).

- Acquire: when the key is absent (never held, or expired) or released, claim the next epoch
  (counter key ``<interface>.epoch``, compare-and-set, never removed: the epoch outlives the
  expired record) and then write the lease: ``create`` when absent, ``update`` on the read
  revision when released. A loser of either compare-and-set is not the owner.
- Renew: ``update`` on the last revision, every ``renew_seconds``. A conflict means the lease
  was released or taken over: this instance steps down.
- Local safety: the owner holds the lease until its own monotonic deadline, the time the
  last successful renew was *requested* plus ``lease_seconds`` minus a margin
  (``renew_seconds / 2``); the server's TTL counts from when it stored the write, later. A
  process paused past that deadline (SIGSTOP, a VM frozen) finds it passed when it runs
  again, before anything else it does is written: :meth:`Lease.check` raises `LeaseLost`.
- Takeover: a standby tries every ``renew_seconds``, so it owns the interface at most
  ``lease_seconds + renew_seconds`` (and the TTL rounding up to whole seconds) after the last
  renew.
- A single instance on the embedded server (`sole`) takes a lease recorded for another owner
  (itself before a restart) at once, with the next epoch, rather than wait for it to expire.
- Release (operator, ``ficus leases release IFACE``): the record is rewritten without an
  owner (compare-and-set, TTL ``lease_seconds``); the owner steps down at once when it is
  the instance that released, else at its next renew. Any other instance may take it at
  once; the instance released from waits until the released record expires (one lease
  period), so a maintenance hand-over is not undone by the same instance.

Fencing: each pipeline checks :meth:`Lease.check` immediately before it publishes and before
it writes a checkpoint or a manifest entry, and those writes are compare-and-set on the
revision with the writer's ``epoch`` stored beside the value; a new owner rewrites the
checkpoint with its epoch when it takes over, so a former owner's compare-and-set fails, and
no owner writes over a value of a later epoch (router/odbc_pipeline.py, router/manifest.py).

A claimed epoch whose lease write is delayed past one ``renew_seconds`` is abandoned, so a
stale claim cannot come back with an epoch lower than its successor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from router.store import Bucket, RevisionConflict, StoreError

log = logging.getLogger("ficus.leases")


class LeaseLost(Exception):
    """This instance does not hold the interface's lease (any more): nothing more is written."""


class Fence(Protocol):
    """What a pipeline needs of its lease to fence its writes."""

    @property
    def epoch(self) -> int: ...

    def check(self) -> None:
        """Raises `LeaseLost` unless the lease is held and its local deadline not passed."""


@dataclass(frozen=True)
class LeaseRecord:
    """One lease as stored in ``ficus-leases``."""

    interface: str
    owner: str
    epoch: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    released_from: str = ""
    released_by: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        """The record, or None when the value is not one (never from Ficus)."""
        try:
            found = json.loads(data)
            return cls(**{k: found[k] for k in cls.__dataclass_fields__ if k in found})
        except (ValueError, TypeError, KeyError):
            return None

    def shown(self, now: float | None = None) -> dict[str, Any]:
        """For the API: the record and the seconds until it expires."""
        left = self.expires_at - (time.time() if now is None else now)
        return {**asdict(self), "expires_in": round(max(0.0, left), 1)}


def epoch_key(interface: str) -> str:
    """The key of an interface's epoch counter (interface names have no dot, counters do)."""
    return f"{interface}.epoch"


class Lease:
    """One interface's lease as this instance holds it, or waits for it (a `Fence`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch = 0
        self.revision = 0
        self.deadline = 0.0
        """Monotonic time until which this instance may act as the owner."""
        self.held = False
        self.acquired_at = 0.0
        self.not_before = 0.0
        """Monotonic time before which this instance does not try to acquire it (after a release)."""
        self._held = asyncio.Event()
        self._lost = asyncio.Event()

    def valid(self) -> bool:
        return self.held and time.monotonic() < self.deadline

    def check(self) -> None:
        if self.valid():
            return
        self.lose("its lease was not renewed in time")
        raise LeaseLost(f"{self.name}: lease not held")

    def gain(self, epoch: int, revision: int, deadline: float, acquired_at: float) -> None:
        self.epoch, self.revision, self.deadline, self.held = epoch, revision, deadline, True
        self.acquired_at = acquired_at
        self._lost.clear()
        self._held.set()

    def lose(self, reason: str, *, quiet: bool = False) -> None:
        """Steps down (once per loss): the pipeline stops, nothing more is written."""
        if not self.held:
            return
        self.held = False
        self._held.clear()
        self._lost.set()
        if not quiet:
            log.warning("%s: lease (epoch %d) lost: %s; stepped down, trying to acquire it again",
                        self.name, self.epoch, reason)

    async def wait_held(self, stopping: asyncio.Event) -> bool:
        """Waits until this instance holds the lease (True) or `stopping` is set (False)."""
        await _first(self._held.wait(), stopping.wait())
        return not stopping.is_set() and self.held

    async def wait_lost(self) -> None:
        await self._lost.wait()


class Leases:
    """This instance's leases: acquired, renewed, released; see the module docstring."""

    def __init__(self, bucket: Bucket, instance: str, lease_seconds: float, renew_seconds: float, *,
                 sole: bool = False) -> None:
        self.bucket = bucket
        self.sole = sole
        """The only instance there can be (an embedded server, whose store one process locks): a
        lease still recorded for another owner (this process before a restart) is taken over at
        once instead of after it expires. Fencing is unchanged: the epoch goes up."""
        self.instance = instance
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.margin = renew_seconds / 2
        self._leases: dict[str, Lease] = {}
        self._wake = asyncio.Event()

    def lease(self, name: str) -> Lease:
        """The lease of interface `name`, which this instance now tries to hold."""
        found = self._leases.get(name)
        if found is None:
            found = self._leases[name] = Lease(name)
            self._wake.set()  # try it now, not at the next tick
        return found

    def held(self) -> list[str]:
        """The interfaces whose lease this instance holds now (for the instance registry)."""
        return sorted(name for name, lease in self._leases.items() if lease.valid())

    async def run(self) -> None:
        """Renews what is held and tries the rest, every `renew_seconds`, until cancelled."""
        while True:
            await self.tick()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.renew_seconds)

    async def tick(self) -> None:
        await asyncio.gather(*(self._one(lease) for lease in list(self._leases.values())))

    async def _one(self, lease: Lease) -> None:
        try:
            if lease.held:
                await self._renew(lease)
            else:
                await self._acquire(lease)
        except StoreError as exc:
            if lease.held and not lease.valid():
                lease.lose(f"not renewed in time ({exc.reason})")
            log.debug("%s: lease: %s", lease.name, exc.reason)

    async def _acquire(self, lease: Lease) -> None:
        started = time.monotonic()
        if started < lease.not_before:
            return
        entry = await self.bucket.get(lease.name)
        record = LeaseRecord.decode(entry.value) if entry is not None else None
        if entry is not None and record is not None and record.released_from == self.instance:
            return  # released from this instance: not before that record expires (one lease period)
        if entry is not None and (record is None or record.owner) and not self.sole:
            return  # held by another instance until it expires
        counter = await self.bucket.get(epoch_key(lease.name))
        epoch = max(_int(counter.value) if counter else 0, record.epoch if record else 0) + 1
        try:
            if counter is None:
                await self.bucket.create(epoch_key(lease.name), str(epoch).encode())
            else:
                await self.bucket.update(epoch_key(lease.name), str(epoch).encode(), last=counter.revision)
        except RevisionConflict:
            return  # another instance is acquiring it
        sent = time.monotonic()
        if sent - started > self.renew_seconds:
            return  # a stale claim (see the module docstring); the next tick tries again
        now = time.time()
        value = LeaseRecord(lease.name, self.instance, epoch, now, now, now + self.lease_seconds).encode()
        try:
            if entry is None:
                revision = await self.bucket.create(lease.name, value, ttl=self.lease_seconds)
            else:
                revision = await self.bucket.update(lease.name, value, last=entry.revision, ttl=self.lease_seconds)
        except RevisionConflict:
            return
        lease.gain(epoch, revision, sent + self.lease_seconds - self.margin, now)
        log.info("%s: lease acquired by %s (epoch %d)", lease.name, self.instance, epoch)

    async def _renew(self, lease: Lease) -> None:
        if not lease.valid():
            lease.lose("its lease was not renewed in time")
            return
        sent = time.monotonic()
        now = time.time()
        value = LeaseRecord(lease.name, self.instance, lease.epoch, lease.acquired_at, now, now + self.lease_seconds)
        try:
            lease.revision = await self.bucket.update(lease.name, value.encode(), last=lease.revision,
                                                      ttl=self.lease_seconds)
        except RevisionConflict:
            await self._lost_to(lease)
            return
        if lease.held:
            lease.deadline = sent + self.lease_seconds - self.margin

    async def _lost_to(self, lease: Lease) -> None:
        """Steps down after a refused renew, saying why: released (then waits a lease period), or taken over."""
        entry = await self.bucket.get(lease.name)
        record = LeaseRecord.decode(entry.value) if entry is not None else None
        if record is not None and not record.owner and record.released_from == self.instance:
            lease.not_before = time.monotonic() + self.lease_seconds
            lease.lose(f"released by {record.released_by}")
        elif entry is not None and record is not None and record.owner == self.instance and record.released_by:
            # A release asked through another instance: step down first, then free the record, so
            # the next owner starts only once this one has stopped (no overlap to fence).
            lease.not_before = time.monotonic() + self.lease_seconds
            lease.lose(f"released by {record.released_by}")
            now = time.time()
            free = replace(record, owner="", released_from=self.instance, renewed_at=now,
                           expires_at=now + self.lease_seconds)
            with contextlib.suppress(RevisionConflict):  # else its TTL frees it
                await self.bucket.update(lease.name, free.encode(), last=entry.revision, ttl=self.lease_seconds)
        elif record is not None and record.owner:
            lease.lose(f"taken over by {record.owner} (epoch {record.epoch})")
        else:
            lease.lose("expired")

    async def release(self, name: str, actor: str) -> LeaseRecord | None:
        """Releases interface `name`'s lease whoever holds it; returns the record released, or
        None when no one holds it. `RevisionConflict` when it changed meanwhile (try again)."""
        entry = await self.bucket.get(name)
        record = LeaseRecord.decode(entry.value) if entry is not None else None
        if entry is None or record is None or not record.owner:
            return None
        now = time.time()
        mine = self._leases.get(name)
        if mine is not None and record.owner == self.instance:
            mine.not_before = time.monotonic() + self.lease_seconds
            mine.lose(f"released by {actor}")
            free = replace(record, owner="", released_from=record.owner, released_by=actor, renewed_at=now,
                           expires_at=now + self.lease_seconds)
            await self.bucket.update(name, free.encode(), last=entry.revision, ttl=self.lease_seconds)
            return record
        # Held by another instance: the request keeps its owner, so no one else takes the lease
        # before the owner has seen it (at its next renew: it steps down, then frees the record)
        # or, if the owner is gone, before the record expires.
        asked = replace(record, released_from=record.owner, released_by=actor, renewed_at=now,
                        expires_at=now + self.lease_seconds)
        await self.bucket.update(name, asked.encode(), last=entry.revision, ttl=self.lease_seconds)
        return record

    async def close(self) -> None:
        """At shutdown, after the pipelines finished: hands every held lease over at once."""
        for lease in self._leases.values():
            if not lease.held:
                continue
            lease.lose("shutting down", quiet=True)
            now = time.time()
            free = LeaseRecord(lease.name, "", lease.epoch, now, now, now + self.lease_seconds,
                               released_by=self.instance)
            try:
                await self.bucket.update(lease.name, free.encode(), last=lease.revision, ttl=self.lease_seconds)
            except StoreError as exc:  # it expires by itself
                log.info("%s: lease not handed over at shutdown (%s); it expires", lease.name, exc.reason)


async def list_leases(bucket: Bucket) -> list[LeaseRecord]:
    """Every lease record now in the bucket (expired ones are gone), by interface name."""
    names = sorted(key for key in await bucket.keys() if "." not in key)
    found = await asyncio.gather(*(bucket.get(key) for key in names))
    records = [LeaseRecord.decode(entry.value) for entry in found if entry is not None]
    return [record for record in records if record is not None]


async def while_held(lease: Lease, work: Callable[[asyncio.Event], Awaitable[None]], stopping: asyncio.Event,
                     ) -> None:
    """Runs ``work(stop)`` each time this instance holds `lease`, until `stopping` is set.

    ``stop`` is set when `stopping` is or the lease is lost; a `LeaseLost` raised by a fenced
    write ends that run as well (the unit in hand is dropped unwritten, and the next owner
    resumes from the stored checkpoint or manifest).
    """
    while not stopping.is_set():
        if not await lease.wait_held(stopping):
            return
        stop = asyncio.Event()

        relay_task = asyncio.create_task(_relay(stop, stopping, lease))
        try:
            await work(stop)
        except LeaseLost:
            lease.lose("a fenced write was refused")
        finally:
            relay_task.cancel()


async def _relay(stop: asyncio.Event, stopping: asyncio.Event, lease: Lease) -> None:
    await _first(stopping.wait(), lease.wait_lost())
    stop.set()


async def _first(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _int(data: bytes) -> int:
    try:
        return int(data)
    except ValueError:
        return 0
