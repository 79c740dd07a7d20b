"""Issue 18: parity evidence is shared by the instances of a cluster. Senders behind a load
balancer reach whichever instance is up, so each instance sees part of the shadow traffic: the
gate, `GET /api/v1/parity/{iface}` and the console judge the window summed over every instance
(router/parity.py `Shared`), each instance saving its own counts under its own KV key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from legacy.simulated_engine import SimulatedEngine
from router import parity, simulate
from router.embedded_nats import EmbeddedNats
from router.service import Service
from router.stats import ParityStats
from tests.conftest import make_config, wait_for
from tests.mllp_client import send_one
from tests.test_service_mllp import _break_amount

IFACE = "his-charges"


@asynccontextmanager
async def instance(nats_url: str, tmp_path: Path, name: str, engine_port: int, **extra: Any,
                   ) -> AsyncIterator[Service]:
    cfg = make_config(nats_url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "shadow",
                                  "legacy": f"mllp://127.0.0.1:{engine_port}", "parity_min_samples": 3}],
                      state_dir=str(tmp_path / name), cluster={"instance": name}, **extra)
    async with Service(cfg) as svc:
        yield svc


@asynccontextmanager
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real receiver of alert notices: its URL and what it was sent."""
    posts: list[dict[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", posts
    finally:
        await runner.cleanup()


def _port(svc: Service) -> int:
    listener = svc.interfaces[IFACE].listener
    assert listener is not None
    return listener.port


async def _parity(http: aiohttp.ClientSession, svc: Service) -> dict[str, Any]:
    async with http.get(f"{svc.api_url}/api/v1/parity/{IFACE}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


@pytest.mark.integration
async def test_the_gate_judges_the_samples_of_every_instance(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with SimulatedEngine() as engine, AsyncExitStack() as stack, aiohttp.ClientSession() as http, \
            webhook() as (hook_url, notices):
        # a judges a parity alert: below 0.9 over 3 samples or more.
        alerting = {"evaluate_seconds": 0.2, "delivery_attempts": 1,
                    "webhooks": [{"name": "hook", "url": hook_url, "format": "json"}]}
        alerts = [{"name": "charges-parity", "kind": "parity", "notify": ["hook"], "interfaces": [IFACE],
                   "min_samples": 3, "below": 0.9}]
        a = await stack.enter_async_context(instance(nats_server.url, tmp_path, "ficus-a", engine.port,
                                                     alerting=alerting, alerts=alerts))
        b = await stack.enter_async_context(instance(nats_server.url, tmp_path, "ficus-b", engine.port))
        # Three agreeing samples reach a; the one disagreement (the legacy engine took a message
        # Ficus cannot translate) reaches b.
        for seq in (1, 2, 3):
            await send_one(_port(a), simulate.dft(seq))
        await send_one(_port(b), _break_amount(simulate.dft(4)))
        assert len(engine.received) == 4
        await wait_for(lambda: a.interfaces[IFACE].stats.parity.samples == 3)
        # a alone would pass its gate (3 samples, all agreeing); the cluster's window does not.

        async def both_counted() -> dict[str, Any] | None:
            body = await _parity(http, a)
            return body if body["samples"] == 4 else None

        body = await wait_for(both_counted, timeout=30)  # b saves its counts every few seconds
        assert (body["agree"], body["disagree"], body["ratio"]) == (3, 1, 0.75)
        assert body["instances"] == {"ficus-a": 3, "ficus-b": 1}
        assert [d["unit"] for d in body["recent_disagreements"]] == ["DFT00000004"]
        assert (await _parity(http, b))["samples"] == 4, "every instance answers for the cluster"
        async with http.put(f"{a.api_url}/api/v1/routes/{IFACE}", json={"mode": "modern", "reason": "go"}) as resp:
            refused = await resp.json()
            assert resp.status == 409, refused
        assert "parity 0.7500" in refused["error"] and "(4 samples)" in refused["error"]
        assert refused["parity"]["samples"] == 4
        # The console's preview of that flip judges the same window, and so do its overview (the
        # others' samples as read at a's last save round) and a's parity alert.
        async with http.get(f"{a.api_url}/console/interfaces/{IFACE}/gate", params={"mode": "modern"}) as resp:
            preview = await resp.text()
        assert "The gate refuses" in preview and "0.7500" in preview, preview
        await wait_for(lambda: a.running.parity_now(IFACE).samples == 4, timeout=30)
        async with http.get(f"{a.api_url}/") as resp:
            overview = await resp.text()
        assert "0.750 (4)" in overview
        firing = await wait_for(lambda: [n for n in notices if n.get("notice") == "firing"], timeout=30)
        assert "0.7500 over 4 samples" in firing[0]["summary"], firing[0]

        # b stops; c starts under a new name (the default name changes at every start): c gathers
        # in the same window, and b's saved samples still count.
        await stack.aclose()
    async with SimulatedEngine() as engine, AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        c = await stack.enter_async_context(instance(nats_server.url, tmp_path, "ficus-c", engine.port))
        await send_one(_port(c), simulate.dft(5))
        await wait_for(lambda: c.interfaces[IFACE].stats.parity.samples == 1)
        body = await _parity(http, c)
        assert body["instances"] == {"ficus-a": 3, "ficus-b": 1, "ficus-c": 1}
        assert (body["samples"], body["disagree"]) == (5, 1)


def _saved(samples: int, agree: int, started: str, revision: int, route_revision: int) -> dict[str, Any]:
    stats = ParityStats(samples=samples, agree=agree, disagree=samples - agree, window_started_at=started,
                        window_flip={"revision": revision}, route_revision=route_revision)
    return stats.saved_form()


def test_only_the_same_window_is_summed() -> None:
    own = ParityStats(samples=2, agree=2, window_started_at="T5", window_flip={"revision": 5}, route_revision=6)
    others = {
        f"{IFACE}.b": _saved(3, 3, "T5", 5, 6),            # the same window: counted
        f"{IFACE}.old": _saved(40, 40, "T1", 1, 2),        # an earlier window: never counted
        f"{IFACE}.lagging": _saved(7, 0, "T5", 5, 5),      # has not seen route revision 6 yet: not counted
        IFACE: _saved(1, 0, "T5", 5, 6),                   # saved before instances had keys: one more instance
    }
    view = parity.merged(own, others, IFACE, "a")
    assert (view.samples, view.agree, view.disagree) == (6, 5, 1)
    assert view.instances == {"a": 2, "b": 3, "(saved before instances had keys)": 1}
    assert own.samples == 2, "this instance's own counts are what it saves"


def test_keys_are_kv_keys() -> None:
    assert parity.key_of("his-charges", "host:1234") == "his-charges.host=1234"
