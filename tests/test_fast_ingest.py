"""JetStream fast-ingest batches (router/fast_ingest.py, ADR-50) against a real nats-server 2.14+:
stored whole and in order under flow control, a replayed batch committed with ``seq: 0`` and
nothing stored twice, a lost message failing the batch, a stream without ``allow_batched``
reported as unsupported, a refused first message storing nothing of the window written behind
it, and the store choosing, using and falling back from the path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from router import names
from router.config import NatsConfig
from router.embedded_nats import EmbeddedNats
from router.fast_ingest import BatchFailed, FastIngest, Unsupported
from router.store import INGEST, INGEST_OFF, Outgoing, Store, StoreUnavailable, connect

pytestmark = pytest.mark.integration


async def _stream(nc: Client, name: str = "T", batched: bool = True) -> None:
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"], duplicate_window=600,
                                                 allow_batched=True if batched else None))


def _items(n: int, prefix: str = "id", subject: str = "t") -> list[Outgoing]:
    return [Outgoing(f"{subject}.{i % 7}", f"payload {i}".encode(), f"{prefix}-{i}", {"Ficus-Interface": "csv"})
            for i in range(n)]


async def test_batch_is_stored_whole_and_in_order_under_flow_control(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await _stream(nc)
        # Acks every 10 messages, at most 2 windows ahead: the writer waits for the server 100 times.
        ingest = FastIngest(nc, flow=10)
        committed = await ingest.publish(_items(1000), 5)
        assert (committed.stream, committed.seq, committed.count) == ("T", 1000, 1000)
        js = nc.jetstream()
        assert (await js.stream_info("T")).state.messages == 1000
        for seq in (1, 500, 1000):
            msg = await js.get_msg("T", seq)
            assert msg.data == f"payload {seq - 1}".encode()
            assert msg.headers == {"Nats-Msg-Id": f"id-{seq - 1}", "Ficus-Interface": "csv"}
        assert (ingest.batches, ingest.messages) == (1, 1000)
        single = await ingest.publish(_items(1, "one"), 5)  # a batch of one commits at once
        assert (single.seq, single.count) == (1001, 1)
    finally:
        await nc.close()


async def test_a_replayed_batch_commits_with_seq_zero_and_stores_nothing_twice(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await _stream(nc)
        ingest = FastIngest(nc)
        items = _items(300)
        await ingest.publish(items, 5)
        again = await ingest.publish(items, 5)  # a chunk read again after a crash: all duplicates
        assert (again.seq, again.count) == (0, 300)
        # Half seen before, half new (a crash mid-chunk): the new half is stored, once.
        mixed = await ingest.publish([*items[150:], *_items(150, "new")], 5)
        assert (mixed.seq, mixed.count) == (450, 300)
        assert (await nc.jetstream().stream_info("T")).state.messages == 450
    finally:
        await nc.close()


async def test_a_message_lost_on_the_way_fails_the_batch(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await _stream(nc)
        ingest = FastIngest(nc)
        client: Any = nc
        send: Callable[[bytes, bool], Awaitable[None]] = client._send_command

        async def losing(cmd: bytes, priority: bool = False) -> None:
            await send(_without(cmd, b".fail.5.1.$FI "), priority)  # batch message 5 never reaches the server

        client._send_command = losing
        with pytest.raises(BatchFailed, match="gap"):
            await ingest.publish(_items(20), 5)
        client._send_command = send
        # The retry (same Msg-Ids) stores what is missing; nothing is there twice.
        retried = await ingest.publish(_items(20), 5)
        assert retried.count == 20
        assert (await nc.jetstream().stream_info("T")).state.messages == 20
    finally:
        await nc.close()


def _without(commands: bytes, marker: bytes) -> bytes:
    """``commands`` (HPUBs written together) without the one whose first line holds ``marker``."""
    kept: list[bytes] = []
    at = 0
    while at < len(commands):
        line_end = commands.index(b"\r\n", at)
        line = commands[at:line_end]
        end = line_end + 2
        if line.startswith(b"HPUB "):
            end += int(line.rsplit(b" ", 1)[1]) + 2
        if marker not in line:
            kept.append(commands[at:end])
        at = end
    return b"".join(kept)


async def test_a_stream_without_allow_batched_is_unsupported(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await _stream(nc, batched=False)
        with pytest.raises(Unsupported):
            await FastIngest(nc).publish(_items(50), 5)
        # The first window went before the first answer: the server refused every message of it.
        assert (await nc.jetstream().stream_info("T")).state.messages == 0
    finally:
        await nc.close()


async def test_a_refused_first_message_stores_none_of_the_window_sent_behind_it(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"], duplicate_window=600,
                                                     allow_batched=True, max_msg_size=256))
        items = _items(50)
        too_big = Outgoing(items[0].subject, b"x" * 1000, items[0].msg_id, items[0].headers)
        with pytest.raises(BatchFailed):
            await FastIngest(nc).publish([too_big, *items[1:]], 5)
        # The batch ended at its first message; the 49 behind it were refused as an unknown batch.
        assert (await nc.jetstream().stream_info("T")).state.messages == 0
        committed = await FastIngest(nc).publish(items, 5)
        assert (committed.seq, committed.count) == (50, 50)
    finally:
        await nc.close()


async def _store(url: str, **nats: Any) -> Store:
    cfg = NatsConfig(url=url, **{"fast_ingest": True, **nats})
    store = Store(await connect(cfg, [url]), cfg)
    await store.ensure()
    return store


async def test_store_chooses_fast_ingest_and_stores_a_chunk_across_streams(nats_server: EmbeddedNats) -> None:
    store = await _store(nats_server.url)
    try:
        assert store.ingest_mode == INGEST
        events = _items(120, "ev", "canonical.charge")
        letters = _items(9, "dl", "dlq.csv")
        deltas = _items(2, "ld", "ledger.csv")  # below INGEST_MIN: published one by one
        fenced = 0

        def fence() -> None:
            nonlocal fenced
            fenced += 1

        await store.ingest([*events, *letters, *deltas], fence)
        assert fenced >= 3  # before the first of each piece of every batch
        assert store.ingest_batches == 1 + 2  # the self-test, events, letters
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            assert (await js.stream_info(names.STREAM_CANONICAL)).state.messages == 120
            assert (await js.stream_info(names.STREAM_DLQ)).state.messages == 9
            assert (await js.stream_info(names.STREAM_LEDGER)).state.messages == 2
            assert (await js.stream_info(names.STREAM_CANONICAL)).config.allow_batched
            # A stream edited behind Ficus's back: that stream falls back, the chunk is still stored.
            info = await js.stream_info(names.STREAM_DLQ)
            info.config.allow_batched = False
            await js.update_stream(info.config)
            await store.ingest(_items(30, "dl2", "dlq.csv"))
            assert (await js.stream_info(names.STREAM_DLQ)).state.messages == 39
            assert store.ingest_batches == 3
        finally:
            await nc.close()
    finally:
        await store.close()


async def test_a_lease_lost_mid_batch_stops_it(nats_server: EmbeddedNats) -> None:
    store = await _store(nats_server.url)
    try:
        calls = 0

        class Lost(Exception):
            pass

        def fence() -> None:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise Lost

        with pytest.raises(Lost):
            await store.ingest(_items(200, "ev", "canonical.charge"), fence)
        nc = await nats.connect(nats_server.url)
        try:
            stored = (await nc.jetstream().stream_info(names.STREAM_CANONICAL)).state.messages
        finally:
            await nc.close()
        assert stored <= 50  # nothing after the fence refused
    finally:
        await store.close()


async def test_off_in_the_config_keeps_streams_and_chunks_as_before(nats_server: EmbeddedNats) -> None:
    store = await _store(nats_server.url, fast_ingest=False)
    try:
        assert store.ingest_mode == INGEST_OFF
        await store.ingest(_items(60, "ev", "canonical.charge"))
        assert store.ingest_batches == 0
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info(names.STREAM_CANONICAL)
            assert info.state.messages == 60 and not info.config.allow_batched
        finally:
            await nc.close()
    finally:
        await store.close()


async def test_store_ingest_raises_store_unavailable_when_a_batch_fails(nats_server: EmbeddedNats) -> None:
    store = await _store(nats_server.url)
    try:
        # A subject no stream takes, in a batch of the canonical stream: the server cannot store it.
        items = [*_items(20, "ev", "canonical.charge")]
        items[10] = Outgoing("canonical", b"no stream takes this", "odd")
        with pytest.raises(StoreUnavailable):
            await store.ingest(items)
    finally:
        await store.close()
