"""The store package against a real nats-server: Ficus types and errors out of KV, the object
store and streams (issue 12 item 5). The publishing paths are in tests/test_publisher.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router import names
from router.config import NatsConfig
from router.embedded_nats import EmbeddedNats
from router.store import (
    Entry,
    NotFound,
    Outgoing,
    RevisionConflict,
    Store,
    StoreError,
    StoreUnavailable,
    connect,
)
from tests.conftest import wait_for


@contextlib.asynccontextmanager
async def opened(url: str, *, fast: bool = True, timeout: float = 5.0) -> AsyncIterator[Store]:
    cfg = NatsConfig(url=url, publish_timeout_seconds=timeout)
    store = Store(await connect(cfg, [url]), cfg, fast=fast)
    try:
        await store.ensure()
        yield store
    finally:
        await store.close()


# -- KV, object store, streams: Ficus types and errors ---------------------------------------

async def test_kv_bucket_answers_in_ficus_types(nats_server: EmbeddedNats) -> None:
    async with opened(nats_server.url) as store:
        kv = await store.kv("ficus-test-kv", history=1)
        assert await kv.get("a") is None
        assert await kv.keys() == []
        rev = await kv.create("a", b"1")
        assert await kv.get("a") == Entry("a", b"1", rev)
        with pytest.raises(RevisionConflict):
            await kv.create("a", b"2")  # exists: the other writer won
        with pytest.raises(RevisionConflict):
            await kv.update("a", b"2", last=rev + 100)
        rev2 = await kv.update("a", b"2", last=rev)
        assert rev2 > rev
        await kv.put("b", b"x")
        assert sorted(await kv.keys()) == ["a", "b"]
        await kv.delete("b")
        assert await kv.get("b") is None
        assert await kv.keys() == ["a"]
        # A deleted key can be created again.
        await kv.create("b", b"y")

        seen: list[Entry] = []

        async def watch() -> None:
            async for entry in kv.watch():
                seen.append(entry)
                if entry.value == b"3":
                    return

        watcher = asyncio.create_task(watch())
        await kv.put("a", b"3")
        await asyncio.wait_for(watcher, 15)
        assert seen[-1].key == "a" and seen[-1].value == b"3"
        assert {e.key for e in seen} >= {"a", "b"}


async def test_object_store_and_messages(nats_server: EmbeddedNats) -> None:
    async with opened(nats_server.url) as store:
        objects = await store.object_store("ficus-test-obj")
        assert not await objects.has("x/1")
        with pytest.raises(NotFound):
            await objects.get("x/1")
        await objects.put("x/1", io.BytesIO(b"raw bytes" * 1000))
        assert await objects.has("x/1")
        assert await objects.get("x/1") == b"raw bytes" * 1000

        subject = names.raw_subject("t")
        before = datetime.now(UTC) - timedelta(seconds=5)
        acks = await store.publish([Outgoing(subject, b"one", "m1", {"H": "v"}),
                                    Outgoing(subject, b"two", "m2")])
        msg = await store.get_msg(names.STREAM_RAW, acks[0].seq)
        assert msg is not None and (msg.seq, msg.subject, msg.data) == (acks[0].seq, subject, b"one")
        assert msg.headers["H"] == "v" and msg.headers[names.HDR_MSG_ID] == "m1"
        assert await store.get_msg(names.STREAM_RAW, 10_000) is None
        async with contextlib.aclosing(store.scan(names.STREAM_RAW, subject, before)) as scanned:
            assert [m.data async for m in scanned] == [b"one", b"two"]


async def test_an_absent_server_is_store_unavailable(tmp_path: Path) -> None:
    """Every door raises Ficus's errors, never nats-py's, while JetStream is away."""
    server = EmbeddedNats(tmp_path / "js")
    await server.start()
    try:
        async with opened(server.url, timeout=1.0) as store:
            kv = await store.kv("ficus-test-kv")
            await kv.put("a", b"1")
            await server.stop()
            for call in (kv.get("a"), kv.put("a", b"2"), kv.keys(),
                         store.get_msg(names.STREAM_RAW, 1), store.read(names.STREAM_RAW, "raw.>")):
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(call, 30)
    finally:
        await server.stop()


def test_errors_are_one_tree() -> None:
    for kind in (StoreUnavailable, NotFound, RevisionConflict):
        assert issubclass(kind, StoreError)
    assert StoreUnavailable("x: TimeoutError").reason == "x: TimeoutError"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_server_down_at_start_is_waited_for_within_the_start_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from router.store import connect

    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    cfg = NatsConfig(url=url, start_timeout_seconds=1.5)
    with pytest.raises(StoreUnavailable) as caught:
        await connect(cfg, [url])
    assert f"{url} not reachable within 1.5s" in caught.value.reason and "ConnectionRefusedError" in caught.value.reason
    waiting = [r for r in caplog.records if "waiting for" in r.getMessage()]
    assert 1 <= len(waiting) <= 2, "one line every few seconds, not one a try"

    # A server that comes up within the bound is connected to.
    server = EmbeddedNats(tmp_path / "late", port=port)
    later = NatsConfig(url=url, start_timeout_seconds=30)
    connecting = asyncio.ensure_future(connect(later, [url]))
    try:
        # The first attempt fails (nothing listens yet) and is said once; then the server comes.
        await wait_for(lambda: len([r for r in caplog.records if "waiting for" in r.getMessage()]) > len(waiting))
        await server.start()
        nc = await asyncio.wait_for(connecting, 30)
        assert nc.is_connected
        await nc.close()
    finally:
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        await server.stop()
