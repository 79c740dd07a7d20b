"""The thin HTTP API (aiohttp): JSON under /api/v1, bearer tokens, health, metrics, dashboard.

Handlers are plain functions reading the running `Service` from typed app state. The
`viewer` token reads; the `operator` token also flips routes and replays. With no tokens
configured (allowed only on a loopback listener) the API is open.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from canonical.schemas import asyncapi_document, default_models, default_subjects, event_schemas
from router import dlq, names, replay
from router.dashboard import render_dashboard
from router.routes import RouteError, modes
from router.stats import StatsCollector

if TYPE_CHECKING:
    from router.service import Service

SERVICE: web.AppKey[Service] = web.AppKey("service")
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry")
ROLE: web.RequestKey[str] = web.RequestKey("role")
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens: viewer for reads, operator for changes."""
    tokens = request.app[SERVICE].cfg.api.tokens
    if request.path in OPEN_PATHS or not tokens:
        request[ROLE] = "operator" if not tokens else "anonymous"
        return await handler(request)
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    role = next((r for r, t in tokens.items() if t and secrets.compare_digest(t, given)), None)
    if role is None:
        return _error(401, "missing or unknown bearer token")
    if request.method not in ("GET", "HEAD") and role != "operator":
        return _error(403, "this needs the operator token")
    request[ROLE] = role
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    uptime = round(time.time() - request.app[SERVICE].started_at, 1)
    return web.json_response({"status": "ok", "uptime_seconds": uptime})


async def readyz(request: web.Request) -> web.Response:
    ok, problems = request.app[SERVICE].ready()
    return web.json_response({"ready": ok, "problems": problems}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(text=render_dashboard(request.app[SERVICE]), content_type="text/html")


def interface_view(svc: Service, name: str) -> dict[str, Any]:
    running = svc.interfaces[name]
    assert svc.routes is not None
    route = svc.routes.get(name)
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
    svc = request.app[SERVICE]
    return web.json_response({"interfaces": [interface_view(svc, n) for n in svc.interfaces]})


async def list_routes(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    assert svc.routes is not None
    return web.json_response({"routes": {n: r.model_dump() for n, r in svc.routes.all().items()}})


def _gate(svc: Service, name: str, mode: str, facility: str | None) -> str | None:
    """Why a flip to modern is refused (parity below the gate), or None."""
    assert svc.routes is not None
    if mode != "modern":
        return None
    current = svc.routes.get(name).mode_for(facility)
    if current == "modern":
        return None
    cfg = svc.interfaces[name].cfg
    parity = svc.interfaces[name].stats.parity
    if current != "shadow":
        return f"{name} is in {current}: run it in shadow first to gather parity (or force)"
    if parity.samples < cfg.parity_min_samples:
        return (f"parity has {parity.samples} samples, fewer than the {cfg.parity_min_samples} "
                "needed (or force)")
    ratio = parity.ratio or 0.0
    if ratio < cfg.parity_gate:
        return f"parity {ratio:.4f} is below the gate {cfg.parity_gate} (or force)"
    return None


async def set_route(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    assert svc.routes is not None
    name = request.match_info["iface"]
    if name not in svc.interfaces:
        return _error(404, f"unknown interface {name!r}")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(400, "body must be JSON: {mode, reason, facility?, force?}")
    try:
        (mode,) = modes([str(body.get("mode", ""))])
    except RouteError as exc:
        return _error(400, exc.reason)
    facility = body.get("facility") or None
    force = bool(body.get("force", False))
    if mode in ("legacy", "shadow") and svc.interfaces[name].cfg.legacy is None:
        return _error(409, f"{name} has no legacy destination, so it cannot run in {mode}")
    refusal = _gate(svc, name, mode, facility)
    if refusal and not force:
        return _error(409, f"flip refused: {refusal}")
    actor = request.headers.get("X-Ficus-Actor", request[ROLE])
    try:
        route = await svc.routes.set(
            name, mode, reason=str(body.get("reason", "")), actor=actor, facility=facility,
            extra={"forced": force and refusal is not None,
                   "parity": svc.interfaces[name].stats.parity.ratio},
        )
    except RouteError as exc:
        return _error(exc.status, exc.reason)
    return web.json_response({"interface": name, "route": route.model_dump()})


async def route_history(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    assert svc.routes is not None
    name = request.match_info["iface"]
    if name not in svc.interfaces:
        return _error(404, f"unknown interface {name!r}")
    try:
        history = await svc.routes.history(name)
    except RouteError as exc:
        return _error(exc.status, exc.reason)
    return web.json_response({"interface": name, "history": history})


def _int(request: web.Request, key: str, default: int, high: int | None = None) -> int:
    try:
        value = int(request.query.get(key, default))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{key} must be an integer"}),
                                 content_type="application/json") from exc
    return min(max(value, 0), high) if high else max(value, 0)


async def list_events(request: web.Request) -> web.Response:
    """Canonical events from JetStream: ?type=&interface=&after=&limit=&mode=live|shadow."""
    svc = request.app[SERVICE]
    assert svc.store is not None
    shadow = request.query.get("mode", "live") == "shadow"
    stream = names.STREAM_SHADOW if shadow else names.STREAM_CANONICAL
    subject = names.SUBJECTS_SHADOW if shadow else names.SUBJECTS_CANONICAL
    etype = request.query.get("type")
    if etype:
        parts = etype.split(".")
        if len(parts) < 6 or parts[:2] != ["org", "ficus"]:
            return _error(400, "type is org.ficus.<domain>.<entity>.<action>.v<N>")
        subject = ("shadow." if shadow else "") + "canonical." + ".".join(parts[2:5])
    after = _int(request, "after", 0)
    limit = _int(request, "limit", 100, 1000)
    iface = request.query.get("interface")
    try:
        rows = await svc.store.read(stream, subject, after, limit if not iface else 10_000)
    except (nats.errors.Error, TimeoutError) as exc:
        return _error(503, f"JetStream unavailable: {type(exc).__name__}")
    events = []
    for seq, data, headers in rows:
        if iface and headers.get(names.HDR_INTERFACE) != iface:
            continue
        event = json.loads(data)
        if etype and event.get("type") != etype:
            continue
        events.append({"seq": seq, "event": event})
        if len(events) >= limit:
            break
    last = rows[-1][0] if rows else after
    return web.json_response({"events": events, "next_after": last})


async def get_event(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    assert svc.store is not None
    ident = request.match_info["id"]
    stream = names.STREAM_SHADOW if request.query.get("mode") == "shadow" else names.STREAM_CANONICAL
    if not ident.isdigit():
        return _error(400, "event ids in this API are stream sequence numbers (the `seq` of a listing)")
    try:
        msg = await svc.store.js.get_msg(stream, int(ident))
    except nats.js.errors.NotFoundError:
        return _error(404, f"no event {ident}")
    except (nats.errors.Error, TimeoutError) as exc:
        return _error(503, f"JetStream unavailable: {type(exc).__name__}")
    return web.json_response({"seq": int(ident), "event": json.loads(msg.data or b"{}")})


async def list_dlq(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    assert svc.store is not None
    try:
        letters = await dlq.list_letters(svc.store, request.query.get("interface"),
                                         _int(request, "after", 0), _int(request, "limit", 100, 1000))
        done = await replay.replayed_ids(svc)
    except (nats.errors.Error, TimeoutError) as exc:
        return _error(503, f"JetStream unavailable: {type(exc).__name__}")
    return web.json_response({"dead_letters": [{**dlq.summary(x), "replayed": x.id in done} for x in letters]})


async def get_dlq(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    assert svc.store is not None
    ident = request.match_info["id"]
    if not ident.isdigit():
        return _error(400, "dead-letter ids are numbers")
    letter = await dlq.get(svc.store, int(ident))
    if letter is None:
        return _error(404, f"no dead letter {ident}")
    return web.json_response(dlq.summary(letter))


async def parity(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    name = request.match_info["iface"]
    if name not in svc.interfaces:
        return _error(404, f"unknown interface {name!r}")
    running = svc.interfaces[name]
    assert svc.routes is not None
    return web.json_response({
        "interface": name, "route": svc.routes.get(name).mode,
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
        return _error(404, f"unknown event type {name!r}; GET /api/v1/schemas lists them")
    return web.json_response(event_schemas({name: models[name]})[name])


async def replay_letter(request: web.Request) -> web.Response:
    ident = request.match_info["id"]
    if not ident.isdigit():
        return _error(400, "dead-letter ids are numbers")
    try:
        record = await replay.replay_dead_letter(request.app[SERVICE], int(ident))
    except replay.ReplayError as exc:
        return _error(exc.status, exc.reason)
    return web.json_response(record)


async def replay_interface(request: web.Request) -> web.Response:
    """Re-translate raw traffic: {"since": ISO 8601 time}."""
    try:
        body = await request.json()
        since = datetime.fromisoformat(str(body["since"]).replace("Z", "+00:00"))
    except (json.JSONDecodeError, KeyError, ValueError):
        return _error(400, 'body must be {"since": "<ISO 8601 time>"}')
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    try:
        result = await replay.replay_since(request.app[SERVICE], request.match_info["iface"], since)
    except replay.ReplayError as exc:
        return _error(exc.status, exc.reason)
    return web.json_response(result.as_dict())


def make_app(svc: Service) -> web.Application:
    """The aiohttp application serving `svc`."""
    app = web.Application(middlewares=[auth])
    app[SERVICE] = svc
    registry = CollectorRegistry()
    registry.register(StatsCollector({n: r.stats for n, r in svc.interfaces.items()}))
    app[REGISTRY] = registry
    app.router.add_get("/", dashboard)
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
    app.router.add_get("/api/v1/parity/{iface}", parity)
    app.router.add_get("/api/v1/schemas", list_schemas)
    app.router.add_get("/api/v1/schemas/{type}", get_schema)
    return app
