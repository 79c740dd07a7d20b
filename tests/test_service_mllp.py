"""End to end on real sockets and a real nats-server: the hl7-mllp interface in every mode."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest

from legacy.simulated_engine import SimulatedEngine
from router import names, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.mllp_client import MllpTestClient, msa, send_one

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_balances")]
ENVELOPE = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data",
            "ficusinterface", "ficusfacility", "ficusmode", "ficusraw", "ficuscorrelation"}


async def read_subject(url: str, stream: str, subject: str) -> list[dict[str, Any]]:
    """Every message stored on a subject, decoded as JSON."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        out = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    break
                out.append(json.loads(msg.data))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def control_id(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].split(b"|")[9].decode()


async def test_mllp_send_dft_in_modern_mode(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    payload = simulate.dft(4711, lines=2)  # two charges, no credit
    message_file = tmp_path / "dft.hl7"
    message_file.write_bytes(payload.replace(b"\r", b"\r\n"))
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-charges"].listener.port
        cmd = [str(Path(sys.executable).parent / "mllp_send"), "--loose", "-f", str(message_file),
               "-p", str(port), "127.0.0.1"]
        for attempt in (1, 2):  # the second send is a re-send of the same message
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            text = out.decode("latin-1").replace("\n", "\r")
            assert f"MSA|AA|{control_id(payload)}" in text, (attempt, text)
        events = await read_subject(nats_server.url, names.STREAM_CANONICAL, "canonical.revenue.charge.posted")
    assert len(events) == 2, "one event per FT1, and the re-send added none"
    for event in events:
        assert set(event) >= ENVELOPE, ENVELOPE - set(event)
        assert event["specversion"] == "1.0"
        assert event["type"] == "org.ficus.revenue.charge.posted.v1"
        assert event["ficusinterface"] == "his-charges"
        assert event["ficusmode"] == "live"
        assert event["ficusfacility"] == "NORTH"
        assert event["ficusraw"].startswith("jetstream://FICUS_RAW/")
        amount = event["data"]["amount"]
        assert isinstance(amount, str) and amount.replace(".", "").replace("-", "").isdigit()
    assert len({e["id"] for e in events}) == 2
    assert await stream_count(nats_server.url, names.STREAM_RAW) == 1


async def test_legacy_mode_is_byte_identical_and_returns_the_engines_ack(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-adt", "mapping": "hl7v2.adt", "route": "legacy",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc:
            port = svc.interfaces["his-adt"].listener.port
            odd = simulate.adt(1).replace(b"\r", b"\n") + b"  trailing \xe9 bytes\r"
            sent = [simulate.adt(2), odd, b"not hl7 at all"]
            replies = []
            async with MllpTestClient(port) as client:
                for payload in sent:
                    replies.append(await client.exchange(payload))
            assert engine.received == sent
            assert replies[:2] == engine.replies[:2], "the sender gets the legacy engine's own ACK bytes"
            assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 0

            await engine.stop()
            down = simulate.adt(3)
            reply = await send_one(port, down)
            code, echoed = msa(reply)
            assert code != "AA" and echoed == control_id(down)
            raw = await read_raw(nats_server.url, "his-adt")
            assert down in raw, "the raw message is kept while the legacy engine is down"
            assert svc.interfaces["his-adt"].stats.legacy_errors == 1


async def read_raw(url: str, iface: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().subscribe(names.raw_subject(iface), ordered_consumer=True)
        out = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                break
            out.append(msg.data)
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def test_flip_through_api_and_cli_changes_the_next_message(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{
            "name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "legacy",
            "legacy": f"mllp://127.0.0.1:{engine.port}", "parity_min_samples": 3,
        }])
        async with service_factory(cfg) as svc:
            port = svc.interfaces["his-charges"].listener.port
            api = svc.api_url
            assert msa(await send_one(port, simulate.dft(1)))[0] == "AA"
            assert len(engine.received) == 1

            # legacy -> modern directly is refused: no parity evidence yet.
            refused = await asyncio.to_thread(_cli, "routes", "set", "his-charges", "modern",
                                              "--reason", "too early", "--api", api)
            assert refused.returncode != 0 and "parity" in refused.stderr

            import aiohttp
            async with aiohttp.ClientSession() as http:
                resp = await http.put(f"{api}/api/v1/routes/his-charges",
                                      json={"mode": "shadow", "reason": "start shadow"})
                assert resp.status == 200, await resp.text()
            for seq in range(2, 6):
                assert msa(await send_one(port, simulate.dft(seq)))[0] == "AA"
            assert len(engine.received) == 5
            await wait_for(lambda: svc.interfaces["his-charges"].stats.parity.samples >= 4)
            assert svc.interfaces["his-charges"].stats.parity.ratio == 1.0
            assert await stream_count(nats_server.url, names.STREAM_SHADOW) > 0

            flipped = await asyncio.to_thread(_cli, "routes", "set", "his-charges", "modern",
                                              "--reason", "parity ok", "--api", api)
            assert flipped.returncode == 0, flipped.stderr
            assert msa(await send_one(port, simulate.dft(6)))[0] == "AA"
            assert len(engine.received) == 5, "modern: the legacy engine no longer receives it"
            assert await stream_count(nats_server.url, names.STREAM_CANONICAL) > 0

            rollback = await asyncio.to_thread(_cli, "routes", "set", "his-charges", "legacy",
                                               "--reason", "rollback drill", "--api", api)
            assert rollback.returncode == 0, rollback.stderr
            assert msa(await send_one(port, simulate.dft(7)))[0] == "AA"
            assert len(engine.received) == 6

            history = await asyncio.to_thread(_cli, "routes", "history", "his-charges", "--api", api)
            assert history.returncode == 0
            assert [line.split()[1:4] for line in history.stdout.splitlines()] == [
                ["legacy", "->", "shadow"], ["shadow", "->", "modern"], ["modern", "->", "legacy"]]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)


async def test_modern_mode_without_nats_gives_no_aa_and_recovers(
    tmp_path: Path, service_factory: ServiceFactory
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        cfg = make_config(server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
        async with service_factory(cfg) as svc:
            port = svc.interfaces["his-charges"].listener.port
            assert msa(await send_one(port, simulate.dft(1)))[0] == "AA"
            await server.stop()
            reply = await send_one(port, simulate.dft(2))
            assert msa(reply) == ("AR", control_id(simulate.dft(2)))
            await server.start()
            await wait_for(lambda: svc.store is not None and svc.store.connected, timeout=15)
            assert msa(await send_one(port, simulate.dft(2)))[0] == "AA"
            assert msa(await send_one(port, simulate.dft(3)))[0] == "AA"
        assert await stream_count(server.url, names.STREAM_CANONICAL) == 9
    finally:
        await server.stop()


async def test_modern_answers_ar_ae_and_dead_letters(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-charges"].listener.port
        async with MllpTestClient(port) as client:
            code, echoed = msa(await client.exchange(b"hello, not hl7"))
            assert (code, echoed) == ("AR", "")
            adt = simulate.adt(9)
            reply = await client.exchange(adt)
            assert msa(reply) == ("AR", control_id(adt))
            assert b"\rERR|" in reply
            bad = simulate.dft(10).replace(b"|CG|", b"|CG|", 1)
            bad = _break_amount(bad)
            reply = await client.exchange(bad)
            assert msa(reply) == ("AE", control_id(bad))
            assert b"\rERR|" in reply
        letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("his-charges"))
        assert [x["kind"] for x in letters] == ["rejected", "rejected", "untranslatable"]
        assert letters[2]["unit"] == control_id(bad)
        assert letters[2]["raw"].startswith("jetstream://FICUS_RAW/")
        assert "FT1" in letters[2]["reason"]
        assert svc.interfaces["his-charges"].stats.dead_lettered == 3


def _break_amount(payload: bytes) -> bytes:
    segments = payload.split(b"\r")
    for i, seg in enumerate(segments):
        if seg.startswith(b"FT1"):
            fields = seg.split(b"|")
            fields[11] = b"12,x4"
            segments[i] = b"|".join(fields)
            break
    return b"\r".join(segments)


async def test_enhanced_mode_gets_commit_acks(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    payload = simulate.dft(5).replace(b"|P|2.5.1\r", b"|P|2.5.1|||AL|NE\r", 1)
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-charges"].listener.port
        assert msa(await send_one(port, payload)) == ("CA", control_id(payload))
        adt = simulate.adt(6).replace(b"|P|2.5.1\r", b"|P|2.5.1|||AL|NE\r", 1)
        assert msa(await send_one(port, adt))[0] == "CR"


async def test_legacy_path_keeps_flowing_while_nats_is_down(
    tmp_path: Path, service_factory: ServiceFactory
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        async with SimulatedEngine() as engine:
            cfg = make_config(server.url, [{"name": "his-adt", "mapping": "hl7v2.adt", "route": "shadow",
                                            "legacy": f"mllp://127.0.0.1:{engine.port}"}])
            async with service_factory(cfg) as svc:
                port = svc.interfaces["his-adt"].listener.port
                await server.stop()
                payload = simulate.adt(31)
                assert await send_one(port, payload) == engine.replies[0]
                assert engine.received == [payload]
                stats = svc.interfaces["his-adt"].stats
                assert stats.archive_errors == 1
                await wait_for(lambda: stats.shadow_backlog == 0)
                assert stats.parity.samples == 0, "an outage is not evidence against the mapping"
    finally:
        await server.stop()
