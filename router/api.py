"""The thin HTTP API (aiohttp): JSON under /api/v1, named identities, health, metrics, dashboard.

Handlers are plain functions reading what they need from typed app state, one key per
resource (the config, the store, the routing table, the interfaces), all of it started.
Every route has one access rule (`ENDPOINTS`, the table the app is built from): the role it
needs (viewer < operator < admin, or none for the health probes and the login form) and,
for the actions the audit trail records, the action's name. The caller is a named client
or a JWT (router/auth.py); its name is the actor of everything it does, never a header.
Message content (events, dead letters, the field values of a dry run's differences) is the
admin's (PRODUCT.md: admin has the audit and content reads) and every read of it is audited
before it is served (router/audit.py says in which order records and actions go). The
consumer API (event pages and feed, status lookups) also serves a client granted content
(`content = true`, or a JWT's content scope) whatever its role, so an ERP reads events as a
viewer that can neither flip nor replay. With no
credentials configured (allowed only on a loopback listener, or with `api.insecure =
true`) the API is open: every caller is "anonymous" with the admin role. Request bodies are
bounded (MAX_BODY) and validated by strict models; a malformed request of any kind gets a
4xx with a JSON reason that quotes no value, never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from canonical.schemas import asyncapi_document, default_models, default_subjects, event_schemas
from protocols.tls import ReloadingContext, TlsFiles, peer_subject, server_context
from router import browser, dlq, events_api, gl_parity, ledger, names, parity, queries, replay, worker_metrics
from router.alerts_api import NatsCollector, get_alerts
from router.audit import ACTIONS, Action, AuditTrail, AuditUnavailable, Record, result_of
from router.auth import OPEN, Authenticator, Identity, RateLimiter, allows
from router.config import SLUG, ApiTlsConfig, ConfigError, FicusConfig, Mode, Role
from router.console import pages as console
from router.dashboard import CSRF_HEADER, SESSION_COOKIE, Sessions
from router.instances_api import list_instances
from router.interfaces import RunningInterface
from router.leases_api import get_leases, release_lease
from router.routes import RouteError, RouteTable
from router.sinks import SinkCollector
from router.sinks_api import list_sinks, pause_sink, replay_sink, resume_sink
from router.stats import InterfaceStats, ListenerCollector, StatsCollector
from router.store import Store, StoreError
from router.views_api import get_charges, get_claim, get_remittance, rebuild_views

if TYPE_CHECKING:
    from router.service import Running

log = logging.getLogger("ficus.api")
CONFIG: web.AppKey[FicusConfig] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
ROUTES: web.AppKey[RouteTable] = web.AppKey("routes")
INTERFACES: web.AppKey[Mapping[str, RunningInterface]] = web.AppKey("interfaces")
READY: web.AppKey[Callable[[], tuple[bool, list[str]]]] = web.AppKey("ready")
STARTED_AT: web.AppKey[float] = web.AppKey("started_at")
RUNNING: web.AppKey[Running] = web.AppKey("running")
"""The whole started service, for the two consumers that take it whole: the dashboard and replay."""
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry")
SESSIONS: web.AppKey[Sessions] = web.AppKey("sessions")
LEDGER: web.AppKey[ledger.Reader] = web.AppKey("ledger")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
AUDIT: web.AppKey[AuditTrail] = web.AppKey("audit")
RULES: web.AppKey[dict[tuple[str, str], Rule]] = web.AppKey("rules")
BACKGROUND: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("background")
"""Audit writes that outlive their request (a client gone mid-replay)."""
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
PENDING: web.RequestKey[Pending] = web.RequestKey("pending")
MAX_BODY = 64 * 1024
"""The largest request body (every body the API takes is a small JSON object); 413 beyond."""
# Stream sequences are uint64 in JetStream; ids beyond that cannot exist.
MAX_SEQ = 2**63 - 1
WWW_AUTHENTICATE = 'Bearer realm="ficus"'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound=BaseModel)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class ApiProblem(Exception):
    """A request the API answers with `status` and a JSON reason (raised from helpers)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call a route, and what the audit trail records of it."""

    role: Role | None
    """The least role it needs; None: anyone (the health probes, the login form)."""
    action: Action | None = None
    """Audited as this action (router/audit.py)."""
    content: bool = False
    """A read of message content: served only once its audit record is stored."""
    page: bool = False
    """The dashboard: a login session counts, and a login form answers a missing credential."""
    consumer: bool = False
    """The consumer API's content (events, status lookups): the role, and content access too
    (an admin, or a client granted it: `content = true`, a JWT's content scope)."""


@dataclass(slots=True)
class Pending:
    """What the audit record of the request in progress will say; handlers add to it."""

    action: Action
    interface: str | None
    target: dict[str, Any] = field(default_factory=dict)
    outcome: int | None = None
    """A status the handler reports where the answer's own cannot say it (a streamed replay's error)."""


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, ApiProblem | web.HTTPException):
        return exc.status
    if isinstance(exc, StoreError):
        return 503
    return 500


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer is JSON; a store outage is a 503, never a 500."""
    try:
        return await handler(request)
    except ApiProblem as exc:
        return _error(exc.status, exc.reason)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        resp = _error(exc.status, exc.reason.lower())
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except StoreError as exc:
        # The reason names the operation and the error kind only (router/store/errors.py).
        return _error(503, f"JetStream unavailable: {exc.reason}")


def source_of(request: web.Request) -> dict[str, str]:
    """Where a request came from: the peer address, and the verified client certificate's subject."""
    out = {"ip": request.remote or "?"}
    transport = request.transport
    subject = peer_subject(transport.get_extra_info("ssl_object")) if transport is not None else None
    if subject:
        out["cert"] = subject
    return out


def rule_for(request: web.Request) -> Rule | None:
    """The access rule of the route a request matched (HEAD as GET)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    method = "GET" if route.method == "HEAD" else route.method
    return request.app[RULES].get((method, resource.canonical))


async def bearer_identity(request: web.Request) -> Identity | None:
    """Who the request's bearer credential names (the open API's caller without credentials)."""
    auth = request.app[AUTH]
    if auth.open:
        return OPEN
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return await auth.identify(credential.strip())


def _unauthorized(request: web.Request) -> web.Response:
    resp = _error(401, "missing, unknown or expired bearer credential")
    invalid = "Authorization" in request.headers
    resp.headers["WWW-Authenticate"] = WWW_AUTHENTICATE + (', error="invalid_token"' if invalid else "")
    return resp


def _too_many(wait: float) -> web.Response:
    resp = _error(429, "too many requests; retry after the time in Retry-After")
    resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return resp


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, the rate limit, the role a route needs, and the audit records of its action."""
    unmatched = request.match_info.http_exception
    if unmatched is not None:
        raise unmatched  # 404/405 before 401: the routes are documented, nothing to hide
    rule = rule_for(request)
    if rule is None:  # a route added outside ENDPOINTS: closed until it has a rule
        return _error(403, "this route has no access rule")
    if rule.role is None:
        return await handler(request)
    identity = await bearer_identity(request)
    if identity is None and rule.page:
        identity = request.app[SESSIONS].identity(request.cookies.get(SESSION_COOKIE, ""))
        if identity is None:
            return await handler(request)  # the login form; no data
    elif identity is None and (csrf := request.headers.get(CSRF_HEADER)):
        # The console's own API calls: the session cookie counts with its CSRF token in a header
        # (which another site's page can neither read nor send), for reads and changes alike.
        identity = request.app[SESSIONS].api_identity(request.cookies.get(SESSION_COOKIE, ""), csrf)
    limiter = request.app[LIMITER]
    if identity is None:
        wait = limiter.take("peer:" + (request.remote or "?"))
        return _too_many(wait) if wait else _unauthorized(request)
    if identity.via != "open" and (wait := limiter.take(f"{identity.via}:{identity.name}")):
        return _too_many(wait)
    request[IDENTITY] = identity
    pending = Pending(rule.action, _interface_of(request)) if rule.action is not None else None
    if not allows(identity.role, rule.role):
        if pending is not None:
            request[PENDING] = pending
            await _record(request, 403)
        return _error(403, f"this needs the {rule.role} role")
    if rule.consumer and not identity.reads_content():
        if pending is not None:
            request[PENDING] = pending
            await _record(request, 403)
        return _error(403, "this is message content: it needs the admin role or a client with content = true")
    if pending is None:
        return await handler(request)
    request[PENDING] = pending
    return await _audited(request, handler, rule)


async def _audited(request: web.Request, handler: Handler, rule: Rule) -> web.StreamResponse:
    """Runs an audited action's handler and records its outcome (see router/audit.py for the order)."""
    pending = request[PENDING]
    try:
        resp = await handler(request)
    except asyncio.CancelledError:
        # The client went away (a streamed replay): recorded all the same, from outside this task.
        task = asyncio.get_running_loop().create_task(_record(request, 499))
        request.app[BACKGROUND].add(task)
        task.add_done_callback(request.app[BACKGROUND].discard)
        raise
    except Exception as exc:
        await _record(request, _status_of(exc))
        raise
    status = pending.outcome or resp.status
    if rule.content and status < 400:
        try:
            await _record(request, status, must=True)
        except AuditUnavailable as exc:
            log.error("audit: a read of message content was refused: its audit record was not stored (%s)",
                      exc.reason)
            raise ApiProblem(503, f"audit trail unavailable ({exc.reason}): nothing is served unaudited") from None
    else:
        await _record(request, status)
    return resp


async def _record(request: web.Request, status: int | None, *, must: bool = False) -> None:
    """Writes the request's audit record: `started` when `status` is None, else its outcome.

    With `must`, AuditUnavailable is raised to the caller; otherwise a record that could not be
    stored is an ERROR line (the action it was for is audited by its `started` record, or was refused).
    """
    pending, identity = request[PENDING], request[IDENTITY]
    record = Record(
        actor=identity.name, role=identity.role, via=identity.via, action=pending.action,
        result="started" if status is None else result_of(status), status=status,
        source=source_of(request), interface=pending.interface, target=dict(pending.target),
    )
    try:
        await request.app[AUDIT].write(record)
    except AuditUnavailable as exc:
        if must or status is None:
            raise
        log.error("audit: the %s record of %s by %s (%s) was not stored: %s", record.result, record.action,
                  identity.name, status, exc.reason)


async def begin(request: web.Request, **target: Any) -> None:
    """Records that an audited change is about to be made; ApiProblem 503 (and no change) when
    that record cannot be stored."""
    pending = request[PENDING]
    pending.target.update(target)
    try:
        await _record(request, None)
    except AuditUnavailable as exc:
        log.error("audit: %s refused: its audit record was not stored (%s)", pending.action, exc.reason)
        raise ApiProblem(503, f"audit trail unavailable ({exc.reason}): nothing was done") from None


def note(request: web.Request, **target: Any) -> None:
    """Adds identifiers and counts (never content) to the audit record of this request."""
    request[PENDING].target.update(target)


def _interface_of(request: web.Request) -> str | None:
    name = request.match_info.get("iface") or request.query.get("interface")
    return name if name and SLUG.match(name) else None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RouteChange(_Body):
    """PUT /api/v1/routes/{iface}."""

    mode: Mode
    reason: StrictStr = Field(default="", max_length=2000)
    facility: StrictStr | None = Field(default=None, max_length=64)
    force: StrictBool = False
    # Without `facility`: keep the facility overrides (by default a flip clears them).
    keep_facilities: StrictBool = False


class ReplaySince(_Body):
    """POST /api/v1/replay/{iface}."""

    since: StrictStr = Field(max_length=64)
    dry_run: StrictBool = False
    limit: StrictInt | None = Field(default=None, ge=1, le=100_000_000)


class ReplayLetter(_Body):
    """POST /api/v1/dlq/{id}/replay: an empty body, or a dry run (nothing stored)."""

    dry_run: StrictBool = False


class DiscardLetter(_Body):
    """POST /api/v1/dlq/{id}/discard: why it needs no replay."""

    reason: StrictStr = Field(min_length=1, max_length=2000)


def _problems(exc: ValidationError) -> str:
    """Pydantic's problems as one line: locations and messages, never the input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(x)[:40] for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def _body(request: web.Request, model: type[B], *, empty_ok: bool = False) -> B:
    """The request body as `model` (strict JSON object); ApiProblem 400 otherwise."""
    raw = await request.read()
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiProblem(400, f"bad body: {_problems(exc)}") from None


def _seq(ident: str, what: str) -> int:
    """A path id that is a stream sequence number; 400 if not a number, 404 if none can exist."""
    if not (ident.isascii() and ident.isdigit()):
        raise ApiProblem(400, f"{what} ids are stream sequence numbers (digits)")
    value = int(ident)
    if not 0 < value <= MAX_SEQ:
        raise ApiProblem(404, f"no {what} {ident[:24]}")
    return value


async def healthz(request: web.Request) -> web.Response:
    uptime = round(time.time() - request.app[STARTED_AT], 1)
    return web.json_response({"status": "ok", "uptime_seconds": uptime})


async def readyz(request: web.Request) -> web.Response:
    """Readiness of the instance; `?interface=A,B`: of those interfaces only, with the instance's
    own problems (NATS, the embedded server, draining). A load balancer checks an MLLP backend
    with its interface, so a failing SFTP source or database does not take the instance's MLLP
    listeners out of the pool."""
    only = queries.of(request, queries.ReadyQuery).names()
    known = request.app[INTERFACES]
    if any(name not in known for name in only):
        return _error(404, "unknown interface")
    ok, problems = request.app[RUNNING].ready(only=only or None)
    # Which publishing path the start-up self-test chose: information, never a reason to be unready.
    store = request.app[STORE]
    return web.json_response({"ready": ok, "problems": problems, "publisher": store.publisher,
                              "ingest": store.ingest_mode, "ingest_batches": store.ingest_batches},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    siblings = request.app[RUNNING].sibling_metrics
    registry = request.app[REGISTRY]
    # Worker 1 of several: every worker's series, labelled `worker` (router/worker_metrics.py).
    body = await worker_metrics.gathered(registry, siblings) if siblings else generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def login(request: web.Request) -> web.Response:
    """The login form's POST: a client's token (or a JWT) opens an HttpOnly, SameSite=Strict
    session cookie carrying that client's name and role; the token itself is never stored."""
    wait = request.app[LIMITER].take("peer:" + (request.remote or "?"))
    if wait:
        return _too_many(wait)
    raw = await request.content.read(4096)
    auth = request.app[AUTH]
    identity = None if auth.open else await auth.identify(Sessions.form_token(raw))
    if identity is None:
        return console.login_response("unknown token")
    resp = web.Response(status=303, headers={"Location": "/"})
    sid, lifetime = request.app[SESSIONS].open(identity)
    resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/", max_age=lifetime,
                    secure=request.app[CONFIG].api.tls is not None)
    return resp


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].close(request.cookies.get(SESSION_COOKIE, ""))
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


def interface_view(running: RunningInterface, routes: RouteTable, stats: InterfaceStats | None = None,
                   ) -> dict[str, Any]:
    """One interface as the API lists it: config, route, counts, lag and its kind's details;
    `stats`: its counts over the host's workers (default: this process's)."""
    name = running.cfg.name
    route = routes.get(name)
    st = stats if stats is not None else running.stats
    cfg = running.cfg
    return {
        "name": name, "kind": cfg.kind, "format": cfg.format,
        "mapping": getattr(cfg, "mapping", None) if cfg.kind == "hl7-mllp" else cfg.format,
        "address": running.address(), "legacy": cfg.legacy,
        "route": route.mode, "facilities": route.facilities,
        "counts": {k: v for k, v in st.as_dict().items() if isinstance(v, int) and not isinstance(v, bool)},
        "last_message_at": st.last_message_at, "last_error": st.last_error,
        "last_error_at": st.last_error_at,
        "lag": {"shadow_backlog": st.shadow_backlog, "in_flight": st.in_flight},
        **running.details(),
    }


async def list_interfaces(request: web.Request) -> web.Response:
    routes = request.app[ROUTES]
    counts = await request.app[RUNNING].host_stats()
    return web.json_response({"interfaces": [interface_view(r, routes, counts[n])
                                             for n, r in request.app[INTERFACES].items()]})


async def list_routes(request: web.Request) -> web.Response:
    return web.json_response({"routes": {n: r.model_dump() for n, r in request.app[ROUTES].all().items()}})


async def set_route(request: web.Request) -> web.Response:
    routes, interfaces = request.app[ROUTES], request.app[INTERFACES]
    name = request.match_info["iface"]
    if name not in interfaces:
        return _error(404, "unknown interface")
    body = await _body(request, RouteChange)
    mode, facility, force = body.mode, body.facility or None, body.force
    note(request, mode=mode, facility=facility, force=force)
    identity = request[IDENTITY]
    if force:
        request[PENDING].action = "forced_flip"
        if not allows(identity.role, "admin"):
            return _error(403, "a forced flip needs the admin role")
    running = interfaces[name]
    if mode in ("legacy", "shadow") and running.cfg.legacy is None:
        return _error(409, f"{name} has no legacy destination, so it cannot run in {mode}")
    if running.cfg.format == "gl-export" and running.cfg.gl is not None:  # the posting path: GL parity days
        verdict = await gl_parity.flip_verdict(request.app[STORE], name, running.cfg.gl.segments,
                                               request.app[CONFIG].posting.gate_days, routes.get(name), mode,
                                               facility)
    else:
        verdict = parity.gate(running.cfg, routes.get(name), await request.app[RUNNING].parity_of(name), mode,
                              facility)
    if verdict.refusal and not force:
        return web.json_response({"error": f"flip refused: {verdict.refusal}", "parity": verdict.window}, status=409)
    forced = force and verdict.refusal is not None
    await begin(request, forced=forced)
    try:
        route = await routes.set(
            # The actor is who authenticated; a client's X-Ficus-Actor header is ignored.
            name, mode, reason=body.reason, actor=identity.name, facility=facility,
            keep_facilities=body.keep_facilities,
            # The route history names the parity window the gate judged (start, revision, counts).
            extra={"forced": forced, "parity": verdict.window},
        )
    except RouteError as exc:
        return _error(exc.status, exc.reason)
    note(request, revision=route.revision)
    return web.json_response({"interface": name, "route": route.model_dump(), "parity": verdict.window})


async def route_history(request: web.Request) -> web.Response:
    name = request.match_info["iface"]
    if name not in request.app[INTERFACES]:
        return _error(404, "unknown interface")
    try:
        history = await request.app[ROUTES].history(name)
    except RouteError as exc:
        return _error(exc.status, exc.reason)
    return web.json_response({"interface": name, "history": history})


def _decoded(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None  # not ours: something else published on a canonical subject


async def get_event(request: web.Request) -> web.Response:
    seq = _seq(request.match_info["id"], "event")
    stream = names.STREAM_SHADOW if queries.of(request, queries.EventQuery).mode == "shadow" else names.STREAM_CANONICAL
    note(request, mode="shadow" if stream == names.STREAM_SHADOW else "live", seq=seq)
    msg = await request.app[STORE].get_msg(stream, seq)
    if msg is None:
        return _error(404, f"no event {seq}")
    request[PENDING].interface = msg.headers.get(names.HDR_INTERFACE)
    return web.json_response({"seq": seq, "event": _decoded(msg.data or b"{}")})


async def list_dlq(request: web.Request) -> web.Response:
    store = request.app[STORE]
    query = queries.of(request, queries.DlqQuery)
    letters = await dlq.list_letters(store, query.interface, query.after, min(query.limit, queries.PAGE_MAX))
    done = await replay.replayed_ids(request.app[RUNNING])
    dropped = await replay.discarded_ids(request.app[RUNNING])
    note(request, count=len(letters), ids=[x.id for x in letters], interfaces=sorted({x.interface for x in letters}))
    return web.json_response({"dead_letters": [
        {**dlq.summary(x), "replayed": x.id in done, "discarded": x.id in dropped} for x in letters]})


async def get_dlq(request: web.Request) -> web.Response:
    seq = _seq(request.match_info["id"], "dead letter")
    note(request, dead_letter=seq)
    letter = await dlq.get(request.app[STORE], seq)
    if letter is None:
        return _error(404, f"no dead letter {seq}")
    request[PENDING].interface = letter.interface
    return web.json_response(dlq.summary(letter))


async def get_ledger(request: web.Request) -> web.Response:
    """GET /api/v1/ledger/{iface}[?day=YYYY-MM-DD]: the reconciliation ledger (router/ledger.py)."""
    name = request.match_info["iface"]
    if name not in request.app[INTERFACES]:
        return _error(404, "unknown interface")
    day = queries.of(request, queries.LedgerQuery).day
    if day is not None and not ledger.valid_day(day):
        return _error(400, "day must be a date, YYYY-MM-DD")
    return web.json_response(await request.app[LEDGER].view(request.app[STORE], name, day))


async def get_parity(request: web.Request) -> web.Response:
    """The current parity window of an interface (and a summary of the one before)."""
    name = request.match_info["iface"]
    running = request.app[INTERFACES].get(name)
    if running is None:
        return _error(404, "unknown interface")
    return web.json_response({
        "interface": name, "route": request.app[ROUTES].get(name).mode,
        "gate": running.cfg.parity_gate, "min_samples": running.cfg.parity_min_samples,
        **(await request.app[RUNNING].parity_of(name)).as_dict(),
    })


async def get_gl_parity(request: web.Request) -> web.Response:
    """GET /api/v1/parity/{iface}/gl?day=D: the legacy GL export of a day against Ficus's journal
    entries (router/gl_parity.py). A viewer's read: GL accounts, money, entry and event ids, export
    file and line numbers; no message content."""
    name = request.match_info["iface"]
    running = request.app[INTERFACES].get(name)
    if running is None:
        return _error(404, "unknown interface")
    day = queries.of(request, queries.GlParityQuery).day
    if running.cfg.format != "gl-export" or running.cfg.gl is None:
        return _error(409, f"{name} is not a GL export interface (format 'gl-export')")
    result = await gl_parity.report(request.app[STORE], name, running.cfg.gl.segments, day)
    return web.json_response({"interface": name, "route": request.app[ROUTES].get(name).mode,
                              "gate_days": request.app[CONFIG].posting.gate_days, **result.as_dict()})


async def list_schemas(request: web.Request) -> web.Response:
    """JSON Schema of every canonical event type, and the AsyncAPI document of the subjects."""
    models = default_models()
    return web.json_response({
        "schemas": event_schemas(models),
        "asyncapi": asyncapi_document(models, default_subjects(models)),
    })


async def get_schema(request: web.Request) -> web.Response:
    name = request.match_info["type"]
    models = default_models()
    if name not in models:
        return _error(404, "unknown event type; GET /api/v1/schemas lists them")
    return web.json_response(event_schemas({name: models[name]})[name])


async def _letter_action(request: web.Request, model: type[B], *, empty_ok: bool = False) -> tuple[int, B]:
    """The dead letter an action is about and the action's body: audited under its id and
    interface, begun (ApiProblem 404 when there is no such letter)."""
    seq = _seq(request.match_info["id"], "dead letter")
    note(request, dead_letter=seq)
    body = await _body(request, model, empty_ok=empty_ok)
    letter = await dlq.get(request.app[STORE], seq)
    if letter is None:
        raise ApiProblem(404, f"no dead letter {seq}")
    request[PENDING].interface = letter.interface
    await begin(request)
    return seq, body


async def replay_letter(request: web.Request) -> web.Response:
    seq, body = await _letter_action(request, ReplayLetter, empty_ok=True)
    note(request, dry_run=body.dry_run)
    try:
        record = await replay.replay_dead_letter(request.app[RUNNING], seq, dry_run=body.dry_run)
    except replay.ReplayError as exc:
        return _error(exc.status, exc.reason)
    note(request, events=record.get("events"))
    return web.json_response(record)


async def discard_letter(request: web.Request) -> web.Response:
    """Marks a dead letter as needing no replay, with a reason; the actor is who authenticated."""
    seq, body = await _letter_action(request, DiscardLetter)
    try:
        record = await replay.discard_dead_letter(request.app[RUNNING], seq, body.reason,
                                                  request[IDENTITY].name)
    except replay.ReplayError as exc:
        return _error(exc.status, exc.reason)
    return web.json_response(record)


def _since(text: str) -> datetime:
    """An ISO 8601 time (a `Z` suffix allowed; no zone means UTC), in UTC."""
    try:
        since = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return since.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ApiProblem(400, 'since must be an ISO 8601 time, e.g. "2026-11-25T08:00:00Z"') from None


async def replay_interface(request: web.Request) -> web.StreamResponse:
    """Re-translate raw traffic: {"since": ISO 8601 time, "dry_run": false, "limit": N}.

    With ``Accept: application/x-ndjson`` the answer streams: a ``{"progress": ...}`` line per
    chunk, then ``{"result": ...}`` or ``{"error": ..., "status": ...}`` (the CLI's progress
    display); otherwise one JSON object when done.
    """
    body = await _body(request, ReplaySince)
    since = _since(body.since)
    running, iface = request.app[RUNNING], request.match_info["iface"]
    limit = body.limit or 1_000_000
    pending = request[PENDING]
    if iface not in running.interfaces:
        return _error(404, "unknown interface")
    await begin(request, since=since.isoformat(), dry_run=body.dry_run, limit=body.limit)

    # A dry run's differences carry field values (message content): an admin's to read. Others
    # see which fields of which events would change, not the values.
    values = allows(request[IDENTITY].role, "admin")

    def counted(result: replay.ReplayResult) -> None:
        note(request, units=result.units, replayed=result.replayed, events=result.events, failed=result.failed,
             token=result.token or None, values_shown=values if body.dry_run else None)
        if result.diff is not None and not values:
            result.diff = replay.without_values(result.diff)

    if "application/x-ndjson" not in request.headers.get("Accept", ""):
        try:
            result = await replay.replay_since(running, iface, since, dry_run=body.dry_run, limit=limit)
        except replay.ReplayError as exc:
            return _error(exc.status, exc.reason)
        counted(result)
        return web.json_response(result.as_dict())
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def work() -> None:
        try:
            result = await replay.replay_since(running, iface, since, dry_run=body.dry_run, limit=limit,
                                               progress=lambda p: lines.put_nowait({"progress": p.as_dict()}))
            counted(result)
            lines.put_nowait({"result": result.as_dict()})
        except replay.ReplayError as exc:
            pending.outcome = exc.status
            lines.put_nowait({"error": exc.reason, "status": exc.status})
        finally:
            lines.put_nowait(None)

    task = asyncio.create_task(work())
    try:
        while (line := await lines.get()) is not None:
            await resp.write(json.dumps(line).encode() + b"\n")
    finally:
        if not task.done():  # the client went away: the replay stops with it
            task.cancel()
    await resp.write_eof()
    return resp


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API (router/openapi.py): no data, so no credential."""
    from router.openapi import served  # it reads ENDPOINTS, below

    return web.json_response(served())


AUDIT_LIMIT = 1000


async def get_audit(request: web.Request) -> web.Response:
    """GET /api/v1/audit?since=&after=&actor=&interface=&action=&limit= (admin): audit records, oldest first.

    `since` defaults to 24 hours ago; `next_after` (a stream sequence) is set when more records
    may follow: ask again with `after=next_after`.
    """
    query = queries.of(request, queries.AuditQuery)
    since = query.since or datetime.now(UTC) - timedelta(days=1)
    action = ACTIONS[ACTIONS.index(query.action)] if query.action else None  # as an Action (the model checked it)
    records, next_after = await request.app[AUDIT].query(
        since=since, after=query.after, actor=query.actor, interface=query.interface,
        action=action, limit=max(1, min(query.limit, AUDIT_LIMIT)))
    return web.json_response({"records": records, "next_after": next_after})


VIEWER, OPERATOR, ADMIN = Rule("viewer"), Rule("operator"), Rule("admin")


def CONSUMER(action: Action) -> Rule:
    """A content read of the consumer API: any role with content access, audited before it is served."""
    return Rule("viewer", action, content=True, consumer=True)


ENDPOINTS: tuple[tuple[str, str, Handler, Rule], ...] = (
    # The console (router/console/): HTML pages, fragments and its SSE stream; a session counts.
    ("GET", "/", console.overview, Rule("viewer", page=True)),
    ("GET", "/console/interfaces/{iface}", console.interface_page, Rule("viewer", page=True)),
    ("GET", "/console/interfaces/{iface}/gate", console.gate_fragment, Rule("viewer", page=True)),
    ("GET", "/console/interfaces/{iface}/history", console.history_fragment, Rule("viewer", page=True)),
    ("GET", "/console/dead-letters", console.dead_letters_page, Rule("viewer", page=True)),
    ("GET", "/console/messages", console.messages_page, Rule("viewer", page=True)),
    ("GET", "/console/audit", console.audit_page, Rule("admin", page=True)),
    ("GET", "/console/stream", console.stream, Rule("viewer", page=True)),
    ("GET", "/static/{name}", console.static, Rule(None)),
    ("POST", "/login", login, Rule(None)),
    ("POST", "/logout", logout, Rule(None)),
    ("GET", "/healthz", healthz, Rule(None)),
    ("GET", "/readyz", readyz, Rule(None)),
    ("GET", "/metrics", metrics, VIEWER),
    ("GET", "/api/v1/interfaces", list_interfaces, VIEWER),
    ("GET", "/api/v1/routes", list_routes, VIEWER),
    # Operator; with "force": true, admin (set_route checks it, the body says it).
    ("PUT", "/api/v1/routes/{iface}", set_route, Rule("operator", "route_flip")),
    ("GET", "/api/v1/routes/{iface}/history", route_history, VIEWER),
    # The consumer API (router/events_api.py); the stream before {id}, which would match it.
    ("GET", "/api/v1/events", events_api.list_events, CONSUMER("events_list")),
    # Audited once per connection: its start before the first byte, then its end.
    ("GET", "/api/v1/events/stream", events_api.stream_events, Rule("viewer", "events_stream", consumer=True)),
    ("GET", "/api/v1/events/{id}", get_event, CONSUMER("event_read")),
    ("GET", "/api/v1/dlq", list_dlq, Rule("admin", "dlq_list", content=True)),
    ("GET", "/api/v1/dlq/{id}", get_dlq, Rule("admin", "dlq_read", content=True)),
    ("POST", "/api/v1/dlq/{id}/replay", replay_letter, Rule("operator", "dlq_replay")),
    ("POST", "/api/v1/dlq/{id}/discard", discard_letter, Rule("operator", "dlq_discard")),
    ("POST", "/api/v1/replay/{iface}", replay_interface, Rule("operator", "replay")),
    ("GET", "/api/v1/parity/{iface}", get_parity, VIEWER),
    ("GET", "/api/v1/parity/{iface}/gl", get_gl_parity, VIEWER),
    ("GET", "/api/v1/ledger/{iface}", get_ledger, VIEWER),
    ("GET", "/api/v1/sinks", list_sinks, VIEWER),
    ("POST", "/api/v1/sinks/{id}/pause", pause_sink, Rule("operator", "sink_pause")),
    ("POST", "/api/v1/sinks/{id}/resume", resume_sink, Rule("operator", "sink_resume")),
    ("POST", "/api/v1/sinks/{id}/replay", replay_sink, Rule("operator", "sink_replay")),
    ("GET", "/api/v1/schemas", list_schemas, VIEWER),
    ("GET", "/api/v1/schemas/{type}", get_schema, VIEWER),
    ("GET", "/api/v1/audit", get_audit, ADMIN),
    # Status lookups (router/views_api.py): claim and account money, i.e. message content.
    ("GET", "/api/v1/claims/{claim}", get_claim, CONSUMER("claim_read")),
    ("GET", "/api/v1/remittances/{trace}", get_remittance, CONSUMER("remittance_read")),
    ("GET", "/api/v1/accounts/{account}/charges", get_charges, CONSUMER("charges_read")),
    ("POST", "/api/v1/views/rebuild", rebuild_views, Rule("operator", "views_rebuild")),
    # The message browser (router/browser.py): business keys and the links of a unit, i.e. content.
    ("GET", "/api/v1/messages", browser.search_messages, CONSUMER("message_search")),
    ("GET", "/api/v1/messages/{correlation}", browser.get_message, CONSUMER("message_read")),
    ("GET", "/api/v1/alerts", get_alerts, VIEWER),
    # The instance registry (router/instances.py): every instance, its leases and health.
    ("GET", "/api/v1/instances", list_instances, VIEWER),
    # One owner per polling interface (router/leases_api.py): who holds which; a release is audited.
    ("GET", "/api/v1/leases", get_leases, VIEWER),
    ("POST", "/api/v1/leases/{iface}/release", release_lease, Rule("operator", "lease_release")),
    ("GET", "/api/v1/openapi.json", get_openapi, Rule(None)),
)
"""Every route with its access rule: the README's role matrix is this table."""


def tls_context(tls: ApiTlsConfig) -> tuple[ssl.SSLContext, ReloadingContext]:
    """The API's HTTPS context (protocols/tls.py: TLS 1.2 or later; client certificates checked
    against `client_ca`, required with `require_client_cert`).

    Certificates are reloaded when their files change: each handshake asks the holder for the
    context in force and switches to it (the SNI callback runs for every handshake, SNI or
    not), so the next connection gets a replaced certificate and open ones keep theirs.
    Returns the context to serve with and its holder (``reload()`` at SIGHUP). Raises TlsError
    (an OSError naming the file) when the files do not load.
    """
    files = TlsFiles(Path(tls.cert), Path(tls.key), Path(tls.client_ca) if tls.client_ca else None)
    holder = ReloadingContext("api", lambda: server_context(files, require_client_cert=tls.require_client_cert),
                              files.paths())
    front = holder.current

    def pick(ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        fresh = holder.fresh()
        if fresh is not front:
            ssl_object.context = fresh

    front.sni_callback = pick
    return front, holder


def metrics_registry(running: Running) -> CollectorRegistry:
    """What `/metrics` exposes of a started service (also what another worker of `workers`
    serves worker 1 on its socket: router/worker_metrics.py)."""
    registry = CollectorRegistry()
    registry.register(SinkCollector(running.sinks))
    registry.register(StatsCollector({n: r.stats for n, r in running.interfaces.items()}))
    registry.register(ListenerCollector({n: (lambda listener=r.listener: listener.stats)
                                         for n, r in running.interfaces.items() if r.listener is not None}))
    registry.register(events_api.SSE_DROPPED)
    registry.register(NatsCollector(running.store))
    return registry


def make_app(running: Running) -> web.Application:
    """The aiohttp application serving the started service: each resource under its own key."""
    cfg = running.cfg
    problem = cfg.api.exposure_problem()
    if problem:
        # A config built in code skips validation; the API still never runs open on the network.
        raise ConfigError("api", [problem])
    warning = cfg.api.insecure_warning()
    if warning:
        log.warning(warning)
    app = web.Application(middlewares=[errors, guard], client_max_size=MAX_BODY)
    app[CONFIG] = cfg
    app[STORE] = running.store
    app[ROUTES] = running.routes
    app[INTERFACES] = running.interfaces
    app[READY] = running.ready
    app[STARTED_AT] = running.started_at
    app[RUNNING] = running
    app[SESSIONS] = Sessions()
    app[LEDGER] = ledger.Reader()
    app[AUTH] = auth = Authenticator(cfg.api)
    app[LIMITER] = RateLimiter(cfg.api.rate_limit_per_minute)
    app[AUDIT] = AuditTrail(running.store)
    app[BACKGROUND] = set()
    app[RULES] = {}

    async def closing(_app: web.Application) -> None:
        await auth.close()

    app.on_cleanup.append(closing)
    app[events_api.FEEDS] = set()
    app.on_shutdown.append(events_api.close_feeds)
    app[REGISTRY] = metrics_registry(running)
    for method, path, handler, rule in ENDPOINTS:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD, under the same rule
        else:
            app.router.add_route(method, path, handler)
        app[RULES][(method, path)] = rule
    return app
