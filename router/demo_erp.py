"""The demo's simulated ERP: an HTTP receiver for a `[[sinks]]` entry, as a cloud ERP would run one.

It does what the sinks' contract asks of a real receiver (README, push delivery): verifies
each request's Standard Webhooks signature, drops repeats by `Idempotency-Key` (delivery is
at least once), answers 2xx once it has the events, and prints one short line per event
(identifiers and amounts only, never names: the demo's data is synthetic, the habit is not).
"""

from __future__ import annotations

import base64
import collections
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PATH = "/ficus/events"
KEYS_KEPT = 100_000
"""Idempotency keys remembered (oldest forgotten first): far more than a demo delivers twice."""
CHARGE_TYPES = "org.ficus.revenue.charge"
REMITTANCE_TYPES = ("org.ficus.claims.remittance", "org.ficus.claims.claim")
SINK_TYPES = [CHARGE_TYPES, *REMITTANCE_TYPES]
"""The demo sink's filter: charges posted or credited, remittances and their claims."""
_REMITTANCE_PREFIXES = tuple(t + "." for t in REMITTANCE_TYPES)


def new_secret() -> str:
    """A Standard Webhooks signing secret for one run (`whsec_` + base64 of 32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Counts:
    charges: int = 0
    remittances: int = 0
    """Remittance and claim events."""
    repeats: int = 0
    """Requests whose Idempotency-Key was seen before (answered 2xx, not printed again)."""
    bad_signatures: int = 0


def describe(event: dict[str, Any]) -> str:
    """One line for an event: type, id, interface, facility, then its identifiers and amounts."""
    raw = event.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    etype = str(event.get("type", "?"))
    head = (f"erp  <- {etype:41} {str(event.get('id', '?'))[:8]}  {event.get('ficusinterface', '')!s:14} "
            f"{event.get('ficusfacility', '')!s:10}")
    if etype.startswith(CHARGE_TYPES + "."):
        amount = data.get("net_amount", data.get("amount"))
        return f"{head} acct {data.get('account_number')}  {_money(amount)} {data.get('currency') or ''}".rstrip()
    if etype.startswith("org.ficus.claims.remittance."):
        return (f"{head} trace {data.get('trace_number')}  paid {_money(data.get('total_paid'))} of "
                f"{_money(data.get('total_charge'))}  {data.get('claim_count')} claims  payer {data.get('payer_id')}")
    if etype.startswith("org.ficus.claims.claim."):
        state = "reversed" if data.get("reversal") else "denied" if data.get("denied") else "paid"
        return (f"{head} acct {data.get('patient_control_number')}  claim {data.get('payer_claim_control_number')}"
                f"  {state} {_money(data.get('paid'))} of {_money(data.get('charge'))}")
    return head.rstrip()


def _money(value: object) -> str:
    try:
        return f"{float(str(value)):.2f}"
    except ValueError:
        return "?"


class DemoErp:
    """The receiver on a free loopback port; `url` is what the sink posts to once started."""

    def __init__(self, secret: str, out: Callable[[str], None] | None = None) -> None:
        self.secret = secret
        self.counts = Counts()
        self.url = ""
        self._webhook = Webhook(secret)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._out = out or (lambda line: print(line, flush=True))
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> DemoErp:
        app = web.Application()
        app.router.add_post(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{PATH}"
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def summary(self) -> str:
        c = self.counts
        return (f"the ERP received {c.charges} charge and {c.remittances} remittance/claim events "
                f"({c.repeats} repeats dropped, {c.bad_signatures} bad signatures)")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            # Checks the signature over id, timestamp and body, and that the timestamp is recent.
            self._webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.counts.bad_signatures += 1
            self._out("erp  !! a request with a bad signature was refused (401)")
            return web.Response(status=401, text="bad signature")
        key = request.headers.get("Idempotency-Key") or request.headers.get("webhook-id") or ""
        if key in self._seen:
            self.counts.repeats += 1
            return web.Response(status=204)  # already have it: acknowledged, not booked twice
        try:
            parsed = json.loads(body)
        except ValueError:
            return web.Response(status=400, text="not JSON")
        for event in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(event, dict):
                continue
            etype = str(event.get("type", ""))
            if etype.startswith(CHARGE_TYPES + "."):
                self.counts.charges += 1
            elif etype.startswith(_REMITTANCE_PREFIXES):
                self.counts.remittances += 1
            self._out(describe(event))
        self._seen[key] = None
        if len(self._seen) > KEYS_KEPT:
            self._seen.popitem(last=False)
        return web.Response(status=204)
