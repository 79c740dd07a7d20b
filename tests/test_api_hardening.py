"""The API against hostile and careless clients (issue 10, items 9, 10, 12-15), on a real service.

Every request here goes over a real socket to a real Service on a real nats-server; the
malformed ones are written byte by byte (`raw_request`) so that nothing in a client
library cleans them up first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import aiohttp
import nats
import pytest

from legacy.simulated_engine import SimulatedEngine
from router import names, simulate
from router.api import make_app
from router.config import ApiConfig, ConfigError
from router.embedded_nats import EmbeddedNats
from router.service import Service
from tests.conftest import ServiceFactory, make_config
from tests.mllp_client import msa, send_one

pytestmark = pytest.mark.integration
VIEWER = {"Authorization": "Bearer view-secret"}
OPERATOR = {"Authorization": "Bearer op-secret"}
TOKENS = {"tokens": {"viewer": "view-secret", "operator": "op-secret"}}


def _charges(engine: SimulatedEngine | None = None, route: str = "legacy", **extra: Any) -> dict[str, Any]:
    iface: dict[str, Any] = {"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": route, **extra}
    if engine is not None:
        iface["legacy"] = f"mllp://127.0.0.1:{engine.port}"
    return iface


async def raw_request(api: str, method: str, target: bytes, headers: dict[bytes, bytes] | None = None,
                      body: bytes | None = None) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 request written as bytes; (status, headers, body) of the answer."""
    host, port = api.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: " + host.encode(), b"Connection: close"]
        for key, value in (headers or {}).items():
            lines.append(key + b": " + value)
        if body is not None:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, rest


# --- item 9: no open API on the network -------------------------------------------------

def test_a_non_loopback_api_without_tokens_is_a_config_error() -> None:
    for listen in ("0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080", "ficus.example.org:8080"):
        with pytest.raises(ConfigError) as err:
            make_config("nats://127.0.0.1:1", [], api={"listen": listen})
        (problem,) = err.value.problems
        assert problem.startswith("api") and "api.tokens" in problem and "api.insecure" in problem
    for listen in ("127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080", "localhost:8080", ":8080"):
        assert make_config("nats://127.0.0.1:1", [], api={"listen": listen}).api.listen == listen
    # Tokens on the network need TLS too (tests/test_api_identity.py serves HTTPS), or api.insecure.
    with pytest.raises(ConfigError) as err:
        make_config("nats://127.0.0.1:1", [], api={"listen": "0.0.0.0:8080", **TOKENS})
    assert "api.tls" in str(err.value) and "api.insecure" in str(err.value)
    assert make_config("nats://127.0.0.1:1", [], api={"listen": "0.0.0.0:8080", "insecure": True, **TOKENS}).api.tokens
    assert make_config("nats://127.0.0.1:1", [], api={"listen": "0.0.0.0:8080", "insecure": True}).api.insecure


async def test_the_service_refuses_an_open_api_on_the_network(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [_charges(route="modern")])
    # A config that did not come through validation (built in code) is refused as well.
    bad = cfg.model_copy(update={"api": ApiConfig.model_construct(listen="0.0.0.0:0", tokens={}, insecure=False)})
    with pytest.raises(ConfigError) as err:
        async with service_factory(bad):
            pass
    assert "api.tokens" in str(err.value)


async def test_an_insecure_api_is_logged_loudly_at_every_start(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(nats_server.url, [_charges(route="modern")], api={"listen": "0.0.0.0:0", "insecure": True})
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ficus.api"):
            async with service_factory(cfg):
                pass
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "api.insecure" in r.getMessage()]
        assert len(warnings) == 1


# --- item 10: the dashboard needs a token when tokens are configured ---------------------

async def test_dashboard_needs_a_token_and_escapes_what_it_shows(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    planted = "<script>alert('PLANTED')</script>"
    cfg = make_config(nats_server.url, [_charges(route="modern")], api=TOKENS)
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        svc.interfaces["his-charges"].stats.last_error = planted
        resp = await http.get(f"{svc.api_url}/")
        page = await resp.text()
        assert resp.status == 401
        assert "PLANTED" not in page and "his-charges" not in page
        assert "<form" in page, "the login form"
        assert (await http.get(f"{svc.api_url}/healthz")).status == 200
        # /metrics needs a viewer when credentials are configured (README, role matrix).
        assert (await http.get(f"{svc.api_url}/metrics")).status == 401
        assert (await http.get(f"{svc.api_url}/metrics", headers=VIEWER)).status == 200
        assert (await http.get(f"{svc.api_url}/readyz")).status in (200, 503)

        # A bearer token works, and what is shown is escaped.
        page = await (await http.get(f"{svc.api_url}/", headers=VIEWER)).text()
        assert "his-charges" in page
        assert "&lt;script&gt;alert(&#x27;PLANTED&#x27;)&lt;/script&gt;" in page and planted not in page

        # The login form: a wrong token is refused, the right one gives an HttpOnly Strict cookie.
        bad = await http.post(f"{svc.api_url}/login", data={"token": "nope"}, allow_redirects=False)
        assert bad.status == 401 and "set-cookie" not in bad.headers
        good = await http.post(f"{svc.api_url}/login", data={"token": "view-secret"}, allow_redirects=False)
        assert good.status == 303
        cookie = good.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "view-secret" not in cookie
        session = cookie.split(";", 1)[0]
        page = await (await http.get(f"{svc.api_url}/", headers={"Cookie": session})).text()
        assert "his-charges" in page and "PLANTED" in page and planted not in page
        # The dashboard's cookie opens the dashboard only, not the API.
        assert (await http.get(f"{svc.api_url}/api/v1/interfaces", headers={"Cookie": session})).status == 401
        out = await http.post(f"{svc.api_url}/logout", headers={"Cookie": session}, allow_redirects=False)
        assert out.status == 303
        assert (await http.get(f"{svc.api_url}/", headers={"Cookie": session})).status == 401


# --- item 12: bodies validated strictly --------------------------------------------------

async def test_route_bodies_are_validated_strictly(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [_charges(engine, route="shadow")])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            url = f"{svc.api_url}/api/v1/routes/his-charges"
            go = {"mode": "modern", "reason": "go live"}
            for body in ({**go, "force": "false"}, {**go, "force": "true"}, {**go, "force": 1},
                         {**go, "facility": 7}, {**go, "reason": ["PLANTED"]}, {**go, "mode": ["modern"]},
                         {**go, "mode": "MODERN"}, {**go, "colour": "PLANTED"}):
                resp = await http.put(url, json=body)
                text = await resp.text()
                assert resp.status == 400, (body, text)
                assert "PLANTED" not in text and "error" in json.loads(text)
            assert svc.routes is not None and svc.routes.get("his-charges").mode == "shadow", "gate not bypassed"
            refused = await http.put(url, json={**go, "force": False})
            assert refused.status == 409 and "parity" in (await refused.json())["error"]

            replay = f"{svc.api_url}/api/v1/replay/his-charges"
            for body in ({"since": 5}, {"since": "2026-01-01T00:00:00Z", "extra": 1}, ["2026-01-01"], None):
                assert (await http.post(replay, json=body)).status == 400, body
            ok = await http.post(replay, json={"since": "2026-01-01T00:00:00Z"})
            assert ok.status == 200, await ok.text()


# --- item 13: no 5xx for a malformed request ----------------------------------------------

async def test_malformed_requests_get_4xx_not_5xx(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [_charges(route="modern")])
    async with service_factory(cfg) as svc:
        api = svc.api_url
        assert api is not None
        route = b"/api/v1/routes/his-charges"
        json_type = {b"Content-Type": b"application/json"}
        cases: list[tuple[str, bytes, dict[bytes, bytes], bytes | None, set[int]]] = [
            ("PUT", route, json_type, b"[]", {400}),
            ("PUT", route, json_type, b'"modern"', {400}),
            ("PUT", route, json_type, b"null", {400}),
            ("PUT", route, json_type, b'{"mode": "\xff\xfe"}', {400}),
            ("PUT", route, json_type, b'{"mode": "modern", "reason": "x", "facility": {"a": 1}}', {400}),
            ("POST", b"/api/v1/replay/his-charges", json_type, b"[1]", {400}),
            ("GET", b"/api/v1/interfaces", {b"Authorization": "Bearer é".encode()}, None, {200}),
            ("GET", b"/api/v1/dlq/" + b"9" * 30, {}, None, {404}),
            ("GET", b"/api/v1/events/" + b"9" * 30, {}, None, {404}),
            ("GET", "/api/v1/events/١٢".encode(), {}, None, {400}),
            ("GET", "/api/v1/dlq/²".encode(), {}, None, {400}),
            ("GET", b"/api/v1/dlq?interface=a%20b", {}, None, {400}),
            ("GET", b"/api/v1/events?type=org.ficus.a%20b.c.d.v1", {}, None, {400}),
            ("GET", b"/api/v1/events?type=org.ficus.*.%3E.x.v1", {}, None, {400}),
            ("POST", b"/api/v1/dlq/" + b"9" * 30 + b"/replay", {}, None, {404}),
            ("GET", b"/no/such/path", {}, None, {404}),
        ]
        for method, target, headers, body, expected in cases:
            status, _, answer = await raw_request(api, method, target, headers, body)
            assert status in expected, (method, target, body, status, answer[:300])
        status, head, answer = await raw_request(api, "GET", b"/no/such/path")
        assert b"application/json" in head.lower() and "error" in json.loads(answer)

    tokens = make_config(nats_server.url, [_charges(route="modern")], api=TOKENS)
    async with service_factory(tokens) as svc:
        assert svc.api_url is not None
        for value in ("Bearer é".encode(), b"Bearer \xff\xfe", "Bearer op-secreté".encode()):
            status, _, _ = await raw_request(svc.api_url, "GET", b"/api/v1/interfaces", {b"Authorization": value})
            assert status == 401, value


_PATH_VALUES = ["his-charges", "nope", "a%20b", "%00", "%FF%FE", "9" * 30, "-1", "0", "١٢", "²", "x" * 3000,
                "..%2F..", "org.ficus.revenue.charge.posted.v1", "1"]
_QUERIES = ["", "?interface=a%20b", "?interface=%FF", "?after=" + "9" * 30, "?after=-5", "?limit=1e3",
            "?limit=" + "9" * 30, "?limit=0", "?type=org.ficus.%2A.%3E.a.v1", "?type=x", "?mode=shadow&limit=%00",
            "?interface=his-charges&limit=3", "?after=%D9%A1", "?since=x&interface=" + "y" * 2000]
_BODIES: list[bytes | None] = [
    None, b"", b"[]", b'"x"', b"null", b"0", b"\xff\xfe\xfd", b"{", b"{}", b"[" * 5000, b'{"a": ' * 300,
    b'{"mode": 1}', b'{"mode": "modern", "reason": "r", "facility": 5}', b'{"mode": "modern", "reason": "r", '
    b'"force": "false"}', b'{"mode": "legacy", "reason": "\\ud800"}', b'{"since": 5}', b'{"since": "9999-99-99"}',
    b'{"since": "0001-01-01T00:00:00"}', b'{"since": "9999-12-31T23:59:59+14:00"}', b'{"since": "\\u0000"}',
    b'{"mode": "legacy", "reason": "r", "keep_facilities": "yes"}', b"1e999999", b'{"x": 1e999999}',
]
_HEADERS: list[dict[bytes, bytes]] = [
    {b"Authorization": "Bearer é".encode()}, {b"Authorization": b"Bearer \xff\xfe"}, {b"Authorization": b"Basic x"},
    {b"Authorization": b"Bearer " + b"a" * 6000}, {b"Content-Type": b"text/plain; charset=\xff"},
    {b"Content-Type": b"application/json; charset=utf-16"}, {b"X-Ficus-Actor": "é\u2028".encode()},
    {b"Cookie": b"ficus_session=\xff; x"}, {b"Accept": b"\x00"},
]


async def _fuzz(api: str, auth: dict[bytes, bytes]) -> int:
    """Malformed path params, queries, bodies and headers on every route of the app; returns requests sent."""
    svc_routes = [(r.method, r.resource.canonical) for r in _APP_ROUTES if r.resource is not None]
    assert len(svc_routes) > 10
    sent = 0
    failures: list[str] = []

    async def one(method: str, target: str, headers: dict[bytes, bytes], body: bytes | None) -> None:
        nonlocal sent
        status, _, answer = await raw_request(api, method, target.encode("utf-8"), {**auth, **headers}, body)
        sent += 1
        if status >= 500:
            failures.append(f"{method} {target[:80]} {headers} {body!r:.80}: {status} {answer[:200]!r}")

    for method, canonical in svc_routes:
        if method == "HEAD" or canonical in ("/api/v1/events/stream", "/console/stream"):
            continue  # a live feed never ends; its malformed queries: tests/test_events_api.py
        params = re.findall(r"{(\w+)}", canonical)

        def fill(value: str, template: str = canonical) -> str:
            return re.sub(r"{\w+}", value, template)

        valid = fill("his-charges") if "iface" in params else fill("1")
        for value in _PATH_VALUES if params else []:
            await one(method, fill(value), {}, None)
        for query in _QUERIES:
            await one(method, valid + query, {}, None)
        for body in _BODIES:
            await one(method, valid, {b"Content-Type": b"application/json"}, body)
        for headers in _HEADERS:
            await one(method, valid, headers, b"{}" if method in ("PUT", "POST") else None)
        for other in ("DELETE", "PATCH", "OPTIONS"):
            await one(other, valid, {}, None)
    assert not failures, "\n".join(failures[:20])
    return sent


_APP_ROUTES: list[Any] = []


@pytest.mark.parametrize("with_tokens", [False, True])
async def test_fuzz_every_route_never_answers_5xx(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, with_tokens: bool
) -> None:
    async with SimulatedEngine() as engine:
        # No rate limit here: over a thousand requests from one client is the point (tests/test_api_identity.py
        # has the limit's 429).
        api = {**TOKENS, "rate_limit_per_minute": 0} if with_tokens else {}
        cfg = make_config(nats_server.url, [_charges(engine, route="shadow")], api=api)
        async with service_factory(cfg) as svc:
            assert svc.api_url is not None
            port = svc.interfaces["his-charges"].listener.port
            # Something in every stream: an event, a dead letter, a flip.
            assert msa(await send_one(port, simulate.dft(1)))[0] == "AA"
            _APP_ROUTES[:] = list(make_app(svc.running).router.routes())
            auth = {b"Authorization": b"Bearer op-secret"} if with_tokens else {}
            sent = await _fuzz(svc.api_url, auth)
            assert sent > 1000
            # The service still works.
            status, _, _ = await raw_request(svc.api_url, "GET", b"/api/v1/interfaces", auth)
            assert status == 200


# --- item 14: event listings bounded by limit --------------------------------------------

async def test_events_filtered_by_interface_go_straight_to_the_matches(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    """An interface filter is a subject filter on the event index (router/events_api.py): 4
    matches among 4,000 events come in one page, read without the 3,996 others. Without the
    index (off by default) such a filter is refused rather than answered by a scan."""
    off = make_config(nats_server.url, [_charges(route="modern")])
    async with service_factory(off) as svc, aiohttp.ClientSession() as http:
        resp = await http.get(f"{svc.api_url}/api/v1/events", params={"interface": "his-charges"})
        assert resp.status == 409 and "nats.event_index" in (await resp.json())["error"]
    cfg = make_config(nats_server.url, [_charges(route="modern")], nats={"event_index": True})
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            wanted: list[int] = []
            for i in range(4000):
                iface = "his-charges" if i % 997 == 500 else "other-feed"
                event = {"type": "org.ficus.revenue.charge.posted.v1", "id": f"e{i}", "n": i}
                subject = names.evidx_subject("live", iface, "NORTH", "canonical.revenue.charge.posted")
                ack = await js.publish(subject, json.dumps(event).encode(),
                                       headers={names.HDR_INTERFACE: iface, names.HDR_MSG_ID: f"e{i}"})
                if iface == "his-charges":
                    wanted.append(ack.seq)
        finally:
            await nc.close()
        assert len(wanted) == 4
        body = await (await http.get(f"{svc.api_url}/api/v1/events",
                                     params={"interface": "his-charges", "limit": "5"})).json()
        assert [e["seq"] for e in body["events"]] == wanted and body["more"] is False
        assert body["next_after"] == wanted[-1]

        # A page that fills up does not skip what follows (next_after is the last seq returned).
        body = await (await http.get(f"{svc.api_url}/api/v1/events",
                                     params={"interface": "other-feed", "limit": "3"})).json()
        assert [e["seq"] for e in body["events"]] == [1, 2, 3] and body["next_after"] == 3 and body["more"]


# --- item 15: a rollback without --facility takes every facility back ---------------------

async def test_rollback_clears_facility_overrides_and_says_so(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [_charges(engine, route="legacy")])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            port = svc.interfaces["his-charges"].listener.port
            url = f"{svc.api_url}/api/v1/routes/his-charges"
            canary = {"mode": "modern", "reason": "canary", "facility": "CLINIC07", "force": True}
            assert (await http.put(url, json=canary)).status == 200
            assert msa(await send_one(port, simulate.dft(1, facility="CLINIC07")))[0] == "AA"
            assert engine.received == []

            # Keeping the overrides needs saying so.
            kept = await http.put(url, json={"mode": "legacy", "reason": "x", "keep_facilities": True})
            assert (await kept.json())["route"]["facilities"] == {"CLINIC07": "modern"}

            resp = await http.put(url, json={"mode": "legacy", "reason": "rollback"})
            assert resp.status == 200
            route = (await resp.json())["route"]
            assert (route["mode"], route["facilities"]) == ("legacy", {})
            payload = simulate.dft(2, facility="CLINIC07")
            assert msa(await send_one(port, payload))[0] == "AA"
            assert engine.received == [payload], "CLINIC07 is back on the legacy engine"
            history = (await (await http.get(f"{url}/history")).json())["history"]
            assert history[-1]["cleared_facilities"] == {"CLINIC07": "modern"}
            assert history[-2]["cleared_facilities"] == {}


async def test_service_with_no_api_ignores_api_settings(nats_server: EmbeddedNats) -> None:
    # The API check belongs to the API: a Service run without it (ficus demo's helpers) starts.
    cfg = make_config(nats_server.url, [_charges(route="modern")])
    bad = cfg.model_copy(update={"api": ApiConfig.model_construct(listen="0.0.0.0:0", tokens={}, insecure=False)})
    async with Service(bad, api=False) as svc:
        assert svc.api_url is None
