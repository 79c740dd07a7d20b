"""The demo's simulated ERP (router/demo_erp.py) and the payer's 835s it is fed (simulate.remit835).

The demo itself, run as a process with the ERP receiving events, is tests/test_cli.py's demo test.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from router import simulate
from router.demo_erp import DemoErp, describe, new_secret
from router.offline import translate_stream_file

CHARGE: dict[str, Any] = {
    "id": "0123456789abcdef", "type": "org.ficus.revenue.charge.posted.v1", "ficusinterface": "his-charges",
    "ficusfacility": "NORTH",
    "data": {"account_number": "ACCT000000042", "amount": "150.00", "net_amount": "150.00", "currency": "USD"}}


def _signed(secret: str, key: str, body: bytes) -> dict[str, str]:
    now = datetime.now(UTC)
    return {"Content-Type": "application/cloudevents+json", "Idempotency-Key": key, "webhook-id": key,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(key, now, body.decode())}


async def test_the_erp_verifies_signatures_drops_repeats_and_prints_identifiers_only() -> None:
    lines: list[str] = []
    secret = new_secret()
    body = json.dumps(CHARGE).encode()
    async with DemoErp(secret, out=lines.append) as erp, aiohttp.ClientSession() as http:
        async with http.post(erp.url, data=body, headers=_signed(secret, CHARGE["id"], body)) as resp:
            assert resp.status == 204
        # The sink sends an event again after a lost answer: acknowledged, not booked twice.
        async with http.post(erp.url, data=body, headers=_signed(secret, CHARGE["id"], body)) as resp:
            assert resp.status == 204
        # Signed with another secret, or the body changed after signing: refused and counted.
        async with http.post(erp.url, data=body, headers=_signed(new_secret(), "other", body)) as resp:
            assert resp.status == 401
        headers = _signed(secret, "tampered", body)
        async with http.post(erp.url, data=body.replace(b"150.00", b"999.00"), headers=headers) as resp:
            assert resp.status == 401
    assert (erp.counts.charges, erp.counts.remittances, erp.counts.repeats, erp.counts.bad_signatures) == (1, 0, 1, 2)
    booked = [line for line in lines if line.startswith("erp  <- ")]
    assert booked == [describe(CHARGE)]
    assert "acct ACCT000000042  150.00 USD" in booked[0] and "his-charges" in booked[0] and "01234567" in booked[0]
    assert "0 remittance/claim events (1 repeats dropped, 2 bad signatures)" in erp.summary()


def test_the_payer_835s_balance_and_pay_the_accounts_given(tmp_path: Path) -> None:
    files = []
    for batch in range(10_001, 10_021):
        path = tmp_path / f"remit-{batch}.835"
        path.write_text(simulate.remit835(batch, accounts=["ACCT000000007"] if batch % 2 else []))
        files.append(path)
    out, err = io.StringIO(), io.StringIO()
    failed = sum(translate_stream_file(f, "x12-835", None, "payer-835", "UTC", out, err) for f in files)
    assert failed == 0 and err.getvalue() == ""
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    remits = [e for e in events if e["type"] == "org.ficus.claims.remittance.received.v1"]
    claims = [e for e in events if e["type"] == "org.ficus.claims.claim.adjudicated.v1"]
    assert len(remits) == 20 and len(claims) == 60
    for remit in remits:
        mine = [c["data"] for c in claims if c["data"]["trace_number"] == remit["data"]["trace_number"]]
        assert Decimal(remit["data"]["amount"]) == sum(Decimal(c["paid"]) for c in mine)
        assert [c["denied"] for c in mine] == [False, False, True]
    assert sum(c["data"]["patient_control_number"] == "ACCT000000007" for c in claims) == 10
    assert not any("NM1" in line for f in files for line in f.read_text().split("~"))
