"""The OpenAPI 3.1 document of the HTTP API, served at GET /api/v1/openapi.json.

Made from what the API runs on, so it cannot drift: every route and method of
`router.api.ENDPOINTS` with the access its `Rule` gives (the role, content access, the audit
action); the query strings of `router/queries.py` and the request bodies of `router/api.py`
and `router/sinks_api.py` and `router/leases_api.py`, the models the handlers validate with; the canonical events of
`canonical.schemas` in the pages and feed of the consumer API. What the table below adds per
route is only what the handlers do not declare: a summary, the answer's schema, and which
error statuses it may give. A route without an entry here fails the document (and its test).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter

from canonical.schemas import _hoist_defs, _package_version, default_models, event_schemas
from router import answers, browser, queries
from router.api import ENDPOINTS, MAX_BODY, DiscardLetter, ReplayLetter, ReplaySince, RouteChange, Rule
from router.audit import Record
from router.config import SLUG
from router.dashboard import SESSION_COOKIE
from router.leases_api import LeaseRelease
from router.sinks_api import SinkReason, SinkReplay

OPENAPI_VERSION = "3.1.0"
Schema = dict[str, Any]
REF = "#/components/schemas/{model}"
PROBLEM = "Problem"
EVENT = "CanonicalEvent"
EVENT_ITEM = "EventItem"
AUDIT_RECORD = "AuditRecord"


# -- answers with a fixed shape, as models (serialization schemas) ---------------------------

class Problem(BaseModel):
    """Every error answer: a reason that names what was wrong and never quotes a value."""

    error: str


class EventsPage(BaseModel):
    """A page of GET /api/v1/events: page on with `cursor` while `more`."""

    events: list[dict[str, Any]]
    stream: str = Field(description="the stream read: FICUS_CANONICAL, FICUS_SHADOW or FICUS_EVIDX")
    cursor: str | None = Field(description="where the next page starts (also when nothing follows yet: poll with it)")
    more: bool
    next_after: int = Field(description="the last sequence read (for `after`)")


def _object(description: str, **properties: Schema) -> Schema:
    """An answer documented by its main keys only (built from the running service's state)."""
    out: Schema = {"type": "object", "description": description}
    if properties:
        out["properties"] = properties
        out["required"] = sorted(properties)
    return out


@dataclass(frozen=True, slots=True)
class Op:
    """What the document says of one route beyond its rule and path."""

    summary: str
    answer: type[BaseModel] | Schema | str | None = None
    """The 200 answer: a model, a JSON Schema, a component name, or None (no JSON body)."""
    query: type[queries.Query] | None = None
    body: type[BaseModel] | None = None
    body_optional: bool = False
    errors: tuple[int, ...] = ()
    """Statuses it may answer besides 200 and those of every route (400 with a query or body,
    401/403/429 with a role, 503 when NATS is away)."""
    media: str = "application/json"
    status: int = 200
    description: str = ""


OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/"): Op("The console's overview (HTML, live through /console/stream); without a credential, "
                     "the login form (401, no data)", None, media="text/html", errors=(401,)),
    ("GET", "/console/interfaces/{iface}"): Op("The console's page of an interface (HTML): route switch, parity "
                                               "(window; by day and facility), ledger, route history", None,
                                               media="text/html", errors=(404,)),
    ("GET", "/console/interfaces/{iface}/gate"): Op(
        "The gate's verdict on a flip (?mode=&facility=), an HTML fragment for htmx, with the confirming "
        "button when the gate allows it", None, media="text/html", errors=(404,)),
    ("GET", "/console/interfaces/{iface}/history"): Op("The route history table, an HTML fragment for htmx",
                                                       None, media="text/html", errors=(404,)),
    ("GET", "/console/dead-letters"): Op("The console's dead letters page (HTML)", None, media="text/html"),
    ("GET", "/console/messages"): Op("The console's message browser (HTML)", None, media="text/html"),
    ("GET", "/console/audit"): Op("The console's audit trail (HTML; admin)", None, media="text/html"),
    ("GET", "/console/stream"): Op("The overview's figures every second (Server-Sent Events, `figures` events: "
                                   "counters, ledger today, sinks, alerts; no content)", None,
                                   media="text/event-stream"),
    ("GET", "/static/{name}"): Op("The console's script and style sheet (package data)", None,
                                  media="text/javascript", errors=(404,)),
    ("POST", "/login"): Op("Log in to the dashboard with a client's token (or a JWT): a session cookie",
                           None, status=303, description="Form field `token` (application/x-www-form-urlencoded); "
                           "303 to `/` with the cookie, or 401 with the form again."),
    ("POST", "/logout"): Op("End the dashboard session", None, status=303),
    ("GET", "/healthz"): Op("Liveness: the process answers", answers.Health),
    ("GET", "/readyz"): Op("Readiness: 503 with one line per problem", answers.Readiness,
                           query=queries.ReadyQuery, errors=(404, 503)),
    ("GET", "/metrics"): Op("Prometheus metrics (text exposition format)", None, media="text/plain"),
    ("GET", "/api/v1/interfaces"): Op("Every interface: kind, route, counts, lag, listener counters",
                                      answers.Interfaces),
    ("GET", "/api/v1/routes"): Op("The routing table", answers.Routes),
    ("PUT", "/api/v1/routes/{iface}"): Op(
        "Flip an interface's route (legacy, shadow, modern); with force, past the parity gate (admin)",
        answers.RouteChanged, body=RouteChange, errors=(404, 409)),
    ("GET", "/api/v1/routes/{iface}/history"): Op("The flips of an interface, oldest first",
                                                  answers.RouteHistory, errors=(404,)),
    ("GET", "/api/v1/events"): Op("A page of canonical events, with filters and a cursor", "EventsPage",
                                  query=queries.EventsQuery, errors=(409,)),
    ("GET", "/api/v1/events/stream"): Op(
        "Server-Sent Events: the same filters; resumable with Last-Event-ID", {"type": "string"},
        query=queries.StreamQuery, errors=(409,), media="text/event-stream",
        description="Each event is `id: <cursor past it>` and `data: <EventItem JSON>`; a comment line every "
        "`heartbeat` seconds. Send `Last-Event-ID` (or `cursor`) to resume without a gap or a repeat; "
        "without either, `from` starts at a time, else only new events come. Ends at `to` or when Ficus "
        "stops; a client 1000 events behind is disconnected."),
    ("GET", "/api/v1/events/{id}"): Op("One event by its stream sequence", _object(
        "the event", seq={"type": "integer"}, event={"$ref": REF.format(model=EVENT)}),
        query=queries.EventQuery, errors=(404,)),
    ("GET", "/api/v1/dlq"): Op("Dead letters, oldest first", answers.DeadLetters,
                               query=queries.DlqQuery),
    ("GET", "/api/v1/dlq/{id}"): Op("One dead letter", answers.DeadLetter, errors=(404,)),
    ("POST", "/api/v1/dlq/{id}/replay"): Op("Translate a dead letter's raw unit again", answers.LetterReplayed,
                                           body=ReplayLetter, body_optional=True, errors=(404, 409, 422)),
    ("POST", "/api/v1/dlq/{id}/discard"): Op("Mark a dead letter as needing no replay", answers.Discarded,
                                             body=DiscardLetter, errors=(404, 409)),
    ("POST", "/api/v1/replay/{iface}"): Op(
        "Translate an interface's raw traffic again since a time (or a dry run)", answers.Replayed,
        body=ReplaySince, errors=(404, 409),
        description="With `Accept: application/x-ndjson` the answer streams one `{\"progress\": ...}` line per "
        "chunk, then `{\"result\": ...}` or `{\"error\", \"status\"}`."),
    ("GET", "/api/v1/parity/{iface}"): Op("The current parity window of an interface", answers.Parity,
                                          errors=(404,)),
    ("GET", "/api/v1/parity/{iface}/gl"): Op(
        "GL parity of a day: the legacy GL export against Ficus's journal entries, per facility and account",
        _object("the day's report", interface={"type": "string"}, route={"type": "string"},
                gate_days={"type": "integer"}, day={"type": "string"}, segments={"type": "array"},
                zero_difference={"type": "boolean"}, export={"type": "object"}, ficus={"type": "object"},
                accounts_compared={"type": "integer"}, accounts_differing={"type": "array"},
                differences={"type": "array"}),
        query=queries.GlParityQuery, errors=(404, 409)),
    ("GET", "/api/v1/ledger/{iface}"): Op("The reconciliation ledger of an interface, per day and facility",
                                          answers.Ledger, query=queries.LedgerQuery, errors=(404,)),
    ("GET", "/api/v1/alerts"): Op("Every alert rule's state: process, facilities, money at risk (no content)",
                                  answers.Alerts),
    ("GET", "/api/v1/instances"): Op("Every Ficus instance on this NATS: leases held, readiness, health "
                                     "(ready, not ready, stale)", answers.Instances),
    ("GET", "/api/v1/leases"): Op("Who polls each folder, SFTP and ODBC interface: owner, epoch, time left",
                                  answers.Leases),
    ("POST", "/api/v1/leases/{iface}/release"): Op(
        "Hand a polling interface over (maintenance): its owner steps down, another instance takes it over",
        answers.LeaseReleased, body=LeaseRelease, errors=(404, 409)),
    ("GET", "/api/v1/sinks"): Op("Every sink's state (no event content, no credentials)",
                                 answers.Sinks),
    ("POST", "/api/v1/sinks/{id}/pause"): Op("Pause a sink (every instance, within a second)", answers.SinkPaused,
                                             body=SinkReason, body_optional=True, errors=(404,)),
    ("POST", "/api/v1/sinks/{id}/resume"): Op("Resume a sink", answers.SinkPaused, body=SinkReason, body_optional=True,
                                              errors=(404,)),
    ("POST", "/api/v1/sinks/{id}/replay"): Op("Deliver again every event stored since a time", answers.SinkReplayed,
                                              body=SinkReplay, errors=(404,)),
    ("GET", "/api/v1/schemas"): Op("JSON Schema of every canonical event type, and the AsyncAPI document",
                                   _object("schemas", schemas={"type": "object"}, asyncapi={"type": "object"})),
    ("GET", "/api/v1/schemas/{type}"): Op("One event type's JSON Schema", _object("a JSON Schema"), errors=(404,)),
    ("GET", "/api/v1/audit"): Op("Audit records, oldest first", _object(
        "records", records={"type": "array", "items": {"$ref": REF.format(model=AUDIT_RECORD)}},
        next_after={"type": ["integer", "null"], "description": "set when more may follow: ask again with after="}),
        query=queries.AuditQuery),
    ("GET", "/api/v1/claims/{claim}"): Op("A claim's latest known state, by payer claim control number",
                                          answers.Claim, errors=(404, 409)),
    ("GET", "/api/v1/remittances/{trace}"): Op("A remittance by trace number: transactions, totals, claims",
                                               answers.Remittance, errors=(404, 409)),
    ("GET", "/api/v1/accounts/{account}/charges"): Op(
        "An account's charges, by service date (else posting date)",
        answers.Charges, query=queries.ChargesQuery, errors=(404, 409)),
    ("POST", "/api/v1/views/rebuild"): Op("Drop the status views and apply the live stream again", answers.Rebuilt,
                                          errors=(409,)),
    ("GET", "/api/v1/messages"): Op(
        "Find units (messages, file records, rows) by business key, interface and time (the key index)",
        _object("a page of units", messages={"type": "array", "items": {"type": "object"}},
                cursor={"type": ["string", "null"], "description": "where the next page starts; null at the end"}),
        query=browser.MessagesQuery, errors=(409,),
        description="Each unit: correlation, interface, received_at, control_id, unit, raw, events (ids), "
        "dead_letters (ids), keys (kind: keyed hash). Needs `nats.key_index = true` (409 otherwise)."),
    ("GET", "/api/v1/messages/{correlation}"): Op(
        "A unit's chain by correlation id: raw units, events, dead letters, replays, sink deliveries",
        _object("the chain", correlation={"type": "string"}, raw={"type": ["object", "null"]},
                events={"type": "array"}, dead_letters={"type": "array"}, replays={"type": "array"},
                deliveries={"type": "array"}),
        errors=(404, 409)),
    ("GET", "/api/v1/openapi.json"): Op("This document", _object("an OpenAPI 3.1 document")),
}

PATH_PARAMS: dict[str, Schema] = {
    "iface": {"type": "string", "pattern": SLUG.pattern, "description": "an interface name"},
    "id": {"type": "string", "description": "an event's or dead letter's stream sequence; a sink's name"},
    "type": {"type": "string", "description": "an event type, e.g. org.ficus.revenue.charge.posted.v1"},
    "claim": {"type": "string", "maxLength": 200, "description": "a payer claim control number (CLP07)"},
    "trace": {"type": "string", "maxLength": 200, "description": "a remittance's trace number (TRN02)"},
    "account": {"type": "string", "maxLength": 200, "description": "an account number (PID-18, the account column)"},
    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9.-]{0,63}\\.(js|css)$",
             "description": "a file of the console: console.js, console.css, htmx.min.js"},
    "correlation": {"type": "string", "maxLength": 1024, "description": "a unit's correlation id (ficuscorrelation)"},
}
_SEQUENCE = {"type": "string", "pattern": "^[0-9]+$", "description": "a stream sequence number"}

_STATUS_TEXT = {
    400: "a malformed request: the reason names the parameter or field, never its value",
    401: "no credential, or an unknown, expired or unverifiable one (WWW-Authenticate: Bearer)",
    403: "the credential's role (or content access) is not enough",
    404: "no such resource",
    409: "refused in the current state (the reason says which setting or state)",
    413: f"a request body over {MAX_BODY} bytes",
    422: "the unit still fails to translate",
    429: "over the client's rate limit (Retry-After)",
    503: "NATS or the audit trail unavailable: nothing was done or served",
}


def access(rule: Rule) -> str:
    """Who may call a route and what is recorded of it, in words (from its Rule)."""
    if rule.role is None:
        return "No credential needed (no data)."
    if rule.consumer:  # content access on top of the role (router/api.py CONSUMER)
        text = (f"Needs the {rule.role} role and content access: a client with `content = true` (or a JWT's "
                "content scope), or the admin role.")
    else:
        text = f"Needs the {rule.role} role (viewer < operator < admin)."
    if rule.page:
        text += " A console session cookie counts too."
    else:
        text += (" A console session cookie counts too with its CSRF token in the X-Ficus-CSRF header "
                 "(the console's own calls).")
    if rule.action is not None:
        text += f" Audited as `{rule.action}`."
    if rule.content:
        text += " Message content: served only once its audit record is stored (503 otherwise)."
    return text


def _param_schema(prop: Schema) -> Schema:
    """A query parameter's schema: absent rather than null, without pydantic's titles."""
    prop = {k: v for k, v in prop.items() if k != "title"}
    branches = prop.pop("anyOf", None)
    if branches is not None:
        kept = [b for b in branches if b != {"type": "null"}]
        prop = {**(kept[0] if len(kept) == 1 else {"anyOf": kept}), **prop}
    if prop.get("default", 0) is None:
        del prop["default"]
    prop.pop("description", None)
    return prop


def _query_params(model: type[queries.Query]) -> list[Schema]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required,
             "description": prop.get("description", ""), "schema": _param_schema(prop)}
            for name, prop in schema["properties"].items()]


def _path_params(method: str, path: str) -> list[Schema]:
    out = []
    for name in re.findall(r"{(\w+)}", path):
        schema = PATH_PARAMS[name]
        if name == "id" and not path.startswith("/api/v1/sinks/"):
            schema = _SEQUENCE
        description = schema.get("description", "")
        out.append({"name": name, "in": "path", "required": True, "description": description,
                    "schema": {k: v for k, v in schema.items() if k != "description"}})
    return out


def _component(model: type[BaseModel], components: Schema, mode: str = "validation") -> Schema:
    """A model as a component (its $defs beside it); the $ref to it."""
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    for name, sub in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
        # Components are named by class: two models of one name would silently replace each other.
        if components.setdefault(name, sub) != sub:
            raise ValueError(f"two schemas named {name} in the OpenAPI components")
    return {"$ref": REF.format(model=model.__name__)}


def _events(components: Schema) -> None:
    """Every canonical event type, one schema per type (its `type` is a const), and the items
    the consumer API wraps them in."""
    refs = []
    for name, schema in event_schemas(default_models()).items():
        components[name] = _hoist_defs(schema, components)
        refs.append({"$ref": REF.format(model=name)})
    components[EVENT] = {"description": "a canonical event (a CloudEvent), one of the types Ficus emits",
                         "oneOf": refs}
    components[EVENT_ITEM] = {
        "type": "object", "required": ["seq", "stored_at", "event"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1, "description": "its sequence in the stream read"},
            "stored_at": {"type": ["string", "null"], "format": "date-time", "description": "when it was stored"},
            "event": {"oneOf": [{"$ref": REF.format(model=EVENT)}, {"type": "null"}],
                      "description": "null for a message on a canonical subject that is not JSON"},
        },
    }
    page = components["EventsPage"]
    page["properties"]["events"] = {"type": "array", "items": {"$ref": REF.format(model=EVENT_ITEM)},
                                    "title": "Events"}


def _audit_record(components: Schema) -> None:
    """An audit record as the API lists it: router/audit.py's Record, with its stream sequence."""
    schema = TypeAdapter(Record).json_schema(mode="serialization", ref_template=REF)
    components.update(schema.pop("$defs", {}))
    schema["properties"]["seq"] = {"type": "integer", "minimum": 1, "description": "its sequence in FICUS_AUDIT"}
    schema["required"] = ["seq", *schema["required"]]
    components[AUDIT_RECORD] = schema


def _answer(op: Op, components: Schema) -> Schema | None:
    if op.answer is None:
        return None
    if isinstance(op.answer, str):
        return {"$ref": REF.format(model=op.answer)}
    if isinstance(op.answer, dict):
        return op.answer
    return _component(op.answer, components, mode="serialization")


def _operation(method: str, path: str, handler_name: str, rule: Rule, components: Schema) -> Schema:
    op = OPERATIONS[(method, path)]
    params = _path_params(method, path) + (_query_params(op.query) if op.query else [])
    if path == "/api/v1/events/stream":
        params.append({"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                       "description": "the id of the last event received: the feed resumes just past it"})
    answer = _answer(op, components)
    ok: Schema = {"description": "OK" if op.status == 200 else "See Other"}
    if answer is not None:
        ok["content"] = {op.media: {"schema": answer}}
    elif op.media != "application/json":
        ok["content"] = {op.media: {"schema": {"type": "string"}}}
    statuses = set(op.errors) | {503}
    if params or op.body is not None:
        statuses.add(400)
    if op.body is not None:
        statuses.add(413)
    if rule.role is not None:
        statuses |= {401, 403, 429}
    problem = {"content": {"application/json": {"schema": {"$ref": REF.format(model=PROBLEM)}}}}
    responses: Schema = {str(op.status): ok}
    for status in sorted(statuses):
        if status == 401 and rule.page:
            responses["401"] = {"description": "the login form (no data)", "content": {"text/html": {
                "schema": {"type": "string"}}}}
        elif status == 503 and answer is not None and op.answer is answers.Readiness:
            responses["503"] = {"description": "not ready", "content": {"application/json": {"schema": answer}}}
        else:
            responses[str(status)] = {"description": _STATUS_TEXT[status], **problem}
    out: Schema = {
        "operationId": handler_name, "summary": op.summary,
        "description": (op.description + "\n\n" if op.description else "") + access(rule),
        "tags": [_tag(path)], "responses": responses,
        "security": [] if rule.role is None else [{"bearer": []}, *([{"session": []}] if rule.page else [])],
        "x-ficus-role": rule.role,
    }
    if rule.action is not None:
        out["x-ficus-audit"] = rule.action
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": not op.body_optional,
                              "content": {"application/json": {"schema": _component(op.body, components)}}}
    elif path == "/login":
        out["requestBody"] = {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}}}}
    return out


def _tag(path: str) -> str:
    parts = path.split("/")
    if parts[1] in ("console", "static") or path == "/":
        return "console"
    if len(parts) < 4:
        return "service"
    name = parts[3]
    return {"claims": "views", "remittances": "views", "accounts": "views", "openapi.json": "service"}.get(name, name)


def openapi_document(endpoints: tuple[tuple[str, str, Any, Rule], ...] = ENDPOINTS,
                     version: str | None = None) -> Schema:
    """The OpenAPI 3.1.0 document of `endpoints` (KeyError for a route without an entry in OPERATIONS)."""
    components: Schema = {}
    _component(Problem, components, mode="serialization")
    _component(EventsPage, components, mode="serialization")
    _events(components)
    _audit_record(components)
    paths: Schema = {}
    for method, path, handler, rule in endpoints:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, handler.__name__, rule, components)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Ficus HTTP API",
            "version": version or _package_version(),
            "description": "The Ficus service's HTTP API: interfaces and routes, the consumer API over the "
            "canonical events (pages, a live feed, status lookups), dead letters, replay, sinks, audit. "
            "Errors are JSON `{\"error\": reason}`. Canonical events are also on NATS: the AsyncAPI document "
            "is in GET /api/v1/schemas. How to consume: docs/consumers.md.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "a client's token or a JWT",
                           "description": "a named client's token ([[api.clients]]) or a JWT of the identity "
                           "provider (api.jwt)"},
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                            "description": "the dashboard's session cookie (POST /login)"},
            },
        },
    }


@functools.cache
def served() -> Schema:
    """The document the API serves (made once: it depends only on the code)."""
    return openapi_document()
