"""The OpenAPI 3.1 document (router/openapi.py): valid, complete, served as generated, and true
of what a running service answers."""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from legacy.simulated_engine import SimulatedEngine
from router import api, queries, simulate
from router.embedded_nats import EmbeddedNats
from router.openapi import OPERATIONS, openapi_document
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.mllp_client import MllpTestClient, msa
from tests.test_files_service import folder_iface

TOKEN = "openapi-test-admin-token-0123456789"
DOC_URN = "urn:ficus:openapi"


def _validator(document: dict[str, Any], component: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator of one of the document's components (or, given a path and method
    as "GET /path", of that operation's 200 JSON answer), its $refs resolved in the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URN, Resource.from_contents(document, default_specification=DRAFT202012))
    if " " in component:
        method, path = component.split(" ")
        escaped = path.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{method.lower()}/responses/200/content/application~1json/schema"
    else:
        pointer = f"/components/schemas/{component}"
    return jsonschema.Draft202012Validator({"$ref": f"{DOC_URN}#{pointer}"}, registry=registry)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator picks the 3.1 schema from the version


def test_every_route_and_method_is_documented_with_its_access() -> None:
    document = openapi_document()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == {(method, path) for method, path, _, _ in api.ENDPOINTS}
    assert set(OPERATIONS) == documented, "OPERATIONS has an entry per route, and no others"
    for method, path, handler, rule in api.ENDPOINTS:
        op = document["paths"][path][method.lower()]
        assert op["operationId"] == handler.__name__
        assert op["x-ficus-role"] == rule.role
        if rule.role is None:
            assert op["security"] == [] and "401" not in op["responses"]
        else:
            assert {"bearer": []} in op["security"] and {"401", "403"} <= set(op["responses"])
            assert f"the {rule.role} role" in op["description"]
        if rule.action is not None:
            assert op["x-ficus-audit"] == rule.action
        names = [p["name"] for p in op.get("parameters", ()) if p["in"] == "path"]
        assert names == re.findall(r"{(\w+)}", path)
    operation_ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    openapi = document["paths"]["/api/v1/openapi.json"]["get"]
    assert openapi["security"] == []


def test_query_parameters_and_bodies_are_the_handlers_models() -> None:
    document = openapi_document()
    events = document["paths"]["/api/v1/events"]["get"]
    params = {p["name"]: p for p in events["parameters"]}
    assert set(params) == set(queries.EventsQuery.model_json_schema(by_alias=True)["properties"])
    assert params["mode"]["schema"]["enum"] == ["live", "shadow"]
    assert params["type"]["schema"]["pattern"] == queries.TYPE_PATTERN
    assert params["from"]["schema"]["format"] == "date-time"
    route = document["paths"]["/api/v1/routes/{iface}"]["put"]["requestBody"]["content"]["application/json"]
    assert route["schema"] == {"$ref": "#/components/schemas/RouteChange"}
    assert document["components"]["schemas"]["RouteChange"] == api.RouteChange.model_json_schema()
    # One schema per canonical event type, its type pinned.
    page = _validator(document, "EventsPage")
    assert not page.is_valid({"events": [], "stream": "FICUS_CANONICAL", "cursor": None, "more": "no",
                              "next_after": 0})


def _admin_config(url: str) -> Any:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    return make_config(url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}],
                       api={"clients": [{"name": "erp", "role": "admin", "token_sha256": digest}]})


@pytest.mark.integration
async def test_served_document_and_real_answers_match_it(nats_server: EmbeddedNats,
                                                         service_factory: ServiceFactory) -> None:
    document = openapi_document()
    async with service_factory(_admin_config(nats_server.url)) as svc, aiohttp.ClientSession() as http:
        base = svc.api_url
        # Served without a credential (no data in it), equal to the generated one.
        resp = await http.get(f"{base}/api/v1/openapi.json")
        assert resp.status == 200, await resp.text()
        assert await resp.json() == document
        port = svc.interfaces["his-charges"].listener.port
        async with MllpTestClient(port) as client:
            for seq in range(1, 4):
                assert msa(await client.exchange(simulate.dft(seq, lines=2)))[0] == "AA"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        resp = await http.get(f"{base}/api/v1/events", params={"limit": "4"}, headers=auth)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        assert len(page["events"]) == 4 and page["more"]
        validator = _validator(document, "EventsPage")
        validator.validate(page)
        # The schema holds the events to their type's schema: a charge without its data is not one.
        broken = copy.deepcopy(page)
        del broken["events"][0]["event"]["data"]
        assert not validator.is_valid(broken)

        health = await (await http.get(f"{base}/healthz")).json()
        _validator(document, "Health").validate(health)
        audit = await (await http.get(f"{base}/api/v1/audit", headers=auth)).json()
        assert any(r["action"] == "events_list" for r in audit["records"])
        _validator(document, "GET /api/v1/audit").validate(audit)
        one = await (await http.get(f"{base}/api/v1/events/{page['events'][0]['seq']}", headers=auth)).json()
        _validator(document, "GET /api/v1/events/{id}").validate(one)
        # A query the model refuses: 400 with the documented problem shape, naming the parameter.
        for query in ({"limit": "-1"}, {"mode": "both"}, {"type": "org.ficus.*"}, {"from": "yesterday"}):
            resp = await http.get(f"{base}/api/v1/events", params=query, headers=auth)
            assert resp.status == 400, query
            problem = await resp.json()
            _validator(document, "Problem").validate(problem)
            assert next(iter(query)) in problem["error"]
        for path, query in (("/api/v1/audit", {"action": "drop"}), ("/api/v1/audit", {"after": "x"}),
                            ("/api/v1/dlq", {"limit": "1e3"}), ("/api/v1/ledger/his-charges", {"day": "today"}),
                            ("/api/v1/events/1", {"mode": "both"})):
            resp = await http.get(f"{base}{path}", params=query, headers=auth)
            assert resp.status == 400, (path, query)
            assert next(iter(query)) in (await resp.json())["error"]
        # Without a credential, a documented route needs one.
        assert (await http.get(f"{base}/api/v1/events")).status == 401


# -- the consumer-facing answers (router/answers.py) against a running service --------------------

REPO = Path(__file__).resolve().parent.parent
REVERSAL = REPO / "fixtures/x12/reversal_pair.835"
BAD_AMOUNT = REPO / "fixtures/hl7/dft_p03_bad_amount.hl7"


class Receiver:
    """A real local HTTP receiver for the sink: answers 400 (a dead letter) while `refuse`."""

    def __init__(self) -> None:
        self.refuse = True
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=400 if self.refuse else 204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    out = Receiver()
    app = web.Application()
    app.router.add_post("/events", out.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    out.url = f"http://127.0.0.1:{port}/events"
    try:
        yield out
    finally:
        await runner.cleanup()


class Answers:
    """Calls the API and checks each 200 answer against the document's schema of its route."""

    def __init__(self, http: aiohttp.ClientSession, base: str, document: dict[str, Any]) -> None:
        self.http, self.base, self.document = http, base, document
        self.seen: dict[str, Any] = {}

    async def call(self, method: str, path: str, route: str | None = None, **kwargs: Any) -> Any:
        async with self.http.request(method, f"{self.base}{path}", headers={"Authorization": f"Bearer {TOKEN}"},
                                     **kwargs) as resp:
            body = await resp.json()
            assert resp.status == 200, (method, path, resp.status, body)
        key = f"{method} {route or path}"
        _validator(self.document, key).validate(body)
        self.seen[key] = body
        return body


def _with_extra_key(answer: Any, where: tuple[str | int, ...]) -> Any:
    """The answer with one key no model names added at `where` (a path of keys and indexes)."""
    out = copy.deepcopy(answer)
    node = out
    for step in where:
        node = node[step]
    node["added_without_its_model"] = 1
    return out


@pytest.mark.integration
async def test_consumer_answers_validate_against_their_documented_schemas(
        nats_server: EmbeddedNats, service_factory: ServiceFactory, receiver: Receiver, tmp_path: Path) -> None:
    document = openapi_document()
    validate(document)
    iface = folder_iface(tmp_path, name="remit", patterns=["*.835"], format="x12-835", flat=None, legacy=None)
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    async with SimulatedEngine() as engine:
        cfg = make_config(
            nats_server.url,
            [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern",
              "legacy": f"mllp://127.0.0.1:{engine.port}"}, iface],
            state_dir=str(tmp_path / "state"), views={"enabled": True},
            api={"clients": [{"name": "erp", "role": "admin", "token_sha256": digest}]},
            sinks=[{"name": "erp", "url": receiver.url, "filter": {"types": ["org.ficus.revenue"]},
                    "retry": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.2}}])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            api = Answers(http, svc.api_url, document)
            port = svc.interfaces["his-charges"].listener.port
            bad = BAD_AMOUNT.read_bytes()
            async with MllpTestClient(port) as client:
                for seq in range(1, 3):
                    assert msa(await client.exchange(simulate.dft(seq, lines=2)))[0] == "AA"
                # Its MSH-15 asks for enhanced acknowledgements: a commit accept, then a dead letter.
                assert msa(await client.exchange(bad))[0] in ("CA", "AE")
            shutil.copy(REVERSAL, tmp_path / "in" / "reversal.835")
            await wait_for(lambda: svc.interfaces["remit"].stats.acked == 1, timeout=30)

            # The status lookups, once the views have the events.
            page = await api.call("GET", "/api/v1/events", params={"type": "org.ficus.revenue.charge"})
            account = page["events"][0]["event"]["data"]["account_number"]

            async def looked_up(path: str) -> bool:
                async with http.get(f"{svc.api_url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                    return resp.status == 200

            for path in ("/api/v1/claims/ICN0003", "/api/v1/remittances/EFT0002",
                         f"/api/v1/accounts/{account}/charges"):
                await wait_for(functools.partial(looked_up, path), timeout=30, interval=0.2)
            claim = await api.call("GET", "/api/v1/claims/ICN0003", "/api/v1/claims/{claim}")
            assert claim["reversed"] is True and claim["remittances"]
            remittance = await api.call("GET", "/api/v1/remittances/EFT0002", "/api/v1/remittances/{trace}")
            assert remittance["transactions"] and remittance["claims"]
            charges = await api.call("GET", f"/api/v1/accounts/{account}/charges",
                                     "/api/v1/accounts/{account}/charges")
            assert charges["charges"] and "from" in charges
            await api.call("GET", f"/api/v1/accounts/{account}/charges", "/api/v1/accounts/{account}/charges",
                           params={"from": "2000-01-01", "to": "2100-12-31"})

            # Dead letters: the bad amount's, and the sink's (its receiver answered 400).
            async def sink_letters() -> list[dict[str, Any]]:
                # The interface filter takes slugs only: a sink's letters (sink.<name>) are picked here.
                listed = await api.call("GET", "/api/v1/dlq")
                return [x for x in listed["dead_letters"] if x["interface"] == "sink.erp"]

            sink_letter = (await wait_for(sink_letters, timeout=30, interval=0.2))[0]
            async def letters() -> list[dict[str, Any]]:
                listed = await api.call("GET", "/api/v1/dlq", params={"interface": "his-charges"})
                return list(listed["dead_letters"])

            (letter,) = await wait_for(letters, timeout=30, interval=0.2)
            await api.call("GET", f"/api/v1/dlq/{letter['id']}", "/api/v1/dlq/{id}")
            await api.call("GET", f"/api/v1/dlq/{sink_letter['id']}", "/api/v1/dlq/{id}")
            receiver.refuse = False
            replayed = await api.call("POST", f"/api/v1/dlq/{sink_letter['id']}/replay", "/api/v1/dlq/{id}/replay")
            assert replayed["status"] == 204
            await api.call("POST", f"/api/v1/dlq/{letter['id']}/discard", "/api/v1/dlq/{id}/discard",
                           json={"reason": "a test message"})
            instances = await api.call("GET", "/api/v1/instances")
            assert [i["health"] for i in instances["instances"]] == ["ready"]
            sinks = await api.call("GET", "/api/v1/sinks")
            assert sinks["sinks"][0]["dead_lettered"] >= 1
            await api.call("POST", "/api/v1/sinks/erp/pause", "/api/v1/sinks/{id}/pause", json={"reason": "test"})
            await api.call("POST", "/api/v1/sinks/erp/resume", "/api/v1/sinks/{id}/resume")
            await api.call("POST", "/api/v1/sinks/erp/replay", "/api/v1/sinks/{id}/replay",
                           json={"since": "2020-01-01T00:00:00Z"})

            # Routes and parity: into shadow (a window starts), a disagreement, forced back to modern.
            await api.call("PUT", "/api/v1/routes/his-charges", "/api/v1/routes/{iface}",
                           json={"mode": "shadow", "reason": "gather parity"})
            async with MllpTestClient(port) as client:
                assert msa(await client.exchange(simulate.dft(7)))[0] == "AA"
                await client.exchange(bad.replace(b"DFT0002", b"DFT0902"))
            stats = svc.interfaces["his-charges"].stats
            await wait_for(lambda: stats.parity.samples >= 2 and stats.parity.disagree >= 1, timeout=30)
            parity = await api.call("GET", "/api/v1/parity/his-charges", "/api/v1/parity/{iface}")
            assert parity["recent_disagreements"] and parity["window"]["flip"] is not None
            flipped = await api.call("PUT", "/api/v1/routes/his-charges", "/api/v1/routes/{iface}",
                                     json={"mode": "modern", "reason": "drill", "force": True})
            assert flipped["parity"]["samples"] >= 2
            history = await api.call("GET", "/api/v1/routes/his-charges/history", "/api/v1/routes/{iface}/history")
            assert [h["to"] for h in history["history"]] == ["shadow", "modern"]
            await api.call("GET", "/api/v1/routes")
            interfaces = await api.call("GET", "/api/v1/interfaces")
            assert {i["kind"] for i in interfaces["interfaces"]} == {"hl7-mllp", "folder"}
            ledger = await api.call("GET", "/api/v1/ledger/his-charges", "/api/v1/ledger/{iface}")
            assert ledger["days"][0]["total"]["dead_lettered"] >= 1
            await api.call("GET", "/api/v1/ledger/remit", "/api/v1/ledger/{iface}")
            dry = await api.call("POST", "/api/v1/replay/his-charges", "/api/v1/replay/{iface}",
                                 json={"since": "2020-01-01T00:00:00Z", "dry_run": True})
            assert dry["diff"] is not None
            await api.call("POST", "/api/v1/replay/remit", "/api/v1/replay/{iface}",
                           json={"since": "2020-01-01T00:00:00Z"})
            await api.call("GET", "/healthz")
            await api.call("GET", "/readyz")

    # Every route of the brief was called and answered as documented.
    assert {key.split(" ", 1)[1] for key in api.seen} >= {
        "/api/v1/claims/{claim}", "/api/v1/remittances/{trace}", "/api/v1/accounts/{account}/charges",
        "/api/v1/sinks", "/api/v1/instances", "/api/v1/interfaces", "/api/v1/routes", "/api/v1/routes/{iface}/history",
        "/api/v1/parity/{iface}", "/api/v1/ledger/{iface}", "/api/v1/dlq", "/api/v1/dlq/{id}",
        "/api/v1/routes/{iface}", "/api/v1/dlq/{id}/replay", "/api/v1/dlq/{id}/discard", "/api/v1/replay/{iface}",
        "/healthz", "/readyz"}
    # A field a handler adds without its model fails the document: the fixed shapes forbid other keys,
    # at the top and inside (a claim's remittance, a charge, an interface, a transaction, a sink, ...).
    for key, where in (
            ("GET /api/v1/claims/{claim}", ()), ("GET /api/v1/claims/{claim}", ("remittances", 0)),
            ("GET /api/v1/remittances/{trace}", ("transactions", 0)),
            ("GET /api/v1/remittances/{trace}", ("claims", 0)),
            ("GET /api/v1/accounts/{account}/charges", ()),
            ("GET /api/v1/accounts/{account}/charges", ("charges", 0)),
            ("GET /api/v1/sinks", ("sinks", 0)), ("GET /api/v1/interfaces", ("interfaces", 0)),
            ("GET /api/v1/instances", ()), ("GET /api/v1/instances", ("instances", 0)),
            ("GET /api/v1/interfaces", ("interfaces", 0, "lag")), ("GET /api/v1/routes", ("routes", "his-charges")),
            ("GET /api/v1/routes/{iface}/history", ("history", 1)),
            ("GET /api/v1/routes/{iface}/history", ("history", 1, "parity")),
            ("GET /api/v1/parity/{iface}", ()), ("GET /api/v1/parity/{iface}", ("recent_disagreements", 0)),
            ("GET /api/v1/parity/{iface}", ("window", "flip")),
            ("GET /api/v1/ledger/{iface}", ("days", 0, "total")),
            ("GET /api/v1/ledger/{iface}", ("days", 0, "facilities", 0, "money", "received")),
            ("GET /api/v1/dlq", ("dead_letters", 0)), ("GET /api/v1/dlq/{id}", ()),
            ("POST /api/v1/dlq/{id}/replay", ()), ("POST /api/v1/dlq/{id}/discard", ()),
            ("PUT /api/v1/routes/{iface}", ("route",)), ("POST /api/v1/replay/{iface}", ("money",)),
            ("GET /healthz", ()), ("GET /readyz", ())):
        validator = _validator(document, key)
        assert validator.is_valid(api.seen[key]), key
        assert not validator.is_valid(_with_extra_key(api.seen[key], where)), (key, where)
    # Money is a decimal string, never a number.
    claim = copy.deepcopy(api.seen["GET /api/v1/claims/{claim}"])
    claim["paid"] = float(claim["paid"])
    assert not _validator(document, "GET /api/v1/claims/{claim}").is_valid(claim)
