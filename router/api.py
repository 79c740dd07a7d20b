"""The thin HTTP API (aiohttp): JSON under /api/v1, bearer tokens, health, metrics, dashboard.

Handlers are plain functions reading what they need from typed app state, one key per
resource (the config, the store, the routing table, the interfaces), all of it started. The
`viewer` token reads; the `operator` token also flips routes and replays. With no tokens
configured (allowed only on a loopback listener, or with `api.insecure = true`) the API is
open. Request bodies are validated by strict models; a malformed request of any kind gets a
4xx with a JSON reason that quotes no value, never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from canonical.schemas import asyncapi_document, default_models, default_subjects, event_schemas
from router import dlq, ledger, names, parity, replay
from router.config import INSECURE_WARNING, SLUG, ConfigError, FicusConfig, Mode
from router.dashboard import SESSION_COOKIE, Sessions, login_page, render_dashboard
from router.interfaces import RunningInterface
from router.routes import RouteError, RouteTable
from router.stats import ListenerCollector, StatsCollector
from router.store import Store, StoreError

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
ROLE: web.RequestKey[str] = web.RequestKey("role")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# The dashboard checks its own credentials (a bearer token or the login form's cookie).
DASHBOARD_PATHS = frozenset({"/", "/login", "/logout"})
# A listing filtered by interface or type reads at most this many stream messages per call.
EVENTS_SCAN_MAX = 1000
EVENTS_SCAN_FACTOR = 10
# Stream sequences are uint64 in JetStream; ids beyond that cannot exist.
MAX_SEQ = 2**63 - 1
TYPE_PART = re.compile(r"^[a-z0-9_-]{1,64}$")
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


def role_for(tokens: Mapping[Any, str], given: str) -> str | None:
    """The role whose token is `given` (compared in constant time, as bytes: any header is valid input)."""
    try:
        given_bytes = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    for role, token in tokens.items():
        if token and secrets.compare_digest(token.encode(), given_bytes):
            return str(role)
    return None


def bearer_role(request: web.Request) -> str | None:
    """The role of the request's bearer token, if any."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    return role_for(request.app[CONFIG].api.tokens, header.removeprefix("Bearer ").strip())


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens: viewer for reads, operator for changes."""
    unmatched = request.match_info.http_exception
    if unmatched is not None:
        raise unmatched  # 404/405 before 401: the routes are documented, nothing to hide
    tokens = request.app[CONFIG].api.tokens
    if request.path in OPEN_PATHS or request.path in DASHBOARD_PATHS or not tokens:
        request[ROLE] = "operator" if not tokens else "anonymous"
        return await handler(request)
    role = bearer_role(request)
    if role is None:
        return _error(401, "missing or unknown bearer token")
    if request.method not in ("GET", "HEAD") and role != "operator":
        return _error(403, "this needs the operator token")
    request[ROLE] = role
    return await handler(request)


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
    """POST /api/v1/dlq/{id}/replay: no fields (an empty body is fine too)."""


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


def _interface_param(request: web.Request) -> str | None:
    value = request.query.get("interface") or None
    if value is not None and not SLUG.match(value):
        raise ApiProblem(400, "interface names are slugs: lowercase letters, digits, - and _")
    return value


async def healthz(request: web.Request) -> web.Response:
    uptime = round(time.time() - request.app[STARTED_AT], 1)
    return web.json_response({"status": "ok", "uptime_seconds": uptime})


async def readyz(request: web.Request) -> web.Response:
    ok, problems = request.app[READY]()
    # Which publishing path the start-up self-test chose: information, never a reason to be unready.
    publisher = request.app[STORE].publisher
    return web.json_response({"ready": ok, "problems": problems, "publisher": publisher},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _dashboard_role(request: web.Request) -> str | None:
    """Who may see the dashboard: anyone without tokens; else a bearer token or a login session."""
    if not request.app[CONFIG].api.tokens:
        return "operator"
    return bearer_role(request) or request.app[SESSIONS].role(request.cookies.get(SESSION_COOKIE, ""))


def _html(text: str, status: int = 200) -> web.Response:
    resp = web.Response(text=text, status=status, content_type="text/html")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
    return resp


async def dashboard(request: web.Request) -> web.Response:
    """The dashboard; with tokens configured, a 401 login form (and no data) until one is given."""
    if _dashboard_role(request) is None:
        return _html(login_page(), 401)
    today = await _ledger_today(request.app[LEDGER], request.app[STORE], request.app[INTERFACES])
    return _html(render_dashboard(request.app[RUNNING], ledger=today))


async def _ledger_today(
    reader: ledger.Reader, store: Store, interfaces: Mapping[str, RunningInterface]
) -> dict[str, str]:
    """Each interface's ledger today in one line, for the dashboard; "?" while NATS is away."""
    out: dict[str, str] = {}
    today = ledger.day_of()
    for name in interfaces:
        try:
            out[name] = ledger.summary((await reader.view(store, name, today))["days"][0])
        except StoreError:
            out[name] = "?"
    return out


async def login(request: web.Request) -> web.Response:
    """The login form's POST: a valid token opens an HttpOnly, SameSite=Strict session cookie."""
    raw = await request.content.read(4096)
    role = role_for(request.app[CONFIG].api.tokens, Sessions.form_token(raw))
    if role is None:
        return _html(login_page("unknown token"), 401)
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.set_cookie(SESSION_COOKIE, request.app[SESSIONS].open(role), httponly=True, samesite="Strict",
                    path="/", max_age=int(Sessions.LIFETIME))
    return resp


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].close(request.cookies.get(SESSION_COOKIE, ""))
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


def interface_view(running: RunningInterface, routes: RouteTable) -> dict[str, Any]:
    """One interface as the API lists it: config, route, counts, lag and its kind's details."""
    name = running.cfg.name
    route = routes.get(name)
    st = running.stats
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
    return web.json_response({"interfaces": [interface_view(r, routes) for r in request.app[INTERFACES].values()]})


async def list_routes(request: web.Request) -> web.Response:
    return web.json_response({"routes": {n: r.model_dump() for n, r in request.app[ROUTES].all().items()}})


async def set_route(request: web.Request) -> web.Response:
    routes, interfaces = request.app[ROUTES], request.app[INTERFACES]
    name = request.match_info["iface"]
    if name not in interfaces:
        return _error(404, "unknown interface")
    body = await _body(request, RouteChange)
    mode, facility, force = body.mode, body.facility or None, body.force
    running = interfaces[name]
    if mode in ("legacy", "shadow") and running.cfg.legacy is None:
        return _error(409, f"{name} has no legacy destination, so it cannot run in {mode}")
    verdict = parity.gate(running.cfg, routes.get(name), running.stats.parity, mode, facility)
    if verdict.refusal and not force:
        return web.json_response({"error": f"flip refused: {verdict.refusal}", "parity": verdict.window}, status=409)
    actor = request.headers.get("X-Ficus-Actor", request[ROLE])
    try:
        route = await routes.set(
            name, mode, reason=body.reason, actor=actor, facility=facility, keep_facilities=body.keep_facilities,
            # The audit record names the parity window the gate judged (start, revision, counts).
            extra={"forced": force and verdict.refusal is not None, "parity": verdict.window},
        )
    except RouteError as exc:
        return _error(exc.status, exc.reason)
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


def _int(request: web.Request, key: str, default: int, high: int | None = None) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
        raise ApiProblem(400, f"{key} must be a non-negative integer")
    value = int(raw)
    return min(value, high) if high else value


def _event_subject(etype: str | None, shadow: bool) -> str:
    """The subject a listing reads: every canonical event, or those of one type's domain.entity.action."""
    if not etype:
        return names.SUBJECTS_SHADOW if shadow else names.SUBJECTS_CANONICAL
    parts = etype.split(".")
    if len(parts) < 6 or parts[:2] != ["org", "ficus"] or not all(TYPE_PART.match(p) for p in parts[2:]):
        raise ApiProblem(400, "type is org.ficus.<domain>.<entity>.<action>.v<N>")
    return ("shadow." if shadow else "") + "canonical." + ".".join(parts[2:5])


def _decoded(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None  # not ours: something else published on a canonical subject


async def list_events(request: web.Request) -> web.Response:
    """Canonical events from JetStream: ?type=&interface=&after=&limit=&mode=live|shadow.

    A filtered listing reads at most `min(limit * EVENTS_SCAN_FACTOR, EVENTS_SCAN_MAX)` stream
    messages per call, whatever it finds; `next_after` is the last sequence examined, so a
    client pages on (`after=next_after`) until `next_after` stops moving.
    """
    shadow = request.query.get("mode", "live") == "shadow"
    stream = names.STREAM_SHADOW if shadow else names.STREAM_CANONICAL
    etype = request.query.get("type") or None
    subject = _event_subject(etype, shadow)
    after = _int(request, "after", 0)
    limit = _int(request, "limit", 100, 1000)
    iface = _interface_param(request)
    filtered = iface is not None or etype is not None
    scan = min(max(limit * EVENTS_SCAN_FACTOR, 100), EVENTS_SCAN_MAX) if filtered else limit
    rows = await request.app[STORE].read(stream, subject, after, scan) if limit else []
    events: list[dict[str, Any]] = []
    last = after
    for seq, data, headers in rows:
        last = seq
        if iface and headers.get(names.HDR_INTERFACE) != iface:
            continue
        event = _decoded(data)
        if etype and (not isinstance(event, dict) or event.get("type") != etype):
            continue
        events.append({"seq": seq, "event": event})
        if len(events) >= limit:
            break
    return web.json_response({"events": events, "next_after": last})


async def get_event(request: web.Request) -> web.Response:
    seq = _seq(request.match_info["id"], "event")
    stream = names.STREAM_SHADOW if request.query.get("mode") == "shadow" else names.STREAM_CANONICAL
    msg = await request.app[STORE].get_msg(stream, seq)
    if msg is None:
        return _error(404, f"no event {seq}")
    return web.json_response({"seq": seq, "event": _decoded(msg.data or b"{}")})


async def list_dlq(request: web.Request) -> web.Response:
    store = request.app[STORE]
    letters = await dlq.list_letters(store, _interface_param(request),
                                     _int(request, "after", 0), _int(request, "limit", 100, 1000))
    done = await replay.replayed_ids(request.app[RUNNING])
    return web.json_response({"dead_letters": [{**dlq.summary(x), "replayed": x.id in done} for x in letters]})


async def get_dlq(request: web.Request) -> web.Response:
    seq = _seq(request.match_info["id"], "dead letter")
    letter = await dlq.get(request.app[STORE], seq)
    if letter is None:
        return _error(404, f"no dead letter {seq}")
    return web.json_response(dlq.summary(letter))


async def get_ledger(request: web.Request) -> web.Response:
    """GET /api/v1/ledger/{iface}[?day=YYYY-MM-DD]: the reconciliation ledger (router/ledger.py)."""
    name = request.match_info["iface"]
    if name not in request.app[INTERFACES]:
        return _error(404, "unknown interface")
    day = request.query.get("day")
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
        **running.stats.parity.as_dict(),
    })


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


async def replay_letter(request: web.Request) -> web.Response:
    seq = _seq(request.match_info["id"], "dead letter")
    await _body(request, ReplayLetter, empty_ok=True)
    try:
        record = await replay.replay_dead_letter(request.app[RUNNING], seq)
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
    if "application/x-ndjson" not in request.headers.get("Accept", ""):
        try:
            result = await replay.replay_since(running, iface, since, dry_run=body.dry_run, limit=limit)
        except replay.ReplayError as exc:
            return _error(exc.status, exc.reason)
        return web.json_response(result.as_dict())
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def work() -> None:
        try:
            result = await replay.replay_since(running, iface, since, dry_run=body.dry_run, limit=limit,
                                               progress=lambda p: lines.put_nowait({"progress": p.as_dict()}))
            lines.put_nowait({"result": result.as_dict()})
        except replay.ReplayError as exc:
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


def make_app(running: Running) -> web.Application:
    """The aiohttp application serving the started service: each resource under its own key."""
    cfg = running.cfg
    problem = cfg.api.exposure_problem()
    if problem:
        # A config built in code skips validation; the API still never runs open on the network.
        raise ConfigError("api", [problem])
    if cfg.api.insecure and not cfg.api.tokens:
        log.warning(INSECURE_WARNING.format(listen=cfg.api.listen))
    app = web.Application(middlewares=[errors, auth])
    app[CONFIG] = cfg
    app[STORE] = running.store
    app[ROUTES] = running.routes
    app[INTERFACES] = running.interfaces
    app[READY] = running.ready
    app[STARTED_AT] = running.started_at
    app[RUNNING] = running
    app[SESSIONS] = Sessions()
    app[LEDGER] = ledger.Reader()
    registry = CollectorRegistry()
    registry.register(StatsCollector({n: r.stats for n, r in running.interfaces.items()}))
    registry.register(ListenerCollector({n: (lambda listener=r.listener: listener.stats)
                                         for n, r in running.interfaces.items() if r.listener is not None}))
    app[REGISTRY] = registry
    app.router.add_get("/", dashboard)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/interfaces", list_interfaces)
    app.router.add_get("/api/v1/routes", list_routes)
    app.router.add_put("/api/v1/routes/{iface}", set_route)
    app.router.add_get("/api/v1/routes/{iface}/history", route_history)
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_get("/api/v1/events/{id}", get_event)
    app.router.add_get("/api/v1/dlq", list_dlq)
    app.router.add_get("/api/v1/dlq/{id}", get_dlq)
    app.router.add_post("/api/v1/dlq/{id}/replay", replay_letter)
    app.router.add_post("/api/v1/replay/{iface}", replay_interface)
    app.router.add_get("/api/v1/parity/{iface}", get_parity)
    app.router.add_get("/api/v1/ledger/{iface}", get_ledger)
    app.router.add_get("/api/v1/schemas", list_schemas)
    app.router.add_get("/api/v1/schemas/{type}", get_schema)
    return app
