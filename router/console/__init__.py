"""The operator's console (issue 16 item 4): server-rendered pages, a little plain JavaScript
and vendored htmx (router/static/), live through one SSE stream; no build step, nothing loaded
from the internet (the pages' Content-Security-Policy allows this server only).

Pages (router/console/pages.py; templates in router/console/templates/, string.Template):

- ``/``: the overview, every interface with route, throughput, errors, dead letters with
  money, parity, ledger today and alerts, and each sink's lag; kept live by
  ``/console/stream`` (SSE, every second).
- ``/console/interfaces/{iface}``: the route switch (operator; the gate's verdict before the
  confirmation, a reason required), parity windows, parity by day and facility (the ledger's samples,
  the last 14 days), the ledger by day and facility, the route history.
- ``/console/dead-letters``: filter, inspect (admin), replay with a dry run first, discard
  with a reason (operator; audited by the API).
- ``/console/messages``: the message browser (GET /api/v1/messages, content: audited).
- ``/console/audit``: the audit trail (admin).

What a viewer may read is rendered in-process from the same functions the JSON API uses; every
content read and every change goes from the page's JavaScript to the JSON API itself, with the
session cookie and the session's CSRF token in a header (router/api.py guard), so the API's
rules and audit records apply to the console exactly as to any client.
"""
