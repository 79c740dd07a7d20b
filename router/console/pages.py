"""The console's routes (router/console/__init__.py says what each page shows).

The viewer's figures (counters, routes, parity, ledger, history, sinks, alerts) are read
in-process, from the same state and functions the JSON API's viewer routes answer from; a
viewer route of the API that is not a module of Ficus's own (C1's ``GET /api/v1/alerts``) is
called in-process through the app's router (`viewer_json`), only for unaudited viewer reads.
Content (dead letters, messages, the audit trail) and changes (flips, replays, discards) are
never read or made here: the pages' JavaScript calls the JSON API, whose guard checks the
session and its CSRF token, applies the route's role and writes the audit records.

router/api.py imports this module for ENDPOINTS, so it is imported here inside the functions
(as router/sinks_api.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Mapping
from datetime import date, timedelta
from importlib import resources
from typing import Any, cast

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from router import ledger, parity
from router.auth import Identity, allows
from router.config import ROLES, redact
from router.console import render
from router.console.render import e
from router.interfaces import RunningInterface
from router.stats import InterfaceStats, ParityStats

ALERTS_PATH = "/api/v1/alerts"
TICK = 1.0
"""Seconds between two updates of the live stream."""
SLOW_EVERY = 5
"""The ledger and the alerts are read every this many ticks (each is a read of JetStream)."""
STATIC = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}\.(js|css)$")
TYPES = {"js": "text/javascript", "css": "text/css"}


def html_page(text: str, status: int = 200) -> web.Response:
    resp = web.Response(text=text, status=status, content_type="text/html")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Content-Security-Policy"] = render.CSP
    return resp


def login_response(problem: str = "", status: int = 401) -> web.Response:
    from router.api import WWW_AUTHENTICATE

    resp = html_page(render.login(problem), status)
    resp.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return resp


def _who(request: web.Request) -> Identity | None:
    from router.api import IDENTITY

    return request.get(IDENTITY)


def _csrf(request: web.Request) -> str:
    """The session's CSRF token, for the page's API calls ("" with a bearer credential: the page
    can then read but its JavaScript cannot act)."""
    from router.api import SESSIONS
    from router.dashboard import SESSION_COOKIE

    return request.app[SESSIONS].csrf(request.cookies.get(SESSION_COOKIE, "")) or ""


def _page(request: web.Request, who: Identity, title: str, page: str, body: str) -> web.Response:
    roles = [r for r in ROLES if allows(who.role, r)]
    return html_page(render.layout(title, body, page=page, who=who, csrf=_csrf(request), roles=roles))


# -- figures -------------------------------------------------------------------------------------


async def viewer_json(request: web.Request, path: str) -> Any:
    """The JSON answer of one of the API's unaudited viewer routes, called in-process (the
    caller already holds a viewer's identity); None when there is no such route or it fails."""
    from router.api import RULES, ApiProblem

    clone = request.clone(method="GET", rel_url=path)
    match = await request.app.router.resolve(clone)
    resource = match.route.resource
    if match.http_exception is not None or resource is None:
        return None
    rule = request.app[RULES].get(("GET", resource.canonical))
    if rule is None or rule.role != "viewer" or rule.action is not None or rule.consumer or rule.page:
        return None
    match.add_app(request.app)
    clone._match_info = match
    try:
        resp = await match.handler(clone)
    except (ApiProblem, web.HTTPException, OSError, ValueError, LookupError):
        return None
    body = resp.body if isinstance(resp, web.Response) else None
    if resp.status != 200 or not isinstance(body, bytes):
        return None
    return json.loads(body)


def _alert_view(alert: Mapping[str, Any]) -> dict[str, str]:
    def listed(key: str) -> str:
        value = alert.get(key)
        return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value or "")

    return {"state": str(alert.get("state", "")), "rule": str(alert.get("rule", "")),
            "summary": str(alert.get("summary", "")), "process": str(alert.get("process") or ""),
            "facilities": listed("facilities"), "interfaces": listed("interfaces"),
            "money": str(alert.get("money_at_risk") or ""), "since": str(alert.get("since") or "")}


async def alerts(request: web.Request) -> list[dict[str, str]] | None:
    """The alerts (C1's GET /api/v1/alerts) as the page shows them; None when the route is missing."""
    answer = await viewer_json(request, ALERTS_PATH)
    if not isinstance(answer, dict) or not isinstance(answer.get("alerts"), list):
        return None
    return [_alert_view(a) for a in answer["alerts"] if isinstance(a, dict)]


async def ledger_today(request: web.Request) -> dict[str, dict[str, Any] | None]:
    """Each interface's ledger day today (router/ledger.py day_view); None while NATS is away."""
    from router.api import INTERFACES, LEDGER, STORE
    from router.store import StoreError

    out: dict[str, dict[str, Any] | None] = {}
    today = ledger.day_of()
    for name in request.app[INTERFACES]:
        try:
            out[name] = (await request.app[LEDGER].view(request.app[STORE], name, today))["days"][0]
        except StoreError:
            out[name] = None
    return out


async def instances_now(request: web.Request) -> list[dict[str, str]] | None:
    """Every instance of the registry (router/instances.py) as the page shows it; None while NATS is away."""
    from router import instances
    from router.api import CONFIG, STORE
    from router.store import StoreError

    cluster = request.app[CONFIG].cluster
    try:
        found = await instances.list_instances(request.app[STORE], cluster.lease_seconds)
    except StoreError:
        return None
    return [instance_cells(i, cluster.instance) for i in found]


def instance_cells(view: Mapping[str, Any], this: str) -> dict[str, str]:
    """One instance's row as text by column (`this`: the instance serving the page)."""
    name = str(view.get("instance", ""))
    return {
        "instance": name + (" (this one)" if name == this else ""), "health": str(view.get("health", "")),
        "draining": "draining" if view.get("draining") else "",
        "host": f"{view.get('host', '')} pid {view.get('pid', '')}", "version": str(view.get("version", "")),
        "api": str(view.get("api") or "-"), "leases": ", ".join(view.get("leases") or []) or "none",
        "seen": f"{view.get('seen_seconds_ago', '?')}s ago", "problems": "; ".join(view.get("problems") or []),
    }


def interface_cells(running: RunningInterface, mode: str, day: dict[str, Any] | str | None,
                    rate: str, firing: int, shared: ParityStats | None = None,
                    stats: InterfaceStats | None = None) -> dict[str, str]:
    """One overview row as text by column (the page and the live stream show the same strings);
    `day` is the ledger day, None while NATS is away, "" when not read this time; `shared` the
    parity window over every instance (default: this instance's); `stats` the counts over the
    host's workers (default: this process's)."""
    st = stats if stats is not None else running.stats
    window = shared if shared is not None else st.parity
    ratio = window.ratio
    out = {
        "route": mode, "throughput": rate, "received": str(st.received),
        "published": str(st.published + st.shadow_published),
        "errors": str(st.errors + st.legacy_errors),
        "parity": "-" if ratio is None else f"{ratio:.3f} ({window.samples})",
        "alerts": str(firing) if firing else "none",
        "last_message": render.ago(st.last_message_at), "last_error": st.last_error or "",
    }
    if day is None:
        out["ledger"] = out["dead_letters"] = "?"
    elif isinstance(day, dict):
        total = day["total"]
        out["ledger"] = ledger.summary(day)
        spent = render.money((total.get("money") or {}).get("dead_lettered"))
        out["dead_letters"] = str(total.get("dead_lettered", 0)) + (f" ({spent})" if spent else "")
    return out


def _firing(alerts_now: list[dict[str, str]] | None, name: str) -> int:
    return sum(1 for a in alerts_now or [] if a["state"] == "firing" and name in a["interfaces"].split(", "))


def _sink_cells(view: Mapping[str, Any]) -> dict[str, str]:
    state = "paused by " + str(view.get("paused_by")) if view.get("paused") else "running"
    return {"state": state, "lag": str(view.get("lag", "-")), "delivered": str(view.get("delivered", 0)),
            "dead_lettered": str(view.get("dead_lettered", 0)), "last_error": str(view.get("last_error") or "")}


async def snapshot(request: web.Request, rates: Mapping[str, str], *, slow: bool,
                   last_alerts: list[dict[str, str]] | None = None,
                   counts: Mapping[str, InterfaceStats] | None = None) -> dict[str, Any]:
    """What the overview shows; `slow`: read the ledger and the alerts too (else `last_alerts`);
    `counts`: the host's counts per interface, when read already (`Running.host_stats`)."""
    from router.api import INTERFACES, READY, ROUTES, RUNNING

    days: Mapping[str, dict[str, Any] | str | None] = await ledger_today(request) if slow else {}
    now_alerts = await alerts(request) if slow else last_alerts
    now_instances = await instances_now(request) if slow else None
    routes = request.app[ROUTES]
    running = request.app[RUNNING]
    counts = counts if counts is not None else await running.host_stats()
    ok, problems = request.app[READY]()
    return {
        "ready": "ready" if ok else "NOT READY: " + ", ".join(problems),
        "interfaces": {
            name: interface_cells(r, routes.mode_for(name) if not routes.get(name).facilities
                                  else f"{routes.mode_for(name)} + {len(routes.get(name).facilities)} facilities",
                                  days.get(name, ""), rates.get(name, "-"), _firing(now_alerts, name),
                                  running.parity_now(name), counts[name])
            for name, r in request.app[INTERFACES].items()},
        "sinks": {str(v["name"]): _sink_cells(v) for v in (s.view() for s in running.sinks)},
        "alerts": now_alerts,
        # Read with the slow figures only (a read of JetStream); absent from the other ticks.
        **({"instances": now_instances} if slow else {}),
    }


# -- pages ---------------------------------------------------------------------------------------


OVERVIEW_COLUMNS = ("route", "throughput", "received", "published", "errors", "dead_letters", "parity", "ledger",
                    "alerts", "last_message", "last_error")


INSTANCE_COLUMNS = ("health", "draining", "host", "version", "api", "leases", "seen", "problems")


def _instance_rows(items: list[dict[str, str]] | None) -> str:
    if items is None:
        return f'<tr><td colspan="{len(INSTANCE_COLUMNS) + 1}">the instances cannot be read while NATS is ' \
               "unavailable</td></tr>"
    if not items:
        return f'<tr><td colspan="{len(INSTANCE_COLUMNS) + 1}">no instance registered</td></tr>'
    return "".join(
        f'<tr><th scope="row">{e(i["instance"])}</th>'
        + "".join(f'<td data-field="{col}"{_health_class(i, col)}>{e(i[col])}</td>' for col in INSTANCE_COLUMNS)
        + "</tr>" for i in items)


def _health_class(cells: Mapping[str, str], col: str) -> str:
    return f' class="{cells["health"].replace(" ", "-")}"' if col == "health" else ""


def _alert_items(items: list[dict[str, str]] | None) -> str:
    if not items:
        return '<li class="note">no alerts</li>'
    return "".join(
        f'<li class="{e(a["state"])}"><strong>{e(a["state"])}</strong> {e(a["rule"])}: {e(a["summary"])} '
        f'· {e(a["process"])} · facilities {e(a["facilities"] or "-")} · money at risk {e(a["money"] or "-")} '
        f'· since {e(a["since"] or "-")}</li>' for a in items)


async def overview(request: web.Request) -> web.Response:
    """GET /: the overview; the sign-in form (401, no data) without a credential."""
    from router.api import INTERFACES, RUNNING

    who = _who(request)
    if who is None:
        return login_response()
    snap = await snapshot(request, {}, slow=True)
    rows = []
    for name, running in request.app[INTERFACES].items():
        cells = snap["interfaces"][name]
        tds = []
        for col in OVERVIEW_COLUMNS:
            cls = f' class="{e(cells["route"].split(" ")[0])}"' if col == "route" else ""
            tds.append(f'<td data-iface="{e(name)}" data-field="{col}"{cls}>{e(cells.get(col, ""))}</td>')
            if col == "route":
                tds.insert(0, f"<td>{e(running.cfg.kind)}</td>")
        rows.append(f'<tr><th scope="row"><a href="/console/interfaces/{e(name)}">{e(name)}</a></th>'
                    f'{"".join(tds)}</tr>')
    sinks = "".join(
        f'<tr><th scope="row">{e(n)}</th>' + "".join(
            f'<td data-sink="{e(n)}" data-field="{k}">{e(v)}</td>' for k, v in cells.items()) + "</tr>"
        for n, cells in snap["sinks"].items()) or '<tr><td colspan="6">no sinks</td></tr>'
    body = render.template("overview.html").substitute(
        nats=e(redact(request.app[RUNNING].nats_url, [])), ready=e(snap["ready"]), rows="".join(rows),
        alerts=_alert_items(snap["alerts"]), sinks=sinks, instances=_instance_rows(snap["instances"]))
    return _page(request, who, "Overview", "/", body)


def _names(request: web.Request) -> list[str]:
    from router.api import INTERFACES

    interfaces: Mapping[str, RunningInterface] = request.app[INTERFACES]
    return list(interfaces)


def _interface(request: web.Request) -> RunningInterface:
    from router.api import INTERFACES

    running = request.app[INTERFACES].get(request.match_info["iface"])
    if running is None:
        raise web.HTTPNotFound(reason="unknown interface")
    return running


def _history_html(history: list[dict[str, Any]]) -> str:
    rows = [(h.get("at"), h.get("from"), h.get("to"), h.get("facility") or "all", h.get("actor"), h.get("reason"),
             h.get("revision"), "yes" if h.get("forced") else "") for h in reversed(history)]
    return render.table("Route changes, newest first", ("At", "From", "To", "Facility", "Actor", "Reason", "Revision",
                                                        "Forced"), rows, empty="no route change yet")


def _flip_html(running: RunningInterface, who: Identity, facilities: list[str]) -> str:
    name = running.cfg.name
    if not allows(who.role, "operator"):
        return '<p class="note">Switching the route needs the operator role.</p>'
    modes = ["modern"] if running.cfg.legacy is None else ["shadow", "modern", "legacy"]
    return render.template("flip.html").substitute(iface=e(name), modes=render.options(modes),
                                                   facility_options=render.options(facilities))


def _parity_html(running: RunningInterface, p: ParityStats) -> str:
    window = p.window()
    ratio = "-" if p.ratio is None else f"{p.ratio:.4f}"
    head = (f"<p>Current window since {e(window['started_at'] or '-')}: {e(p.samples)} samples, "
            f"{e(p.agree)} agree, {e(p.disagree)} disagree, parity {e(ratio)}; the gate needs "
            f"{e(running.cfg.parity_gate)} over {e(running.cfg.parity_min_samples)} samples.</p>")
    prev = p.previous_window
    if prev:
        pr = prev.get("ratio")
        head += (f"<p>Previous window {e(prev.get('started_at') or '-')} to {e(prev.get('ended_at') or '-')}: "
                 f"{e(prev.get('samples'))} samples, parity {e('-' if pr is None else f'{pr:.4f}')}.</p>")
    recent = [(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(d.get("at", 0)))), d.get("unit"),
               "ok" if d.get("legacy_ok") else "failed", "ok" if d.get("modern_ok") else "failed", d.get("detail"))
              for d in p.recent]
    return head + render.table("Recent disagreements", ("At (UTC)", "Unit", "Legacy", "Modern", "Detail"), recent,
                               empty="no disagreement in this window")


PARITY_DAYS = 14
"""Days (today and the ones before it, UTC) the parity-by-day table covers."""


def _parity_days_html(running: RunningInterface, view: Mapping[str, Any] | None) -> str:
    """Parity samples by UTC day and facility from the ledger (router/ledger.py keeps one per unit
    in shadow), the last PARITY_DAYS days, each day's ratio set beside the gate for reference:
    the gate itself judges the current window, not a day."""
    cfg = running.cfg
    note = (f'<p class="note">For reference, the gate needs {e(cfg.parity_gate)} over '
            f"{e(cfg.parity_min_samples)} samples, judged on the current window (above).</p>")
    if view is None:
        return '<p class="note">parity by day cannot be read while NATS is unavailable</p>'
    since = (date.fromisoformat(ledger.day_of()) - timedelta(days=PARITY_DAYS - 1)).isoformat()
    rows = []
    for day in view["days"]:
        if day["day"] < since:
            continue
        for f in day["facilities"]:
            agree, disagree = int(f.get("parity_agree", 0)), int(f.get("parity_disagree", 0))
            samples = agree + disagree
            if not samples:
                continue
            ratio = agree / samples
            rows.append((day["day"], f.get("facility") or "-", samples, agree, disagree, f"{ratio:.4f}",
                         f"at or above {cfg.parity_gate}" if ratio >= cfg.parity_gate else f"below {cfg.parity_gate}"))
    return render.table(f"Parity by day and facility, the last {PARITY_DAYS} days, newest day first",
                        ("Day (UTC)", "Facility", "Samples", "Agree", "Disagree", "Parity", "Against the gate"),
                        rows, empty=f"no parity sample in the last {PARITY_DAYS} days") + note


def _ledger_html(view: Mapping[str, Any] | None) -> str:
    if view is None:
        return '<p class="note">the ledger cannot be read while NATS is unavailable</p>'
    rows = []
    for day in view["days"][:14]:
        for f in day["facilities"]:
            spent = render.money((f.get("money") or {}).get("dead_lettered"))
            rows.append((day["day"], f.get("facility") or "-", f.get("received"), f.get("published"),
                         f.get("dead_lettered"), spent, f.get("shadow"), f.get("legacy"),
                         "yes" if f.get("balanced") else "NO"))
    return render.table("Ledger rows by day and facility, newest day first",
                        ("Day", "Facility", "Received", "Published", "Dead letters", "Dead-letter money",
                         "Shadow", "Legacy", "Balanced"), rows, empty="nothing received yet")


async def interface_page(request: web.Request) -> web.Response:
    """GET /console/interfaces/{iface}: route switch, parity, ledger, route history."""
    from router.api import LEDGER, ROUTES, RUNNING, STORE
    from router.routes import RouteError
    from router.store import StoreError

    who = _who(request)
    if who is None:
        return login_response()
    running = _interface(request)
    name = running.cfg.name
    route = request.app[ROUTES].get(name)
    try:
        view: dict[str, Any] | None = await request.app[LEDGER].view(request.app[STORE], name)
    except StoreError:
        view = None
    try:
        history = _history_html(await request.app[ROUTES].history(name))
    except RouteError as exc:
        history = f'<p class="note">{e(exc.reason)}</p>'
    known = sorted({f["facility"] for d in (view or {}).get("days", []) for f in d["facilities"] if f["facility"]}
                   | set(route.facilities))
    overrides = ", ".join(f"{f}: {m}" for f, m in sorted(route.facilities.items()))
    body = render.template("interface.html").substitute(
        kind=e(running.cfg.kind), route=e(route.mode),
        facilities=e(f"facility overrides: {overrides}" if overrides else "no facility override"),
        flip=_flip_html(running, who, known), parity=_parity_html(running, await request.app[RUNNING].parity_of(name)),
        parity_days=_parity_days_html(running, view), ledger=_ledger_html(view),
        history=history)
    return _page(request, who, f"Interface {name}", f"/console/interfaces/{name}", body)


async def history_fragment(request: web.Request) -> web.Response:
    """GET /console/interfaces/{iface}/history: the route history table (htmx, after a flip)."""
    from router.api import ROUTES
    from router.routes import RouteError

    if _who(request) is None:
        return _signed_out()
    name = _interface(request).cfg.name
    try:
        return html_page(_history_html(await request.app[ROUTES].history(name)))
    except RouteError as exc:
        return html_page(f'<p class="note">{e(exc.reason)}</p>')


async def gate_fragment(request: web.Request) -> web.Response:
    """GET /console/interfaces/{iface}/gate?mode=&facility=: the gate's verdict on that flip, as
    PUT /api/v1/routes/{iface} would judge it now (router/parity.py gate), and, when it allows
    the flip, the button that confirms it (htmx swaps this into the interface page)."""
    from router.api import ROUTES, RUNNING

    if _who(request) is None:
        return _signed_out()
    running = _interface(request)
    name = running.cfg.name
    routes = request.app[ROUTES]
    mode = request.query.get("mode", "")
    facility = request.query.get("facility", "").strip()[:64] or None
    if mode not in ("legacy", "shadow", "modern"):
        return html_page('<p class="refused" role="alert">Choose a route: legacy, shadow or modern.</p>')
    if running.cfg.format == "gl-export":
        text = ("GL export interfaces are judged on GL parity days by the API when you confirm "
                "(GET /api/v1/parity/{iface}/gl shows the days).")
        verdict: str | None = None
    else:
        # The window the PUT would judge: every instance's samples (router/parity.py).
        window = await request.app[RUNNING].parity_of(name)
        judged = parity.gate(running.cfg, routes.get(name), window, cast(Any, mode), facility)
        verdict = judged.refusal
        text = ""
    target = f"{name}" + (f" (facility {facility})" if facility else "")
    if verdict:
        return html_page(f'<div class="refused" role="alert"><p>The gate refuses the flip of {e(target)} to '
                         f'{e(mode)}: {e(verdict)}</p></div>')
    note = f"<p>{e(text)}</p>" if text else f"<p>The gate allows the flip of {e(target)} to {e(mode)}.</p>"
    return html_page(f'<div class="allowed">{note}<button type="button" id="flip-confirm" data-mode="{e(mode)}" '
                     f'data-facility="{e(facility or "")}">Confirm: switch {e(target)} to {e(mode)}</button></div>')


def _signed_out() -> web.Response:
    resp = login_response()
    resp.headers["HX-Refresh"] = "true"  # htmx: reload the page, which shows the sign-in form
    return resp


async def dead_letters_page(request: web.Request) -> web.Response:
    """GET /console/dead-letters: the list (admin: content), and the actions by id (operator)."""

    who = _who(request)
    if who is None:
        return login_response()
    admin, operator = allows(who.role, "admin"), allows(who.role, "operator")
    if admin:
        listing = (
            '<form id="dlq-filter"><div class="row"><label for="dlq-interface">Interface</label>'
            f'<select id="dlq-interface" name="interface"><option value="">any</option>'
            f"{render.options(_names(request))}</select>"
            '<label for="dlq-state">Show</label><select id="dlq-state" name="state">'
            '<option value="open">not replayed or discarded</option><option value="">all</option></select>'
            '</div><button type="submit">Filter</button></form><p id="dlq-status" role="status"></p>'
            '<div class="scroll"><table id="dlq-list"><caption class="sr-only">Dead letters</caption><thead><tr>'
            + "".join(f'<th scope="col">{h}</th>' for h in ("Id", "At", "Interface", "Facility", "Reason",
                                                            "Amount", "State"))
            + "</tr></thead><tbody></tbody></table></div>")
    else:
        listing = ('<p class="note">Listing and inspecting dead letters shows message content: it needs the admin '
                   "role. An operator may replay or discard a dead letter by its id.</p>")
    body = render.template("dead_letters.html").substitute(
        listing=listing, admin_only="" if admin else "disabled", operator_only="" if operator else "disabled")
    return _page(request, who, "Dead letters", "/console/dead-letters", body)


async def messages_page(request: web.Request) -> web.Response:
    """GET /console/messages: the message browser (the search and chain come from the API)."""

    who = _who(request)
    if who is None:
        return login_response()
    body = render.template("messages.html").substitute(interfaces=render.options(_names(request)))
    if not who.reads_content():
        body = ('<p class="note">Messages are content: searching needs the admin role or a client granted '
                "content.</p>") + body
    return _page(request, who, "Messages", "/console/messages", body)


async def audit_page(request: web.Request) -> web.Response:
    """GET /console/audit: the audit trail (admin); records come from GET /api/v1/audit."""
    from router.audit import ACTIONS

    who = _who(request)
    if who is None:
        return login_response()
    body = render.template("audit.html").substitute(actions=render.options(ACTIONS),
                                                    interfaces=render.options(_names(request)))
    return _page(request, who, "Audit trail", "/console/audit", body)


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /console/stream (SSE): the overview's figures every second (`figures` events); the
    ledger and the alerts every SLOW_EVERY seconds. Viewer figures only: no content."""
    from router.api import INTERFACES, RUNNING, _unauthorized
    from router.events_api import FEEDS

    if _who(request) is None:
        return _unauthorized(request)
    response = EventSourceResponse(ping_interval=15, send_timeout=None)
    await response.prepare(request)
    closing = asyncio.Event()
    request.app[FEEDS].add(closing)
    last: dict[str, tuple[float, int]] = {}
    last_alerts: list[dict[str, str]] | None = None
    tick = 0
    try:
        while not closing.is_set() and response.is_connected():
            now = time.monotonic()
            rates = {}
            counts = await request.app[RUNNING].host_stats()
            for name in request.app[INTERFACES]:
                before = last.get(name)
                received = counts[name].received
                if before is not None and now > before[0]:
                    rates[name] = f"{(received - before[1]) * 60 / (now - before[0]):.0f}/min"
                last[name] = (now, received)
            slow = tick % SLOW_EVERY == 0
            snap = await snapshot(request, rates, slow=slow, last_alerts=last_alerts, counts=counts)
            last_alerts = snap["alerts"]
            if not slow:
                del snap["alerts"]
            snap["at"] = time.strftime("%H:%M:%S UTC", time.gmtime())
            try:
                await response.send(json.dumps(snap), event="figures")
            except (ConnectionError, RuntimeError):
                break  # the page went away
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), TICK)
    finally:
        request.app[FEEDS].discard(closing)
    if response.is_connected():
        with contextlib.suppress(ConnectionError, RuntimeError):
            response.stop_streaming()
            await response.write_eof()
    return response


async def static(request: web.Request) -> web.Response:
    """GET /static/{name}: the console's script and style (package data); no credential (no data)."""
    name = request.match_info["name"]
    if not STATIC.match(name):
        raise web.HTTPNotFound()
    path = resources.files("router") / "static" / name
    if not path.is_file():
        raise web.HTTPNotFound()
    resp = web.Response(body=path.read_bytes(), content_type=TYPES[name.rsplit(".", 1)[1]], charset="utf-8")
    resp.headers["Cache-Control"] = "max-age=300"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
