"""Leases against a real nats-server: acquire, renew, expiry and takeover, release, hand-over at
shutdown, and the fenced checkpoint and manifest writes (router/leases.py).

Short leases (3 s, renewed every second) keep the tests fast; every wait is on a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from router import names
from router.config import NatsConfig
from router.embedded_nats import EmbeddedNats
from router.leases import Lease, LeaseLost, LeaseRecord, Leases, list_leases, while_held
from router.manifest import FileEntry, Manifest
from router.odbc_pipeline import CheckpointStore
from router.store import Bucket, RevisionConflict, Store, connect
from tests.conftest import wait_for
from wrappers.watermark import Checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
LEASE, RENEW = 3.0, 1.0
BOUND = LEASE + RENEW + 1.0
"""The takeover bound, and the TTL rounded up to whole seconds (1 s at most)."""


@contextlib.asynccontextmanager
async def stores(url: str, count: int) -> AsyncIterator[list[Store]]:
    cfg = NatsConfig(url=url)
    opened = [Store(await connect(cfg, [url]), cfg) for _ in range(count)]
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


async def leases_of(store: Store, instance: str, *, sole: bool = False) -> Leases:
    return Leases(await store.kv(names.KV_LEASES, history=1), instance, LEASE, RENEW, sole=sole)


@contextlib.asynccontextmanager
async def running(*all_leases: Leases) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(leases.run()) for leases in all_leases]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def record(bucket: Bucket, name: str) -> LeaseRecord | None:
    entry = await bucket.get(name)
    return LeaseRecord.decode(entry.value) if entry is not None else None


async def test_one_owner_renews_past_its_lease_and_the_other_takes_over_within_the_bound(
    nats_server: EmbeddedNats,
) -> None:
    async with stores(nats_server.url, 2) as (sa, sb):
        a, b = await leases_of(sa, "node-a"), await leases_of(sb, "node-b")
        la = a.lease("lab-drop")
        await a.tick()
        lb = b.lease("lab-drop")
        await b.tick()
        assert (a.held(), b.held()) == (["lab-drop"], [])
        assert (la.epoch, la.valid(), lb.valid()) == (1, True, False)
        stored = await record(a.bucket, "lab-drop")
        assert stored is not None and (stored.owner, stored.epoch) == ("node-a", 1)

        # Renewed every second, it outlives its lease three times over; the other never gets it.
        async with running(a, b):
            until = time.monotonic() + 3 * LEASE
            await wait_for(lambda: time.monotonic() > until or b.held(), timeout=3 * LEASE + 5)
            assert (a.held(), b.held()) == (["lab-drop"], [])
            stopped = time.monotonic()
            # The owner stops renewing (as if killed): its record expires on the server.
        await wait_for(lambda: not la.valid(), timeout=LEASE)
        with pytest.raises(LeaseLost):
            la.check()
        async with running(b):
            await wait_for(lambda: b.held() == ["lab-drop"], timeout=BOUND + 2)
            took = time.monotonic() - stopped
        assert took <= BOUND, f"takeover after {took:.1f}s"
        assert lb.epoch == 2
        # The former owner's renewal is a compare-and-set on its old revision: refused, it steps down.
        la.held, la.deadline = True, time.monotonic() + LEASE  # as if its clock said it still held it
        await a.tick()
        assert not la.held and a.held() == []
        listed = {r.interface: r for r in await list_leases(b.bucket)}
        assert listed["lab-drop"].owner == "node-b" and listed["lab-drop"].epoch == 2


async def test_a_release_hands_over_and_the_released_instance_waits_one_lease(nats_server: EmbeddedNats) -> None:
    async with stores(nats_server.url, 2) as (sa, sb):
        a, b = await leases_of(sa, "node-a"), await leases_of(sb, "node-b")
        la, lb = a.lease("erp-usage"), b.lease("erp-usage")
        await a.tick()
        assert a.held() == ["erp-usage"]
        released = await b.release("erp-usage", "ops-oncall")  # through the other instance
        assert released is not None and released.owner == "node-a"
        await a.tick()  # its renewal is refused: it steps down and waits a lease period
        assert not la.held and la.not_before > time.monotonic()
        await b.tick()
        assert b.held() == ["erp-usage"] and lb.epoch == 2
        # Released by its own holder: it steps down at once; the released instance does not retake it.
        assert (await b.release("erp-usage", "ops-oncall")) is not None
        assert b.held() == [] and not lb.held
        await b.tick()
        assert b.held() == []
        # node-a, released from a moment ago, waits its own lease period too; then it takes it.
        await a.tick()
        assert a.held() == []
        await wait_for(lambda: time.monotonic() > la.not_before, timeout=LEASE + 1)
        await a.tick()
        assert b.held() == [] and a.held() == ["erp-usage"] and la.epoch == 3
        assert await a.release("nobody-polls-this", "ops") is None


async def test_a_clean_shutdown_hands_the_lease_over_at_once_and_a_sole_instance_takes_over(
    nats_server: EmbeddedNats,
) -> None:
    async with stores(nats_server.url, 3) as (sa, sb, sc):
        a, b = await leases_of(sa, "node-a"), await leases_of(sb, "node-b")
        a.lease("x")
        b.lease("x")
        await a.tick()
        await a.close()
        await b.tick()
        assert b.held() == ["x"]
        # A sole instance (the embedded server's) takes a lease recorded for another owner at once.
        c = await leases_of(sc, "node-b-restarted", sole=True)
        lc = c.lease("x")
        await c.tick()
        assert c.held() == ["x"] and lc.epoch == 3


@dataclass
class StaleFence:
    """A former owner paused between its lease check and its write (the check passed then)."""

    epoch: int

    def check(self) -> None:
        return None


async def test_a_new_owner_fences_the_checkpoint_and_a_former_owners_write_is_refused(
    nats_server: EmbeddedNats,
) -> None:
    async with stores(nats_server.url, 2) as (sa, sb):
        a, b = await leases_of(sa, "node-a"), await leases_of(sb, "node-b")
        la = a.lease("erp")
        await a.tick()
        kv_a, kv_b = await sa.kv(names.KV_CHECKPOINTS), await sb.kv(names.KV_CHECKPOINTS)
        old = CheckpointStore(kv_a, "erp", fence=la)
        assert await old.load() == Checkpoint()
        assert await old.save(Checkpoint(last_key=10)) == Checkpoint(last_key=10)
        # node-a stalls; its lease expires and node-b takes over.
        lb = b.lease("erp")
        await wait_for(lambda: not la.valid(), timeout=LEASE)
        async with running(b):
            await wait_for(lambda: lb.valid(), timeout=BOUND + 2)
        new = CheckpointStore(kv_b, "erp", fence=lb)
        assert await new.load() == Checkpoint(last_key=10)  # and stored again under epoch 2
        entry = await kv_b.get("erp")
        assert entry is not None and b'"epoch":2' in entry.value
        # Waking up, node-a's own check refuses the write...
        with pytest.raises(LeaseLost):
            await old.save(Checkpoint(last_key=20))
        # ...and had it passed its check just before the pause, the compare-and-set refuses it.
        stale = CheckpointStore(kv_a, "erp", fence=StaleFence(la.epoch))
        stale.revision = old.revision
        with pytest.raises(LeaseLost):
            await stale.save(Checkpoint(last_key=20))
        assert await new.save(Checkpoint(last_key=30)) == Checkpoint(last_key=30)
        assert (await CheckpointStore(kv_b, "erp").load()) == Checkpoint(last_key=30)


async def test_manifest_writes_are_compare_and_set_and_never_over_a_later_epoch(nats_server: EmbeddedNats) -> None:
    async with stores(nats_server.url, 1) as (store,):
        kv = await store.kv(names.KV_FILES, history=1)
        first, second = Manifest(kv, fence=StaleFence(1)), Manifest(kv, fence=StaleFence(2))
        entry = FileEntry("lab", "a.csv", 10, 1.0, "ab" * 32)
        await first.record(entry)  # the former owner wrote its entry, then paused
        resumed = await second.by_content("lab", "ab" * 32)
        assert resumed is not None and resumed.epoch == 1
        resumed.next_record = 5
        await second.record(resumed)  # the new owner's write: epoch 2
        entry.next_record = 3
        # The former owner's compare-and-set on its stale revision fails; read again, the entry
        # is of a later epoch: it is not the owner any more.
        with pytest.raises(LeaseLost):
            await first.record(entry)
        # Another writer of the same epoch between a read and a write: the conflict itself.
        racing = Manifest(kv, fence=StaleFence(2))
        mine = await racing.by_content("lab", "ab" * 32)
        assert mine is not None
        await second.record(resumed)
        with pytest.raises(RevisionConflict):
            await racing.record(mine)
        stored = await Manifest(kv).by_content("lab", "ab" * 32)
        assert stored is not None and (stored.next_record, stored.epoch) == (5, 2)


async def test_work_runs_only_while_the_lease_is_held(nats_server: EmbeddedNats) -> None:
    async with stores(nats_server.url, 1) as (store,):
        leases = await leases_of(store, "node-a")
        lease = leases.lease("poll")
        runs: list[str] = []

        async def work(stop: asyncio.Event) -> None:
            runs.append("started")
            await stop.wait()
            runs.append("stopped")

        stopping = asyncio.Event()
        async with running(leases):
            task = asyncio.create_task(while_held(lease, work, stopping))
            await wait_for(lambda: runs == ["started"], timeout=5)
            assert (await leases.release("poll", "ops")) is not None
            await wait_for(lambda: runs == ["started", "stopped"], timeout=5)
            assert not lease.held
            stopping.set()
            await asyncio.wait_for(task, 5)
        assert isinstance(lease, Lease) and runs == ["started", "stopped"]
