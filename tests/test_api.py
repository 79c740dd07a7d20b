"""The HTTP API on a real service: tokens, interfaces, events, dead letters, parity, canary."""

from __future__ import annotations

import aiohttp
import pytest

from legacy.simulated_engine import SimulatedEngine
from router import simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.mllp_client import msa, send_one
from tests.test_service_mllp import _break_amount

pytestmark = pytest.mark.integration
VIEWER = {"Authorization": "Bearer view-secret"}
OPERATOR = {"Authorization": "Bearer op-secret"}
ADMIN = {"Authorization": "Bearer records-admin-secret-0123456789"}


async def test_tokens_events_dlq_and_metrics(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FICUS_TEST_OPERATOR", "op-secret")
    monkeypatch.setenv("FICUS_TEST_ADMIN", "records-admin-secret-0123456789")
    async with SimulatedEngine() as engine:
        cfg = make_config(
            nats_server.url,
            [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern",
              "legacy": f"mllp://127.0.0.1:{engine.port}"}],
            api={"tokens": {"viewer": "view-secret", "operator": "env:FICUS_TEST_OPERATOR"},
                 "clients": [{"name": "records-admin", "role": "admin", "token": "env:FICUS_TEST_ADMIN"}]},
        )
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            api = svc.api_url
            port = svc.interfaces["his-charges"].listener.port
            assert msa(await send_one(port, simulate.dft(1, lines=3)))[0] == "AA"
            assert msa(await send_one(port, _break_amount(simulate.dft(2))))[0] == "AE"

            assert (await http.get(f"{api}/healthz")).status == 200
            ready = await http.get(f"{api}/readyz")
            assert ready.status == 200 and (await ready.json())["ready"] is True
            assert (await http.get(f"{api}/api/v1/interfaces")).status == 401
            assert (await http.get(f"{api}/api/v1/interfaces", headers={"Authorization": "Bearer x"})).status == 401

            resp = await http.get(f"{api}/api/v1/interfaces", headers=VIEWER)
            (iface,) = (await resp.json())["interfaces"]
            assert iface["route"] == "modern"
            assert iface["counts"]["received"] == 2
            assert iface["counts"]["published"] == 3
            assert iface["counts"]["dead_lettered"] == 1
            assert iface["last_message_at"] is not None

            # Message content is the admin's (PRODUCT.md; audited, tests/test_audit.py): not the viewer's
            # nor the operator's.
            assert (await http.get(f"{api}/api/v1/events", headers=VIEWER)).status == 403
            assert (await http.get(f"{api}/api/v1/dlq", headers=VIEWER)).status == 403
            assert (await http.get(f"{api}/api/v1/events", headers=OPERATOR)).status == 403
            resp = await http.get(f"{api}/api/v1/events?type=org.ficus.revenue.charge.posted.v1", headers=ADMIN)
            body = await resp.json()
            assert [e["event"]["type"] for e in body["events"]] == ["org.ficus.revenue.charge.posted.v1"] * 2
            first = body["events"][0]
            one = await (await http.get(f"{api}/api/v1/events/{first['seq']}", headers=ADMIN)).json()
            assert one["event"] == first["event"]
            page = await (await http.get(f"{api}/api/v1/events?after={first['seq']}&limit=1",
                                         headers=ADMIN)).json()
            assert [e["seq"] for e in page["events"]] == [first["seq"] + 1]

            letters = (await (await http.get(f"{api}/api/v1/dlq", headers=ADMIN)).json())["dead_letters"]
            assert len(letters) == 1 and letters[0]["kind"] == "untranslatable"
            letter = await (await http.get(f"{api}/api/v1/dlq/{letters[0]['id']}", headers=ADMIN)).json()
            assert letter["unit"] == "DFT00000002" and letter["facility"] == "NORTH"

            # The viewer may not flip; the operator may.
            flip = {"mode": "legacy", "reason": "rollback drill"}
            assert (await http.put(f"{api}/api/v1/routes/his-charges", json=flip, headers=VIEWER)).status == 403
            assert (await http.put(f"{api}/api/v1/routes/his-charges", json=flip, headers=OPERATOR)).status == 200
            assert msa(await send_one(port, simulate.dft(3)))[0] == "AA"
            assert len(engine.received) == 1

            # /metrics needs a viewer when credentials are configured (Prometheus sends a bearer token).
            assert (await http.get(f"{api}/metrics")).status == 401
            text = await (await http.get(f"{api}/metrics", headers=VIEWER)).text()
            assert 'ficus_received_total{interface="his-charges"} 3.0' in text
            assert 'ficus_dead_lettered_total{interface="his-charges"} 1.0' in text
            # With tokens configured the dashboard needs one too (test_api_hardening.py has the login form).
            assert (await http.get(f"{api}/")).status == 401
            page = await (await http.get(f"{api}/", headers=VIEWER)).text()
            assert "his-charges" in page and "legacy" in page


async def test_shadow_failure_never_reaches_the_sender_and_counts_against_parity(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "shadow",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            port = svc.interfaces["his-charges"].listener.port
            good, bad = simulate.dft(1), _break_amount(simulate.dft(2))
            assert await send_one(port, good) == engine.replies[0]
            assert await send_one(port, bad) == engine.replies[1], "the legacy ACK, whatever Ficus thinks"
            assert engine.received == [good, bad]
            stats = svc.interfaces["his-charges"].stats
            await wait_for(lambda: stats.parity.samples == 2)
            body = await (await http.get(f"{svc.api_url}/api/v1/parity/his-charges")).json()
            assert body["samples"] == 2 and body["agree"] == 1 and body["ratio"] == 0.5
            assert body["recent_disagreements"][0]["unit"] == "DFT00000002"
            letters = (await (await http.get(f"{svc.api_url}/api/v1/dlq")).json())["dead_letters"]
            assert [(x["mode"], x["unit"]) for x in letters] == [("shadow", "DFT00000002")]
            # Parity 0.5 is below the gate: the flip is refused, unless forced.
            flip = {"mode": "modern", "reason": "go live"}
            resp = await http.put(f"{svc.api_url}/api/v1/routes/his-charges", json=flip)
            assert resp.status == 409 and "parity" in (await resp.json())["error"]
            resp = await http.put(f"{svc.api_url}/api/v1/routes/his-charges", json={**flip, "force": True})
            assert resp.status == 200
            history = await (await http.get(f"{svc.api_url}/api/v1/routes/his-charges/history")).json()
            assert history["history"][-1]["forced"] is True


async def test_facility_canary(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "legacy",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            port = svc.interfaces["his-charges"].listener.port
            flip = {"mode": "modern", "reason": "canary SOUTH", "facility": "SOUTH", "force": True}
            assert (await http.put(f"{svc.api_url}/api/v1/routes/his-charges", json=flip)).status == 200
            assert msa(await send_one(port, simulate.dft(1, facility="NORTH")))[0] == "AA"
            assert msa(await send_one(port, simulate.dft(2, facility="SOUTH")))[0] == "AA"
            assert len(engine.received) == 1, "only NORTH still goes to the legacy engine"
            assert svc.interfaces["his-charges"].stats.published == 3


async def test_schemas_endpoint(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        body = await (await http.get(f"{svc.api_url}/api/v1/schemas")).json()
        assert "org.ficus.revenue.charge.posted.v1" in body["schemas"]
        assert "org.ficus.claims.claim.adjudicated.v1" in body["schemas"]
        assert body["asyncapi"]["asyncapi"] == "3.0.0"
        assert "canonical.revenue.charge.posted" in body["asyncapi"]["channels"] or any(
            ch.get("address") == "canonical.revenue.charge.posted" for ch in body["asyncapi"]["channels"].values())
        one = await http.get(f"{svc.api_url}/api/v1/schemas/org.ficus.revenue.charge.posted.v1")
        assert one.status == 200 and (await one.json())["properties"]["type"]
        assert (await http.get(f"{svc.api_url}/api/v1/schemas/org.ficus.nope.v1")).status == 404


async def test_parity_evidence_survives_a_restart(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "shadow",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}", "parity_min_samples": 3}])
        async with service_factory(cfg) as svc:
            port = svc.interfaces["his-charges"].listener.port
            for seq in range(1, 4):
                assert msa(await send_one(port, simulate.dft(seq)))[0] == "AA"
            await wait_for(lambda: svc.interfaces["his-charges"].stats.parity.samples == 3)
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            body = await (await http.get(f"{svc.api_url}/api/v1/parity/his-charges")).json()
            assert body["samples"] == 3 and body["ratio"] == 1.0
            flip = {"mode": "modern", "reason": "evidence kept across the restart"}
            assert (await http.put(f"{svc.api_url}/api/v1/routes/his-charges", json=flip)).status == 200
