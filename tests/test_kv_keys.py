"""`Bucket.keys()` (router/store/kv.py) against a real nats-server, right while keys are written.

nats-py's `KeyValue.keys()` (a watch) now and then answers "no keys" or leaves out a key being
rewritten when a write lands during the listing; `Bucket.keys()` reads its own consumer until
nothing is pending. Here: every listing beside a rewriter and a deleter holds every key that
exists throughout and none that stays deleted; empty and tombstone-only buckets list nothing; a
20,000-key bucket lists whole; an R3 bucket lists through every node of a cluster; the
listing's consumer is gone afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.config import NatsConfig
from router.embedded_nats import EmbeddedNats
from router.store import Bucket, Store, connect
from tests.conftest import wait_for
from tests.nats_cluster import nats_cluster

pytestmark = pytest.mark.integration

STABLE = [f"stable.{i:03d}" for i in range(300)]
"""Written before the listings and rewritten throughout them: always live."""
FLAPPING = [f"flap.{i:02d}" for i in range(20)]
"""Deleted and created again throughout the listings: either answer is right."""
GONE = [f"gone.{i:02d}" for i in range(20)]
"""Deleted (ten of them purged) before the listings: never listed."""


@contextlib.asynccontextmanager
async def opened(url: str, replicas: int = 1) -> AsyncIterator[Store]:
    cfg = NatsConfig(url=url, publish_timeout_seconds=5.0, replicas=replicas)
    store = Store(await connect(cfg, [url]), cfg, fast=False)
    try:
        await store.ensure()
        yield store
    finally:
        await store.close()


async def consumers_of(store: Store, bucket: str) -> int:
    return (await store._js.stream_info(f"KV_{bucket}")).state.consumer_count


async def put_all(bucket: Bucket, keys: list[str], value: bytes = b"v") -> None:
    """Many writes in flight at once (the store connection pipelines them)."""
    for start in range(0, len(keys), 500):
        await asyncio.gather(*(bucket.put(key, value) for key in keys[start:start + 500]))


@pytest.mark.parametrize("history", [1, 5])
async def test_every_listing_beside_writers_holds_every_stable_key(nats_server: EmbeddedNats, history: int) -> None:
    """300 listings while one task rewrites the stable keys round and round and another deletes
    and re-creates the flapping ones. History 5 too: buckets made with more history (the GL
    days bucket) keep older revisions the listing reads past."""
    name = f"ficus-keys-h{history}"
    async with opened(nats_server.url) as store, opened(nats_server.url) as writers_store:
        bucket = await store.kv(name, history=history)
        writers = await writers_store.kv(name, history=history)
        await put_all(bucket, STABLE + FLAPPING + GONE)
        for key in GONE[:10]:
            await bucket.delete(key)
        for key in GONE[10:]:
            await bucket._kv.purge(key)
        writing = True
        rewrites = flaps = 0

        async def rewriter() -> None:
            nonlocal rewrites
            while writing:
                await writers.put(STABLE[rewrites % len(STABLE)], b"again %d" % rewrites)
                rewrites += 1

        async def flapper() -> None:
            nonlocal flaps
            while writing:
                key = FLAPPING[flaps % len(FLAPPING)]
                await writers.delete(key)
                await writers.put(key, b"back")
                flaps += 1

        tasks = [asyncio.create_task(rewriter()), asyncio.create_task(flapper())]
        try:
            await wait_for(lambda: rewrites > 50 and flaps > 10, 30)
            for n in range(300):
                listed = await bucket.keys()
                assert len(listed) == len(set(listed))
                missing = set(STABLE) - set(listed)
                assert not missing, f"listing {n}: {len(missing)} stable keys missing, e.g. {sorted(missing)[:3]}"
                assert not set(listed) & set(GONE), f"listing {n}: deleted keys listed"
                assert set(listed) <= set(STABLE) | set(FLAPPING)
        finally:
            writing = False
            await asyncio.gather(*tasks)
        assert rewrites > 300 and flaps > 30, (rewrites, flaps)  # the writers ran beside the listings
        assert await consumers_of(store, name) == 0  # each listing removed its consumer


async def test_empty_and_tombstone_only_buckets_list_nothing(nats_server: EmbeddedNats) -> None:
    async with opened(nats_server.url) as store:
        bucket = await store.kv("ficus-keys-empty", history=1)
        assert await bucket.keys() == []
        await put_all(bucket, ["a", "b", "c"])
        assert await bucket.keys() == ["a", "b", "c"]
        await bucket.delete("a")
        await bucket._kv.purge("b")
        await bucket.delete("c")
        assert await bucket.keys() == []  # three tombstones (two deletes, a purge), no live key
        await bucket.put("b", b"again")
        assert await bucket.keys() == ["b"]
        assert await consumers_of(store, "ficus-keys-empty") == 0


async def test_a_large_bucket_lists_whole(nats_server: EmbeddedNats) -> None:
    """20,000 keys (two pull batches and more), some deleted: every live key, once."""
    keys = [f"file.{i:06d}" for i in range(20_000)]
    async with opened(nats_server.url) as store:
        bucket = await store.kv("ficus-keys-large", history=1)
        await put_all(bucket, keys)
        for key in keys[::1000]:
            await bucket.delete(key)
        want = sorted(set(keys) - set(keys[::1000]))
        assert await bucket.keys() == want
        assert await consumers_of(store, "ficus-keys-large") == 0


async def test_listings_from_every_node_of_a_cluster(tmp_path: Path) -> None:
    """An R3 bucket on three routed servers, listed through each node in turn beside a rewriter:
    the listing's consumer lives on one node, its pulls may arrive through another."""
    async with nats_cluster(tmp_path / "cluster") as cluster:
        urls = [node.url for node in cluster.nodes]
        async with opened(urls[0], replicas=3) as writers_store:
            writers = await writers_store.kv("ficus-keys-r3", history=1)
            await put_all(writers, STABLE[:100])
            writing, rewrites = True, 0

            async def rewriter() -> None:
                nonlocal rewrites
                while writing:
                    await writers.put(STABLE[rewrites % 100], b"again")
                    rewrites += 1

            task = asyncio.create_task(rewriter())
            try:
                for url in urls:
                    async with opened(url, replicas=3) as store:
                        bucket = await store.kv("ficus-keys-r3", history=1)
                        for _ in range(20):
                            assert await bucket.keys() == STABLE[:100]
            finally:
                writing = False
                await task
            assert rewrites > 20
