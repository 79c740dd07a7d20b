"""The hot-path JetStream publisher against a real nats-server: acks in order, dedupe,
refusals, outages, and the rest of the connection left working; `Store.publish` over both
paths (fast and nats-py's publish_async) and the start-up self-test choosing between them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import PubAck, StreamConfig

from router import names
from router.config import NatsConfig
from router.embedded_nats import EmbeddedNats
from router.publisher import FastPublisher, encode_headers, supported
from router.store import FALLBACK, FAST, Outgoing, Store, StoreUnavailable, connect
from tests.conftest import ServiceFactory, freeze, make_config
from tests.test_store import opened


async def _stream(nc: Client) -> None:
    await nc.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"], duplicate_window=60))


async def test_acks_in_order_with_headers_and_dedupe(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        assert supported(nc)
        await _stream(nc)
        fp = FastPublisher(nc)
        items = [Outgoing(f"t.{i}", f"payload {i}".encode(), f"id-{i}", {"Ficus-Interface": "adt"}) for i in range(50)]
        acks = await fp.publish(items, 5)
        assert [a.seq for a in acks] == list(range(1, 51))
        assert {a.stream for a in acks} == {"T"} and not any(a.duplicate for a in acks)
        # The same ids again: JetStream drops them and says so; nothing new is stored.
        again = await fp.publish(items[:3], 5)
        assert [a.duplicate for a in again] == [True, True, True]
        assert [a.seq for a in again] == [1, 2, 3]
        js = nc.jetstream()
        assert (await js.stream_info("T")).state.messages == 50
        msg = await js.get_msg("T", 7)
        assert msg.data == b"payload 6"
        assert msg.headers == {"Nats-Msg-Id": "id-6", "Ficus-Interface": "adt"}
        assert fp.outstanding == 0
    finally:
        await nc.close()


async def test_other_subscriptions_and_requests_still_work(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await _stream(nc)
        fp = FastPublisher(nc)
        await fp.start()
        got: list[bytes] = []

        async def on_msg(msg: Msg) -> None:
            got.append(msg.data)

        sub = await nc.subscribe("plain.x", cb=on_msg)
        await nc.publish("plain.x", b"hello")
        kv = await nc.jetstream().create_key_value(bucket="k")
        await kv.put("a", b"1")
        await fp.publish([Outgoing("t.a", b"x", "m1")], 5)
        assert (await kv.get("a")).value == b"1"
        await nc.flush()
        await asyncio.sleep(0.05)
        assert got == [b"hello"]
        await sub.unsubscribe()
    finally:
        await nc.close()


async def test_subject_without_stream_is_refused_quickly(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await _stream(nc)
        fp = FastPublisher(nc)
        t0 = time.perf_counter()
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await fp.publish([Outgoing("t.ok", b"1", "a"), Outgoing("nostream.x", b"2", "b")], 5)
        assert time.perf_counter() - t0 < 2
        assert fp.outstanding == 0
        with pytest.raises(nats.errors.BadSubjectError):
            await fp.publish([Outgoing("t.bad subject", b"1", "c")], 5)
    finally:
        await nc.close()


def test_header_values_cannot_break_the_framing() -> None:
    block = encode_headers("Nats-Msg-Id", Outgoing("s", b"", "id\r\nX: y", {"Ficus-Control-Id": "a\nb"}))
    assert block == b"NATS/1.0\r\nNats-Msg-Id: idX: y\r\nFicus-Control-Id: ab\r\n\r\n"


def test_pub_ack_shapes() -> None:
    from router.publisher import parse_pub_ack

    ack = parse_pub_ack(b'{"stream":"FICUS_RAW","seq":42}')
    assert isinstance(ack, PubAck) and (ack.stream, ack.seq, ack.duplicate) == ("FICUS_RAW", 42, None)
    ack = parse_pub_ack(b'{"stream":"S","seq":7,"duplicate": true}')
    assert isinstance(ack, PubAck) and (ack.seq, ack.duplicate) == (7, True)
    ack = parse_pub_ack(b'{"stream":"S","domain":"hub","seq":9}')
    assert isinstance(ack, PubAck) and ack.seq == 9
    err = parse_pub_ack(b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}')
    assert isinstance(err, nats.js.errors.APIError) and err.err_code == 10077
    assert isinstance(parse_pub_ack(b"not json"), nats.errors.Error)
    assert isinstance(parse_pub_ack(b'{"stream":"S"}'), nats.errors.Error)


async def test_a_silent_server_times_out_then_acks_again(nats_server: EmbeddedNats) -> None:
    """SIGSTOP keeps the socket open but answers nothing: only the timeout can end the wait."""
    nc = await nats.connect(nats_server.url, ping_interval=60)
    fp = FastPublisher(nc)
    try:
        await _stream(nc)
        pid = nats_server.pid
        assert pid is not None
        try:
            await freeze(pid)
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                await fp.publish([Outgoing("t.a", b"1", "p1"), Outgoing("t.b", b"2", "p2")], 0.5)
            waited = time.perf_counter() - t0
            # The timeout is a lower bound; the upper one only says it ended (a busy machine is slow).
            assert 0.45 < waited < 15.0
            assert fp.outstanding == 0
        finally:
            os.kill(pid, signal.SIGCONT)
        # The same ids again after the outage: stored once whatever the first attempt did.
        acks = await fp.publish([Outgoing("t.a", b"1", "p1"), Outgoing("t.b", b"2", "p2")], 30)
        assert [a.seq for a in acks] == [1, 2]
    finally:
        await fp.stop()
        await nc.close()


async def test_oversize_is_refused_before_it_reaches_the_server(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    fp = FastPublisher(nc)
    try:
        await _stream(nc)
        limit = nc.max_payload
        with pytest.raises(nats.errors.MaxPayloadError):
            await fp.publish([Outgoing("t.big", b"x" * (limit - 10), "big")], 5)
        # The connection is still up and usable: the server never saw the command.
        (ack,) = await fp.publish([Outgoing("t.small", b"x", "small")], 5)
        assert ack.seq == 1 and nc.is_connected
    finally:
        await fp.stop()
        await nc.close()


# -- Store.publish over both paths, and the start-up self-test that chooses (issue 12 item 8) --

PATHS = pytest.mark.parametrize("fast", [True, False], ids=["fast", "publish_async"])


@PATHS
async def test_acks_in_order_and_dedupe_on_both_paths(nats_server: EmbeddedNats, fast: bool) -> None:
    async with opened(nats_server.url, fast=fast) as store:
        assert store.publisher == (FAST if fast else FALLBACK)
        assert (store.fast is not None) is fast
        subject = names.raw_subject("p")
        items = [Outgoing(subject, f"payload {i}".encode(), f"id-{i}", {names.HDR_INTERFACE: "p"})
                 for i in range(40)]
        acks = await store.publish(items)
        assert [a.seq for a in acks] == list(range(acks[0].seq, acks[0].seq + 40))
        assert not any(a.duplicate for a in acks)
        again = await store.publish(items[:3])
        assert [a.duplicate for a in again] == [True] * 3
        assert [a.seq for a in again] == [a.seq for a in acks[:3]]
        with pytest.raises(StoreUnavailable):  # no stream takes the subject
            await store.publish([Outgoing("nostream.x", b"1", "n1")])
        with pytest.raises(StoreUnavailable):  # larger than the server accepts
            await store.publish([Outgoing(subject, b"x" * store.max_payload, "big")])
        (ack,) = await store.publish([Outgoing(subject, b"after", "after")])
        assert ack.seq == acks[-1].seq + 1


@PATHS
async def test_store_outage_is_unavailable_then_recovers(tmp_path: Path, fast: bool) -> None:
    server = EmbeddedNats(tmp_path / "js")
    await server.start()
    try:
        async with opened(server.url, fast=fast, timeout=1.0) as store:
            subject = names.raw_subject("iface")
            (ack,) = await store.publish([Outgoing(subject, b"one", "r1")])
            await server.stop()
            with pytest.raises(StoreUnavailable):
                await store.publish([Outgoing(subject, b"two", "r2")])
            await server.start()
            deadline = time.monotonic() + 15
            while True:
                try:
                    (ack2,) = await store.publish([Outgoing(subject, b"two", "r2")])
                    break
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert ack2.seq == ack.seq + 1
            if store.fast is not None:
                assert store.fast.outstanding == 0
    finally:
        await server.stop()


async def test_self_test_keeps_the_fast_path(nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ficus.store")
    async with opened(nats_server.url) as store:
        assert store.publisher == FAST and store.fast is not None
    assert "publisher: fast (self-test acknowledged)" in caplog.text


async def test_self_test_falls_back_when_the_pub_ack_hook_is_dead(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """A nats-py whose parser no longer calls the hooked method: the fast path's acks never
    arrive. The self-test notices, and every later publish goes through publish_async."""
    caplog.set_level(logging.INFO, logger="ficus.store")
    cfg = NatsConfig(url=nats_server.url, publish_timeout_seconds=1.0)
    nc = await connect(cfg, [nats_server.url])
    store = Store(nc, cfg)
    try:
        assert store.fast is not None
        await store.fast.start()
        del nc._process_msg  # the hook, gone: the class's method runs again
        await store.ensure()
        assert store.publisher == FALLBACK and store.fast is None
        assert "publisher: publish_async; the fast path failed its self-test (TimeoutError)" in caplog.text
        (ack,) = await store.publish([Outgoing(names.raw_subject("x"), b"1", "after-fallback")])
        assert ack.stream == names.STREAM_RAW
    finally:
        await store.close()


async def test_readyz_names_the_publisher(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-adt", "mapping": "hl7v2.adt", "route": "modern"}])
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        resp = await http.get(f"{svc.api_url}/readyz")
        body = await resp.json()
        assert resp.status == 200 and body["ready"] is True
        assert body["publisher"] == FAST
