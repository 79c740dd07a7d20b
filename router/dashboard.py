"""The operator's one-page view at `/`: interfaces, routes, counts, parity. No payloads.

With credentials configured the page needs one (a viewer at least): a bearer token or JWT,
or the login form, which opens a session carrying the client's name and role (a random id
in an HttpOnly, SameSite=Strict cookie; the token itself never goes into a cookie). A
session ends after 12 hours, or when the JWT it was opened with expires. Sessions live in
memory: a restart asks for the token again. Everything rendered is HTML-escaped, whatever
its origin (interface errors can carry text a sender chose).
"""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from router.auth import Identity
from router.config import redact

if TYPE_CHECKING:
    from router.service import Running

COLUMNS = ("received", "acked", "nacked", "published", "shadow_published", "dead_lettered",
           "legacy_forwarded", "legacy_errors", "errors")
SESSION_COOKIE = "ficus_session"
_STYLE = """<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}
.legacy{background:#eee}.shadow{background:#fff3c4}.modern{background:#d4f7d4}</style>"""


class Sessions:
    """Dashboard sessions opened by the login form: id -> (identity, expiry on the monotonic clock)."""

    LIFETIME = 12 * 3600.0
    MAX = 1000  # only a valid token opens one; the cap bounds memory all the same

    def __init__(self) -> None:
        self._open: dict[str, tuple[Identity, float]] = {}

    def open(self, identity: Identity) -> tuple[str, int]:
        """A new session for `identity`; returns its id (the cookie's value) and its lifetime in seconds."""
        now = time.monotonic()
        self._open = {k: v for k, v in self._open.items() if v[1] > now}
        while len(self._open) >= self.MAX:
            self._open.pop(next(iter(self._open)))
        lifetime = self.LIFETIME
        if identity.expires_at is not None:
            lifetime = max(0.0, min(lifetime, identity.expires_at - time.time()))
        sid = secrets.token_urlsafe(32)
        self._open[sid] = (Identity(identity.name, identity.role, "session"), now + lifetime)
        return sid, int(lifetime)

    def identity(self, sid: str) -> Identity | None:
        """Who a live session belongs to, or None."""
        entry = self._open.get(sid)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def close(self, sid: str) -> None:
        self._open.pop(sid, None)

    @staticmethod
    def form_token(raw: bytes) -> str:
        """The `token` field of an urlencoded login form (any bytes are valid input)."""
        values = parse_qs(raw.decode("utf-8", "replace")).get("token", [""])
        return values[0].strip()


def login_page(problem: str = "") -> str:
    """The login form; shows no interface data."""
    note = f"<p><strong>{html.escape(problem)}</strong></p>" if problem else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Ficus</title>{_STYLE}</head>
<body><h1>Ficus</h1>{note}<form method="post" action="/login">
<label>Token (of a named API client) <input type="password" name="token" autocomplete="current-password"></label>
<button type="submit">Open the dashboard</button></form></body></html>"""


def _ago(ts: float | None) -> str:
    return "-" if ts is None else f"{time.time() - ts:.0f}s ago"


def _e(value: object) -> str:
    return html.escape(str(value))


def render_dashboard(svc: Running, ledger: Mapping[str, str] | None = None, who: Identity | None = None) -> str:
    """The page; every value escaped, the NATS URL without credentials.

    ``ledger`` is each interface's ledger today in one line (router/ledger.py `summary`);
    ``who`` the signed-in client, named at the top.
    """
    rows = []
    for name, running in svc.interfaces.items():
        st = running.stats
        mode = svc.routes.mode_for(name)
        ratio = st.parity.ratio
        cells = "".join(f"<td>{_e(getattr(st, c))}</td>" for c in COLUMNS)
        parity = "-" if ratio is None else f"{ratio:.3f} ({st.parity.samples})"
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(running.cfg.kind)}</td>"
            f"<td class='{_e(mode)}'>{_e(mode)}</td>{cells}"
            f"<td>{_e(parity)}</td><td>{_e((ledger or {}).get(name, '-'))}</td>"
            f"<td>{_e(_ago(st.last_message_at))}</td>"
            f"<td>{_e(st.last_error or '')}</td></tr>"
        )
    head = "".join(f"<th>{_e(c.replace('_', ' '))}</th>" for c in COLUMNS)
    signed_in = f" &middot; {_e(who.name)} ({_e(who.role)})" if who is not None and who.via != "open" else ""
    ok, problems = svc.ready()
    state = "ready" if ok else "NOT READY: " + ", ".join(problems)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2"><title>Ficus</title>{_STYLE}</head>
<body><h1>Ficus</h1><p>NATS {_e(redact(svc.nats_url, []))} &middot; {_e(state)}{signed_in}</p>
<table><tr><th>interface</th><th>kind</th><th>route</th>{head}<th>parity</th>
<th title="received = published + dead-lettered + filtered + duplicates + legacy (then units replayed, \
beside the equation)">ledger today</th>
<th>last message</th><th>last error</th></tr>{''.join(rows)}</table>
<p>API: <code>/api/v1/interfaces</code>, <code>/api/v1/routes</code>, <code>/api/v1/events</code>,
<code>/api/v1/dlq</code>, <code>/metrics</code></p></body></html>"""
