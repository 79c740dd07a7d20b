"""The operator's one-page view at `/`: interfaces, routes, counts, parity. No payloads."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.service import Service

COLUMNS = ("received", "acked", "nacked", "published", "shadow_published", "dead_lettered",
           "legacy_forwarded", "legacy_errors", "errors")


def _ago(ts: float | None) -> str:
    return "-" if ts is None else f"{time.time() - ts:.0f}s ago"


def render_dashboard(svc: Service) -> str:
    rows = []
    for name, running in svc.interfaces.items():
        st = running.stats
        mode = svc.routes.mode_for(name) if svc.routes is not None else "?"
        ratio = st.parity.ratio
        cells = "".join(f"<td>{getattr(st, c)}</td>" for c in COLUMNS)
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(running.cfg.kind)}</td>"
            f"<td class='{mode}'>{mode}</td>{cells}"
            f"<td>{'-' if ratio is None else f'{ratio:.3f} ({st.parity.samples})'}</td>"
            f"<td>{_ago(st.last_message_at)}</td>"
            f"<td>{html.escape(st.last_error or '')}</td></tr>"
        )
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in COLUMNS)
    ok, problems = svc.ready()
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2"><title>Ficus</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
.legacy{{background:#eee}}.shadow{{background:#fff3c4}}.modern{{background:#d4f7d4}}</style></head>
<body><h1>Ficus</h1><p>NATS {html.escape(svc.nats_url)} &middot;
{'ready' if ok else 'NOT READY: ' + html.escape(', '.join(problems))}</p>
<table><tr><th>interface</th><th>kind</th><th>route</th>{head}<th>parity</th>
<th>last message</th><th>last error</th></tr>{''.join(rows)}</table>
<p>API: <code>/api/v1/interfaces</code>, <code>/api/v1/routes</code>, <code>/api/v1/events</code>,
<code>/api/v1/dlq</code>, <code>/metrics</code></p></body></html>"""
