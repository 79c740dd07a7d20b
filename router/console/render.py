"""HTML of the console: templates from the package (string.Template), every value escaped.

Values shown here come from the service's state (names, counters, reasons bounded by
router/stats.py) and never carry message content; they are HTML-escaped all the same, whatever
their origin (an interface error can quote text a sender chose).
"""

from __future__ import annotations

import functools
import html
import string
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

from router.auth import Identity

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""Nothing but this server: no inline script or style, no other origin (the pages need none)."""
NAV = (("/", "Overview", "viewer"), ("/console/dead-letters", "Dead letters", "viewer"),
       ("/console/messages", "Messages", "viewer"), ("/console/audit", "Audit trail", "admin"))


def e(value: object) -> str:
    """HTML-escaped text of any value."""
    return html.escape("" if value is None else str(value))


@functools.cache
def template(name: str) -> string.Template:
    """A template of router/console/templates (package data, read once)."""
    return string.Template((resources.files("router.console") / "templates" / name).read_text("utf-8"))


def layout(title: str, body: str, *, page: str, who: Identity, csrf: str, roles: Iterable[str]) -> str:
    """A whole console page: the navigation (the pages `who`'s role may open), who is signed in."""
    allowed = set(roles)
    items = []
    for href, label, role in NAV:
        if role not in allowed:
            continue
        current = ' aria-current="page"' if href == page else ""
        items.append(f'<li><a href="{e(href)}"{current}>{e(label)}</a></li>')
    signed = "" if who.via == "open" else f"{e(who.name)} ({e(who.role)})"
    return template("layout.html").substitute(title=e(title), body=body, page=e(page), nav="".join(items),
                                              who=signed, csrf=e(csrf))


def login(problem: str = "") -> str:
    """The sign-in form; shows no interface data."""
    note = f'<p role="alert"><strong>{e(problem)}</strong></p>' if problem else ""
    return template("login.html").substitute(note=note)


def ago(ts: float | None) -> str:
    return "-" if ts is None else f"{max(0.0, time.time() - ts):.0f}s ago"


def money(amounts: Mapping[str, Any] | None) -> str:
    """Non-zero amounts of a ledger money row (charges, payments, adjustments) in one line."""
    parts = []
    for kind in ("charges", "payments", "adjustments"):
        try:
            value = Decimal(str((amounts or {}).get(kind, "0")))
        except InvalidOperation:
            continue
        if value:
            parts.append(f"{kind} {value}")
    return ", ".join(parts)


def options(values: Iterable[str], selected: str | None = None) -> str:
    return "".join(f'<option value="{e(v)}"{" selected" if v == selected else ""}>{e(v)}</option>' for v in values)


def table(caption: str, head: Iterable[str], rows: Iterable[Iterable[object]], *, empty: str = "none") -> str:
    """A plain table (header cells scoped as columns); `empty` when there are no rows."""
    body = ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
    if not body:
        return f'<p class="note">{e(empty)}</p>'
    cols = "".join(f'<th scope="col">{e(h)}</th>' for h in head)
    return (f'<div class="scroll"><table><caption class="sr-only">{e(caption)}</caption>'
            f"<thead><tr>{cols}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
