"""End to end for issue 10 items 3, 4 and 8: real sockets, a real nats-server, the
simulated legacy engine (which echoes MSH-10 exactly as sent), the real API."""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiohttp
import pytest

from legacy.simulated_engine import SimulatedEngine
from protocols.mllp import CARRIAGE_RETURN, END_BLOCK, START_BLOCK
from router import names, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.mllp_client import MllpTestClient, msa
from tests.test_service_mllp import read_raw, read_subject

pytestmark = pytest.mark.integration


def with_stray(payload: bytes, byte: bytes) -> bytes:
    """``payload`` with a block byte planted inside its first FT1 (or second) segment."""
    at = payload.index(b"\rFT1|") + 12 if b"\rFT1|" in payload else payload.index(b"\r") + 8
    return payload[:at] + byte + payload[at:]


def with_control_id(payload: bytes, control_id: bytes) -> bytes:
    msh, rest = payload.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[9] = control_id
    return b"|".join(fields) + b"\r" + rest


@pytest.mark.parametrize("stray", [END_BLOCK, START_BLOCK], ids=["0x1C", "0x0B"])
async def test_modern_stray_block_byte_is_ar_dead_lettered_and_kept_whole(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, stray: bytes
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    good = simulate.dft(21, lines=4)
    broken = with_stray(good, stray)
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-charges"].listener.port
        async with MllpTestClient(port) as client:
            await client.send_raw(START_BLOCK + broken + END_BLOCK + CARRIAGE_RETURN)
            reply = await client.reply()
            assert msa(reply)[0] == "AR"
            assert msa(reply)[1] == good.split(b"\r")[0].split(b"|")[9].decode()
            assert b"\rERR|" in reply
            assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 0  # nothing published
            # The sender fixes it and sends again, same MSH-10: stored and AA (not a "reused id").
            assert msa(await client.exchange(good))[0] == "AA"
        letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("his-charges"))
        assert [x["kind"] for x in letters] == ["rejected"]
        assert "malformed MLLP frame" in letters[0]["reason"]
        assert letters[0]["raw"].startswith("jetstream://FICUS_RAW/")
        assert broken in await read_raw(nats_server.url, "his-charges")  # every byte kept
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 4
        listener = svc.interfaces["his-charges"].listener
        assert listener is not None and listener.stats.malformed == 1
        assert svc.interfaces["his-charges"].stats.reused_control_ids == 0


async def test_legacy_stray_end_block_is_never_forwarded_nor_acknowledged(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(
            nats_server.url,
            [
                {
                    "name": "his-charges",
                    "mapping": "hl7v2.dft_p03",
                    "route": "shadow",
                    "legacy": f"mllp://127.0.0.1:{engine.port}",
                }
            ],
        )
        good = simulate.dft(22, lines=4)
        async with service_factory(cfg) as svc:
            port = svc.interfaces["his-charges"].listener.port
            async with MllpTestClient(port) as client:
                reply = await client.exchange(with_stray(good, END_BLOCK))
                assert msa(reply)[0] == "AR"
                assert engine.received == []  # the engine never saw a truncated message
                assert (await client.exchange(good)) == engine.replies[-1]
            assert engine.received == [good]


ODD_IDS = [b"ID\\F\\1", b"\\X41\\B", b"ID^2", b"ID2 "]


async def test_legacy_ack_matches_msh10_as_sent_so_each_message_reaches_the_engine_once(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(
            nats_server.url,
            [
                {
                    "name": "his-adt",
                    "mapping": "hl7v2.adt",
                    "route": "legacy",
                    "legacy": f"mllp://127.0.0.1:{engine.port}",
                }
            ],
        )
        sent = [with_control_id(simulate.adt(30 + n), cid) for n, cid in enumerate(ODD_IDS)]
        async with service_factory(cfg) as svc:
            port = svc.interfaces["his-adt"].listener.port
            async with MllpTestClient(port) as client:
                for payload, cid in zip(sent, ODD_IDS, strict=True):
                    reply = await client.exchange(payload)
                    assert reply == engine.replies[-1]  # the engine's own AA, handed back
                    assert f"MSA|AA|{cid.decode()}\r".encode() in reply
            assert engine.received == sent  # each exactly once: no AR, so no resend
            assert svc.interfaces["his-adt"].stats.legacy_errors == 0


async def test_modern_msa2_echoes_msh10_as_sent(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-adt", "mapping": "hl7v2.adt", "route": "modern"}])
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-adt"].listener.port
        async with MllpTestClient(port) as client:
            for n, cid in enumerate(ODD_IDS):
                reply = await client.exchange(with_control_id(simulate.adt(40 + n), cid))
                assert reply is not None
                assert b"\rMSA|AA|" + cid + b"\r" in reply


async def test_connection_cap_refuses_idle_hogs_while_senders_and_api_keep_working(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(
        nats_server.url, [{"name": "his-adt", "mapping": "hl7v2.adt", "route": "modern", "max_connections": 4}]
    )
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        listener = svc.interfaces["his-adt"].listener
        assert listener is not None
        async with contextlib.AsyncExitStack() as stack:
            sender = await stack.enter_async_context(MllpTestClient(listener.port))
            assert msa(await sender.exchange(simulate.adt(50)))[0] == "AA"
            hogs = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(40)]
            await wait_for(lambda: listener.stats.refused >= 37)
            assert listener.stats.connections_open == 4
            assert msa(await sender.exchange(simulate.adt(51)))[0] == "AA"  # the sender keeps working
            resp = await http.get(f"{svc.api_url}/api/v1/interfaces")
            assert resp.status == 200
            view = (await resp.json())["interfaces"][0]
            assert view["listener"]["refused"] >= 37
            metrics = await (await http.get(f"{svc.api_url}/metrics")).text()
            refused = re.search(r'^ficus_mllp_connections_refused_total\{interface="his-adt"\} (\S+)$', metrics, re.M)
            assert refused is not None and float(refused.group(1)) >= 37, "refusals are visible to monitoring"
            assert 'ficus_mllp_connections_open{interface="his-adt"} 4.0' in metrics
            for _, writer in hogs:
                writer.close()
            await wait_for(lambda: listener.stats.connections_open == 1)
            late = await stack.enter_async_context(MllpTestClient(listener.port))
            assert msa(await late.exchange(simulate.adt(52)))[0] == "AA"  # room again
