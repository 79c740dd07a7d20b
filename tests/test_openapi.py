"""The OpenAPI 3.1 document (router/openapi.py): valid, complete, served as generated, and true
of what a running service answers."""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from router import api, queries, simulate
from router.embedded_nats import EmbeddedNats
from router.openapi import OPERATIONS, openapi_document
from tests.conftest import ServiceFactory, make_config
from tests.mllp_client import MllpTestClient, msa

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
