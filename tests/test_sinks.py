"""Push delivery (router/sinks.py) to a real HTTP receiver started here, playing the ERP.

Events are stored on the canonical stream as the pipelines store them (a separate NATS
connection, `Nats-Msg-Id` = event id); a real Service with `[[sinks]]` delivers them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from router import dlq
from router.config import ConfigError
from router.embedded_nats import EmbeddedNats
from router.sinks import BATCH_TYPE, SINGLE_TYPE, business_key, redeliver_letter, retry_after, subject_filters
from tests.conftest import ServiceFactory, make_config, wait_for

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
CHARGE = "org.ficus.revenue.charge.posted.v1"
ADMIT = "org.ficus.patient.encounter.admitted.v1"


def event(n: int, etype: str = CHARGE, facility: str = "F1") -> dict[str, Any]:
    domain, entity, action = etype.split(".")[2:5]
    return {"specversion": "1.0", "id": f"ev-{n:04d}", "source": "ficus://adt", "type": etype,
            "subject": f"acct-{n % 3}", "time": "2026-01-01T00:00:00Z", "datacontenttype": "application/json",
            "data": {"n": n, "account_number": f"A{n % 3}"}, "ficusinterface": "hl7-in", "ficusfacility": facility,
            "ficusmode": "live",
            "ficusraw": f"jetstream://FICUS_RAW/{n}", "ficuscorrelation": f"c{n}",
            "_subject": f"canonical.{domain}.{entity}.{action}"}


def assert_key_order(received: list[dict[str, Any]]) -> None:
    """Per business key, events arrived in stream order (ids are numbered in stream order)."""
    by_key: dict[str, list[str]] = {}
    for ev in received:
        by_key.setdefault(business_key(ev), []).append(ev["id"])
    for ids in by_key.values():
        assert ids == sorted(ids)


async def store_events(url: str, events: list[dict[str, Any]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for ev in events:
            subject = ev.pop("_subject")
            await js.publish(subject, json.dumps(ev).encode(),
                             headers={"Nats-Msg-Id": ev["id"], "Ficus-Interface": ev["ficusinterface"]})
    finally:
        await nc.close()


@dataclass
class Erp:
    """The receiver: verifies every signature, records every request, answers by plan."""

    plan: Callable[[list[dict[str, Any]], int], web.StreamResponse | None] = lambda _events, _n: None
    requests: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    """Events of accepted requests, in arrival order."""
    bad_signatures: int = 0
    tokens: set[str] | None = None
    """When set, the Bearer token must be one of these (the token endpoint adds and expires them)."""
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            Webhook(SECRET).verify(body, dict(request.headers), json_parse=False)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400)
        if self.tokens is not None:
            auth = request.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") not in self.tokens:
                return web.Response(status=401)
        parsed = json.loads(body)
        events = parsed if isinstance(parsed, list) else [parsed]
        self.requests.append({"at": time.monotonic(), "key": request.headers.get("Idempotency-Key"),
                              "type": request.content_type, "ids": [e["id"] for e in events]})
        answer = self.plan(events, len(self.requests))
        if answer is not None:
            return answer
        self.received.extend(events)
        return web.Response(status=204)


@pytest.fixture
async def erp() -> AsyncIterator[Erp]:
    receiver = Erp()
    app = web.Application()
    async def route(request: web.Request) -> web.StreamResponse:
        return await receiver.handle(request)  # looked up per request: a test may wrap it

    app.router.add_post("/events", route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/events"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def sink(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "erp", "url": url, "signing_secret": SECRET,
            "retry": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.2, **extra.pop("retry", {})}, **extra}


async def test_single_mode_signed_retried_ordered_and_a_400_dead_lettered(
        nats_server: EmbeddedNats, erp: Erp, service_factory: ServiceFactory, tmp_path: Path) -> None:
    failed_once: set[str] = set()
    limited: list[float] = []
    fixed: list[bool] = []

    def plan(events: list[dict[str, Any]], _n: int) -> web.StreamResponse | None:
        ev_id = events[0]["id"]
        if ev_id == "ev-0003" and not fixed:
            return web.Response(status=400, text="unknown account")
        if ev_id in ("ev-0001", "ev-0005") and ev_id not in failed_once:
            failed_once.add(ev_id)
            return web.Response(status=500)
        if ev_id == "ev-0007" and not limited:
            limited.append(time.monotonic())
            return web.Response(status=429, headers={"Retry-After": "1"})
        return None

    erp.plan = plan
    cfg = make_config(nats_server.url, [], state_dir=tmp_path / "state",
                      sinks=[sink(erp.url, filter={"types": ["org.ficus.revenue"], "facilities": ["F1"]})])
    async with service_factory(cfg) as svc:
        events = [event(n) for n in range(10)] + [event(10, ADMIT), event(11, facility="F2"), event(12)]
        await store_events(nats_server.url, events)
        await wait_for(lambda: len(erp.received) == 10, timeout=15)
        status = svc.running.sinks[0].status
        letters = await wait_for(lambda: dlq.list_letters(svc.store, "sink.erp"), timeout=15)
        async with aiohttp.ClientSession() as http:  # the API filters by the sink's letters' interface too
            listed = await (await http.get(f"{svc.api_url}/api/v1/dlq", params={"interface": "sink.erp"})).json()
            refused_filter = await http.get(f"{svc.api_url}/api/v1/dlq", params={"interface": "sink."})
        assert [ltr["unit"] for ltr in listed["dead_letters"]] == ["ev-0003"] and refused_filter.status == 400
        assert (await redeliver_letter(svc.running.sinks, letters[0])).status == 400  # not fixed yet
        # Through `ficus dlq replay ID` (router/replay.py): still refused, then sent once fixed.
        from router.replay import ReplayError, replay_dead_letter

        assert letters[0].id is not None
        with pytest.raises(ReplayError) as refused:
            await replay_dead_letter(svc.running, letters[0].id)
        assert refused.value.status == 422 and "400" in refused.value.reason
        fixed.append(True)  # the receiver learns the account
        done = await replay_dead_letter(svc.running, letters[0].id)
        assert 200 <= done["status"] < 300 and done["interface"] == "sink.erp"
        received_after_fix = [e["id"] for e in erp.received]
        with pytest.raises(LookupError):
            await redeliver_letter(svc.running.sinks, letters[0].model_copy(update={"interface": "sink.other"}))

    assert received_after_fix[-1] == "ev-0003"
    erp.received.pop()
    assert sorted(e["id"] for e in erp.received) == [f"ev-{n:04d}" for n in (0, 1, 2, 4, 5, 6, 7, 8, 9, 12)]
    assert_key_order(erp.received)
    assert erp.bad_signatures == 0
    assert all(r["type"] == SINGLE_TYPE and r["ids"] == [r["key"]] for r in erp.requests)
    retried = [r["at"] for r in erp.requests if r["ids"] == ["ev-0007"]]
    assert len(retried) == 2 and retried[1] - limited[0] >= 0.95  # Retry-After honoured
    assert [(ltr.unit, ltr.kind, ltr.interface) for ltr in letters] == [("ev-0003", "undeliverable", "sink.erp")]
    assert "400" in letters[0].reason
    assert status.delivered == 11 and status.dead_lettered == 1 and status.failures == 4


async def test_a_receiver_that_keeps_failing_dead_letters_past_max_age(
        nats_server: EmbeddedNats, erp: Erp, service_factory: ServiceFactory, tmp_path: Path) -> None:
    erp.plan = lambda events, _n: web.Response(status=503) if events[0]["id"] == "ev-0000" else None
    cfg = make_config(nats_server.url, [], state_dir=tmp_path / "state",
                      sinks=[sink(erp.url, retry={"max_age_seconds": 1})])
    async with service_factory(cfg) as svc:
        await store_events(nats_server.url, [event(0), event(1)])
        await wait_for(lambda: [e["id"] for e in erp.received] == ["ev-0001"], timeout=15)  # another key: not held up
        letters = await wait_for(lambda: dlq.list_letters(svc.store, "sink.erp"), timeout=15)
    assert [ltr.unit for ltr in letters] == ["ev-0000"]
    assert "503" in letters[0].reason
    assert len([r for r in erp.requests if r["ids"] == ["ev-0000"]]) >= 2


async def test_batch_mode_with_oauth2_tokens_refreshed_before_expiry(
        nats_server: EmbeddedNats, erp: Erp, service_factory: ServiceFactory, tmp_path: Path) -> None:
    erp.tokens = set()
    grants: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        grants.append({k: str(v) for k, v in form.items()})
        value = secrets.token_urlsafe(16)
        assert erp.tokens is not None
        erp.tokens.add(value)
        # Expires for real after 2 s: the receiver refuses it from then on.
        asyncio.get_running_loop().call_later(2.0, erp.tokens.discard, value)
        return web.json_response({"access_token": value, "token_type": "Bearer", "expires_in": 2})

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        oauth = {"token_url": f"http://127.0.0.1:{port}/token", "client_id": "ficus",
                 "client_secret": "s3cret-value", "scope": "events.write"}
        cfg = make_config(nats_server.url, [], state_dir=tmp_path / "state",
                          sinks=[sink(erp.url, mode="batch", batch_size=5, auth={"oauth2": oauth})])
        async with service_factory(cfg):
            await store_events(nats_server.url, [event(n) for n in range(12)])
            await wait_for(lambda: len(erp.received) == 12, timeout=15)
            await asyncio.sleep(2.5)  # past the first token's lifetime: the next request needs a new one
            await store_events(nats_server.url, [event(n) for n in range(12, 15)])
            await wait_for(lambda: len(erp.received) == 15, timeout=15)
    finally:
        await runner.cleanup()
    assert [e["id"] for e in erp.received] == [f"ev-{n:04d}" for n in range(15)]
    assert all(r["type"] == BATCH_TYPE and 1 <= len(r["ids"]) <= 5 for r in erp.requests)
    assert len(grants) >= 2
    assert grants[0] == {"grant_type": "client_credentials", "client_id": "ficus",
                         "client_secret": "s3cret-value", "scope": "events.write"}
    assert erp.bad_signatures == 0


def test_config_refuses_plain_http_off_loopback_a_bad_secret_and_two_auths() -> None:
    def problems(**entry: Any) -> str:
        with pytest.raises(ConfigError) as err:
            make_config("nats://127.0.0.1:4222", [], sinks=[{"name": "erp", **entry}])
        return str(err.value)

    assert "loopback" in problems(url="http://erp.example.com/events")
    assert "whsec_" in problems(url="https://erp.example.com/e", signing_secret="whsec_!!")
    assert "one of" in problems(url="https://erp.example.com/e",
                                auth={"bearer_token": "t", "oauth2": {"token_url": "https://idp/t",
                                                                      "client_id": "c", "client_secret": "s"}})
    assert "type prefix" in problems(url="https://erp.example.com/e", filter={"types": ["revenue"]})
    leaked = problems(url="https://erp.example.com/e", auth={"bearer_token": "sekrit-token-value", "x": 1})
    assert "sekrit-token-value" not in leaked


async def test_keys_in_order_with_a_bounded_number_in_flight_across_keys(
        nats_server: EmbeddedNats, erp: Erp, service_factory: ServiceFactory, tmp_path: Path) -> None:
    in_flight: list[int] = [0, 0]  # now, most seen
    handle = erp.handle

    async def slow(request: web.Request) -> web.StreamResponse:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            await asyncio.sleep(0.05)
            return await handle(request)
        finally:
            in_flight[0] -= 1

    erp.handle = slow  # type: ignore[method-assign]
    failed: set[str] = set()

    def plan(events: list[dict[str, Any]], _n: int) -> web.StreamResponse | None:
        ev_id = events[0]["id"]
        if int(ev_id[3:]) % 7 == 0 and ev_id not in failed:  # some events fail once: their key waits
            failed.add(ev_id)
            return web.Response(status=503, headers={"Retry-After": "0"})
        return None

    erp.plan = plan
    cfg = make_config(nats_server.url, [], state_dir=tmp_path / "state", sinks=[sink(erp.url, max_in_flight=3)])
    async with service_factory(cfg):
        events = [event(n) for n in range(60)]
        for n, ev in enumerate(events):
            ev["data"] = {"n": n, "account_number": f"A{n % 10}"}
        await store_events(nats_server.url, events)
        await wait_for(lambda: len(erp.received) == 60, timeout=20)
    assert sorted(e["id"] for e in erp.received) == [f"ev-{n:04d}" for n in range(60)]
    assert_key_order(erp.received)
    assert 1 < in_flight[1] <= 3


def test_business_keys() -> None:
    assert business_key({"data": {"payer_claim_control_number": "C1", "account_number": "A"}}) == "claim:C1"
    assert business_key({"data": {"account_number": "A", "encounter_number": "E"}}) == "account:A"
    assert business_key({"data": {"encounter_number": "E"}}) == "encounter:E"
    assert business_key({"data": {}, "ficusraw": "jetstream://FICUS_RAW/9"}) == "unit:jetstream://FICUS_RAW/9"


def test_subject_filters_and_retry_after() -> None:
    cfg = make_config("nats://127.0.0.1:4222", [], sinks=[{
        "name": "erp", "url": "https://erp.example.com/e", "events": "shadow",
        "filter": {"types": ["org.ficus.revenue", "org.ficus.revenue.charge.posted.v1",
                             "org.ficus.patient.encounter"]}}]).sinks[0]
    assert subject_filters(cfg) == ["shadow.canonical.patient.encounter.>", "shadow.canonical.revenue.>"]
    assert retry_after("7") == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == 5.0
    assert retry_after("soon") is None


async def ficus_cli(*args: str) -> tuple[int, str]:
    """The `ficus` command as an operator runs it (a subprocess: the service runs on this loop)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "router.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_status_pause_resume_replay_and_metrics_over_the_api_and_the_cli(
        nats_server: EmbeddedNats, erp: Erp, service_factory: ServiceFactory, tmp_path: Path) -> None:
    cfg = make_config(nats_server.url, [], state_dir=tmp_path / "state", sinks=[sink(erp.url)])
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url

        async def status() -> dict[str, Any]:
            async with http.get(f"{api}/api/v1/sinks") as resp:
                assert resp.status == 200
                return dict((await resp.json())["sinks"][0])

        first = await status()
        assert first["name"] == "erp" and first["paused"] is False and "secret" not in json.dumps(first)
        code, out = await ficus_cli("sinks", "pause", "erp", "--reason", "ERP maintenance", "--api", str(api))
        assert code == 0 and "erp: paused" in out
        await wait_for(lambda: svc.running.sinks[0].control.paused)
        await store_events(nats_server.url, [event(n) for n in range(3)])
        assert (await wait_for(lambda: _lag(status, 3), timeout=10))
        assert erp.received == []  # paused: nothing sent
        code, out = await ficus_cli("sinks", "--api", str(api))
        assert code == 0 and "erp: paused by" in out and "lag 3" in out
        code, out = await ficus_cli("sinks", "resume", "erp", "--api", str(api))
        assert code == 0
        await wait_for(lambda: len(erp.received) == 3, timeout=10)
        await wait_for(lambda: _lag(status, 0), timeout=10)

        code, out = await ficus_cli("sinks", "replay", "erp", "--since", "2000-01-01T00:00:00Z", "--api", str(api))
        assert code == 0 and "replaying" in out
        await wait_for(lambda: len(erp.received) == 6, timeout=10)
        async with http.get(f"{api}/metrics") as resp:
            metrics = await resp.text()
        async with http.get(f"{api}/api/v1/audit?action=sink_pause") as resp:
            audit = await resp.json()
    # The receiver saw each event twice, under the same Idempotency-Key: once effectively.
    assert sorted(r["key"] for r in erp.requests) == sorted([f"ev-{n:04d}" for n in range(3)] * 2)
    assert 'ficus_sink_attempts_total{sink="erp"} 6.0' in metrics
    assert 'ficus_sink_latency_seconds_count{sink="erp"} 6.0' in metrics
    assert 'ficus_sink_lag{sink="erp"}' in metrics
    assert [r["result"] for r in audit["records"]] == ["started", "ok"]


async def _lag(status: Callable[[], Any], want: int) -> bool:
    return bool((await status())["lag"] == want)


async def test_faults_and_three_kill9_deliver_every_event_once_effectively_in_key_order(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """500s, timeouts, connection resets, a receiver down for 30 s, and three kill -9 of
    `ficus run` while it delivers; then every event was received, each
    accepted once per Idempotency-Key, first arrivals of a key in stream order, all signed."""
    from tests.ficus_proc import Ficus, free_port

    receiver = Erp()
    attempts: dict[str, int] = {}

    async def faulty(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        n = int(body["id"][3:])
        tries = attempts[body["id"]] = attempts.get(body["id"], 0) + 1
        if tries == 1 and n % 5 == 1:
            return web.Response(status=500)
        if tries == 1 and n % 7 == 2:
            await asyncio.sleep(3)  # past timeout_seconds: the sink gives up and retries
        if tries == 1 and n % 11 == 3 and request.transport is not None:
            request.transport.abort()  # a connection reset
            return web.Response(status=500)
        return await receiver.handle(request)

    erp_port = free_port()

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/events", faulty)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", erp_port, reuse_address=True).start()
        return runner

    runner = await serve()
    api_port = free_port()
    conf = tmp_path / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[nats]
url = "{nats_server.url}"
[api]
listen = "127.0.0.1:{api_port}"
[[sinks]]
name = "erp"
url = "http://127.0.0.1:{erp_port}/events"
signing_secret = "{SECRET}"
timeout_seconds = 1
retry = {{ backoff_base_seconds = 0.05, backoff_max_seconds = 0.5 }}
""")
    ficus = Ficus(conf, api_port, tmp_path / "ficus.log")
    total, late = 150, 30
    try:
        await (await ficus.start()).wait_ready()
        await store_events(nats_server.url, [event(n) for n in range(total)])
        for threshold in (20, 50, 80):
            await wait_for(lambda t=threshold: len(receiver.received) >= t, timeout=60)  # type: ignore[misc]
            await ficus.kill9()
            await (await ficus.start()).wait_ready()
        await wait_for(lambda: len(receiver.received) >= 100, timeout=60)
        await runner.cleanup()  # the receiver down for 30 s (kept-alive connections closed too)
        down_at = len(receiver.received)
        await store_events(nats_server.url, [event(n) for n in range(total, total + late)])  # waiting for it
        await asyncio.sleep(30)
        assert len(receiver.received) == down_at, "nothing can arrive while the receiver is down"
        total += late
        runner = await serve()
        await wait_for(lambda: len({e["id"] for e in receiver.received}) == total, timeout=90)
    finally:
        ficus.kill_if_running()
        await runner.cleanup()
    ids = [e["id"] for e in receiver.received]
    assert sorted(set(ids)) == [f"ev-{n:04d}" for n in range(total)]  # at least once each
    keys = [r["key"] for r in receiver.requests]
    assert all(r["ids"] == [r["key"]] for r in receiver.requests)  # Idempotency-Key = event id
    assert len(set(keys)) == total  # once effectively, counted by Idempotency-Key
    first: list[dict[str, Any]] = []
    seen: set[str] = set()
    for ev in receiver.received:
        if ev["id"] not in seen:
            seen.add(ev["id"])
            first.append(ev)
    assert_key_order(first)
    assert receiver.bad_signatures == 0
