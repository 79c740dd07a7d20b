"""Issue 11 item 10: parity evidence is per window. A window starts when an interface (or a
facility override) enters shadow; samples from an earlier stint in shadow -- before a flip to
modern and a rollback -- do not count toward the gate. The gate's refusal and the audit record
of an accepted flip name the window judged (start and sample count); the window survives a
restart (KV bucket `ficus-parity`)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from legacy.simulated_engine import SimulatedEngine
from router import parity, simulate
from router.embedded_nats import EmbeddedNats
from router.routes import Route
from router.stats import ParityStats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.mllp_client import msa, send_one

IFACE = "his-charges"


def charges(engine_port: int, **extra: Any) -> dict[str, Any]:
    return {"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "shadow",
            "legacy": f"mllp://127.0.0.1:{engine_port}", "parity_min_samples": 3, **extra}


async def flip(http: aiohttp.ClientSession, api: str | None, mode: str, **extra: Any) -> aiohttp.ClientResponse:
    return await http.put(f"{api}/api/v1/routes/{IFACE}", json={"mode": mode, "reason": f"to {mode}", **extra})


async def last_flip(http: aiohttp.ClientSession, api: str | None) -> dict[str, Any]:
    history = (await (await http.get(f"{api}/api/v1/routes/{IFACE}/history")).json())["history"]
    record: dict[str, Any] = history[-1]
    return record


@pytest.mark.integration
async def test_rollback_then_shadow_then_modern_is_judged_on_the_new_window_only(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [charges(engine.port)])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            api = svc.api_url
            port = svc.interfaces[IFACE].listener.port
            stats = svc.interfaces[IFACE].stats
            for seq in range(1, 4):
                assert msa(await send_one(port, simulate.dft(seq)))[0] == "AA"
            await wait_for(lambda: stats.parity.samples == 3)
            assert (await flip(http, api, "modern")).status == 200
            first = await last_flip(http, api)

            # The reproduction: modern -> legacy -> shadow -> modern within a second.
            assert (await flip(http, api, "legacy")).status == 200
            assert (await flip(http, api, "shadow")).status == 200
            to_shadow = await last_flip(http, api)
            refused = await flip(http, api, "modern")
            body = await refused.json()
            assert refused.status == 409, body
            assert first["parity"]["samples"] == 3 and first["parity"]["ratio"] == 1.0
            assert "0 samples" in body["error"] and "window" in body["error"], body
            assert to_shadow["at"] in body["error"], "the refusal names the window it judged"
            assert body["parity"]["samples"] == 0 and body["parity"]["started_at"] == to_shadow["at"]

            shown = await (await http.get(f"{api}/api/v1/parity/{IFACE}")).json()
            window = shown["window"]
            assert (window["started_at"], window["samples"], window["ratio"]) == (to_shadow["at"], 0, None)
            assert window["flip"]["revision"] == to_shadow["revision"]
            assert window["flip"]["entered"] == ["interface: legacy -> shadow"]
            assert shown["previous_window"]["samples"] == 3
            assert shown["samples"] == 0, "the top-level counts are the current window's"

            # New evidence in the new window: accepted, and the audit record names the window.
            for seq in range(4, 7):
                assert msa(await send_one(port, simulate.dft(seq)))[0] == "AA"
            await wait_for(lambda: stats.parity.samples == 3)
            accepted = await flip(http, api, "modern")
            assert accepted.status == 200
            assert (await accepted.json())["parity"]["started_at"] == to_shadow["at"]
            judged = (await last_flip(http, api))["parity"]
            assert judged["started_at"] == to_shadow["at"] and judged["samples"] == 3
            assert judged["revision"] == to_shadow["revision"] and judged["ratio"] == 1.0

            # Rolled back and forced straight through: allowed, and the record says on what.
            assert (await flip(http, api, "legacy")).status == 200
            assert (await flip(http, api, "shadow")).status == 200
            forced = await flip(http, api, "modern", force=True)
            assert forced.status == 200
            record = await last_flip(http, api)
            assert record["forced"] is True and record["parity"]["samples"] == 0


@pytest.mark.integration
async def test_the_window_survives_a_restart(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [charges(engine.port, route="legacy")])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            assert (await flip(http, svc.api_url, "shadow")).status == 200
            started = (await last_flip(http, svc.api_url))["at"]
            port = svc.interfaces[IFACE].listener.port
            for seq in range(1, 3):
                assert msa(await send_one(port, simulate.dft(seq)))[0] == "AA"
            await wait_for(lambda: svc.interfaces[IFACE].stats.parity.samples == 2)
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            window = (await (await http.get(f"{svc.api_url}/api/v1/parity/{IFACE}")).json())["window"]
            assert (window["started_at"], window["samples"]) == (started, 2)
            refused = await flip(http, svc.api_url, "modern")
            assert refused.status == 409 and "2 samples" in (await refused.json())["error"]


def _route(mode: str, revision: int, facilities: dict[str, str] | None = None) -> Route:
    return Route.model_validate({"mode": mode, "facilities": facilities or {}, "revision": revision,
                                 "changed_at": f"2026-01-01T00:00:{revision:02d}.000+00:00", "actor": "op"})


def _gathered(n: int) -> ParityStats:
    stats = ParityStats()
    for i in range(n):
        stats.record(legacy_ok=True, modern_ok=True, unit=f"U{i}", detail="")
    return stats


def test_a_facility_entering_shadow_starts_a_window() -> None:
    stats = _gathered(5)
    track = parity.tracker({IFACE: stats})
    track(IFACE, _route("shadow", 1), _route("shadow", 2, {"NORTH": "modern"}))
    assert stats.samples == 5, "a facility leaving shadow keeps the evidence"
    track(IFACE, _route("shadow", 2, {"NORTH": "modern"}), _route("legacy", 3, {"NORTH": "shadow"}))
    assert stats.samples == 0 and stats.window_flip is not None
    assert stats.window_flip["entered"] == ["facility NORTH: modern -> shadow"]
    assert stats.window_started_at == "2026-01-01T00:00:03.000+00:00"


def test_a_restart_after_the_route_changed_elsewhere_starts_a_window() -> None:
    saved = _gathered(4)
    saved.route_revision = 7
    kept = ParityStats()
    parity.restore_one(kept, saved.saved_form(), _route("shadow", 7))
    assert kept.samples == 4
    moved = ParityStats()
    parity.restore_one(moved, saved.saved_form(), _route("shadow", 9))
    assert moved.samples == 0 and moved.previous_window is not None and moved.previous_window["samples"] == 4
    assert moved.window_started_at == "2026-01-01T00:00:09.000+00:00"
    legacy = ParityStats()
    parity.restore_one(legacy, {"samples": 30, "agree": 30, "disagree": 0}, _route("shadow", 3))
    assert legacy.samples == 0, "evidence saved before windows existed cannot be placed in one"
