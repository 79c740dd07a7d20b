"""A control id reused with other content (issue 10, item 2), on a real service and nats-server.

A re-send is the same bytes under the same MSH-10; other bytes under the same MSH-10 from
the same sender are another message. Before the fix the second one got AA while its events
were dropped as JetStream duplicates of the first one's.
"""

from __future__ import annotations

import aiohttp
import pytest

from legacy.simulated_engine import SimulatedEngine
from router import names, simulate
from router.embedded_nats import EmbeddedNats
from router.mllp_pipeline import same_message
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.mllp_client import MllpTestClient, msa
from tests.test_service_mllp import read_raw, read_subject

pytestmark = pytest.mark.integration
REASON = "control id reused with different content"
CHARGES = "canonical.revenue.charge.posted"


def two_messages_one_control_id() -> tuple[bytes, bytes]:
    """Two different DFTs (other account, other charges) that both carry MSH-10 DFT00000001."""
    first = simulate.dft(1, lines=2)
    second = simulate.dft(2, lines=1).replace(b"|DFT00000002|", b"|DFT00000001|", 1)
    assert first != second and b"|DFT00000001|" in second
    return first, second


async def test_modern_mode_rejects_and_keeps_a_reused_control_id(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    first, second = two_messages_one_control_id()
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        port = svc.interfaces["his-charges"].listener.port
        stats = svc.interfaces["his-charges"].stats
        async with MllpTestClient(port) as client:
            assert msa(await client.exchange(first)) == ("AA", "DFT00000001")
            code, echoed = msa(await client.exchange(second))
            assert code in ("AE", "AR") and echoed == "DFT00000001", "never AA for a message not stored"
            assert msa(await client.exchange(first)) == ("AA", "DFT00000001"), "a re-send is still acknowledged"
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL, CHARGES) == 2, "only the first's charges"
        raw = await read_raw(nats_server.url, "his-charges")
        assert raw == [first, second], "both messages are kept in the raw archive, the re-send once"
        letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("his-charges"))
        assert [(x["kind"], x["reason"], x["unit"], x["mode"]) for x in letters] == [
            ("rejected", REASON, "DFT00000001", "modern")]
        assert letters[0]["raw"].startswith("jetstream://FICUS_RAW/")
        assert stats.reused_control_ids == 1
        text = await (await http.get(f"{svc.api_url}/metrics")).text()
        assert 'ficus_reused_control_ids_total{interface="his-charges"} 1.0' in text
        # Replaying it would publish under the first message's event ids: refused, it stays kept.
        (listed,) = (await (await http.get(f"{svc.api_url}/api/v1/dlq")).json())["dead_letters"]
        resp = await http.post(f"{svc.api_url}/api/v1/dlq/{listed['id']}/replay")
        assert resp.status == 409 and REASON in (await resp.json())["error"]
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL, CHARGES) == 2


async def test_enhanced_mode_answers_cr_for_a_reused_control_id(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    first, second = (m.replace(b"|P|2.5.1\r", b"|P|2.5.1|||AL|NE\r", 1) for m in two_messages_one_control_id())
    async with service_factory(cfg) as svc, MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
        assert msa(await client.exchange(first))[0] == "CA"
        assert msa(await client.exchange(second))[0] == "CR"


async def test_shadow_mode_keeps_and_dead_letters_a_reused_control_id(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    first, second = two_messages_one_control_id()
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "shadow",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc:
            stats = svc.interfaces["his-charges"].stats
            async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
                assert await client.exchange(first) == engine.replies[0]
                assert await client.exchange(second) == engine.replies[1], "the legacy engine's own ACK"
            assert engine.received == [first, second], "the legacy engine gets both, as today"
            await wait_for(lambda: stats.parity.samples == 2)
            assert stats.parity.disagree == 1
            assert stats.parity.recent[0]["detail"] == REASON
            assert stats.reused_control_ids == 1
            await wait_for(lambda: stats.dead_lettered == 1)
        assert await stream_count(nats_server.url, names.STREAM_SHADOW) == 2, "only the first's charges"
        assert await read_raw(nats_server.url, "his-charges") == [first, second]
        letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("his-charges"))
        assert [(x["kind"], x["reason"], x["mode"]) for x in letters] == [("rejected", REASON, "shadow")]


async def test_legacy_mode_keeps_the_raw_copy_of_a_reused_control_id(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    first, second = two_messages_one_control_id()
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "legacy",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc:
            async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
                for payload in (first, second, first):
                    assert await client.exchange(payload) is not None
            assert engine.received == [first, second, first]
            assert svc.interfaces["his-charges"].stats.reused_control_ids == 1
        assert await read_raw(nats_server.url, "his-charges") == [first, second]


def restamped(message: bytes, stamp: bytes) -> bytes:
    """The same message with another MSH-7, as an engine that rebuilds MSH on a retry sends it."""
    msh, sep, rest = message.partition(b"\r")
    fields = msh.split(b"|")
    fields[6] = stamp
    return b"|".join(fields) + sep + rest


def test_same_message_ignores_only_msh7() -> None:
    first, second = two_messages_one_control_id()
    assert same_message(first, first)
    assert same_message(first, restamped(first, b"20991231235959"))
    assert not same_message(first, second)
    assert not same_message(first, restamped(second, first.split(b"|")[6]))
    assert not same_message(first, first.replace(b"|P|", b"|T|", 1)), "another MSH field differs"
    assert not same_message(first, first + b"NTE|1||x\r")


async def test_a_resend_with_a_new_msh7_is_a_resend_not_a_reused_id(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    first, _ = two_messages_one_control_id()
    again = restamped(first, b"20991231235959")
    assert again != first
    async with service_factory(cfg) as svc, MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
        assert msa(await client.exchange(first)) == ("AA", "DFT00000001")
        assert msa(await client.exchange(again)) == ("AA", "DFT00000001")
        assert svc.interfaces["his-charges"].stats.reused_control_ids == 0
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL, CHARGES) == 2, "no event twice"
    assert await stream_count(nats_server.url, names.STREAM_DLQ) == 0
    assert await read_raw(nats_server.url, "his-charges") == [first]
