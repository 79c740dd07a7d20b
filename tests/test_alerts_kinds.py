"""The other alert kinds against real components: a listener certificate expiring within the
rule's days (then rotated), a sink whose receiver is down (lag over the bound, then caught up),
and NATS itself going away (judged by each instance on its own, then back)."""

# ruff: noqa: F811  (test parameters named after the fixture imported from tests/test_alerts.py)
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from router import simulate
from router.embedded_nats import EmbeddedNats
from router.service import Service
from tests.conftest import make_config, wait_for
from tests.mllp_client import msa, send_one
from tests.test_alerts import IFACE, Receiver, receiver, rounds  # noqa: F401  (receiver: the fixture)
from tests.tls_certs import Pki

pytestmark = pytest.mark.integration


def hook_only(receiver: Receiver) -> dict[str, Any]:
    return {"evaluate_seconds": 0.2, "delivery_attempts": 1,
            "webhooks": [{"name": "hook", "url": f"{receiver.url}/hook"}]}


def rule(name: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "notify": ["hook"], "repeat_minutes": 10, "max_repeats": 0, **extra}


async def test_certificate_expiring_then_rotated(
    nats_server: EmbeddedNats, receiver: Receiver, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    soon = pki.ca.issue_cert("127.0.0.1", organization_name="Ficus test",
                             not_after=datetime.now(UTC) + timedelta(days=5))
    cert, key = tmp_path / "pki" / "listener.pem", tmp_path / "pki" / "listener.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in soon.cert_chain_pems))
    key.write_bytes(soon.private_key_pem.bytes())
    cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern",
                                         "tls": {"cert": str(cert), "key": str(key)}}],
                      state_dir=tmp_path / "state", alerting=hook_only(receiver),
                      alerts=[rule("certs", "cert_expiry", days=30)])
    async with Service(cfg) as svc:
        await wait_for(lambda: receiver.notices("certs", "firing"), timeout=20)
        pki.issue("listener", "127.0.0.1")  # rotated: trustme's default validity is years
        await wait_for(lambda: receiver.notices("certs", "resolved"), timeout=20)
        await rounds(svc, 3)
    (firing,) = receiver.notices("certs", "firing")
    assert firing["interfaces"] == [IFACE] and firing["subject"] == f"{IFACE} listener"
    assert re.search(r"expires \S+ \((4\.9|5\.0) days\)", firing["summary"]), firing["summary"]
    assert len(receiver.notices("certs", "resolved")) == 1


async def test_sink_lag_over_its_bound(nats_server: EmbeddedNats, receiver: Receiver, tmp_path: Path) -> None:
    cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}],
                      state_dir=tmp_path, alerting=hook_only(receiver),
                      sinks=[{"name": "erp", "url": f"{receiver.url}/sink",
                              "filter": {"types": ["org.ficus.revenue"]},
                              "retry": {"backoff_base_seconds": 0.1, "backoff_max_seconds": 0.3}}],
                      alerts=[rule("erp-lag", "sink_lag", sink="erp", lag=2, process="claims-to-cash")])
    async with Service(cfg) as svc:
        port = svc.interfaces[IFACE].listener.port
        for seq in (1, 2):
            assert msa(await send_one(port, simulate.dft(seq)))[0] == "AA"
        await wait_for(lambda: receiver.notices("erp-lag", "firing"), timeout=20)
        receiver.sink_down = False
        await wait_for(lambda: receiver.notices("erp-lag", "resolved"), timeout=30)
        await rounds(svc, 3)
    (firing,) = receiver.notices("erp-lag", "firing")
    assert firing["process"] == "claims-to-cash" and "sink erp is" in firing["summary"]
    assert receiver.sink_posts >= 6 and len(receiver.notices("erp-lag", "resolved")) == 1


async def test_nats_unavailable_then_back(nats_server: EmbeddedNats, receiver: Receiver, tmp_path: Path) -> None:
    cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}],
                      state_dir=tmp_path, alerting=hook_only(receiver),
                      alerts=[rule("nats-down", "nats_unavailable", minutes=0.01)])
    async with Service(cfg) as svc:
        await rounds(svc, 2)
        await nats_server.stop()
        await wait_for(lambda: receiver.notices("nats-down", "firing"), timeout=20)
        await nats_server.start()
        await wait_for(lambda: receiver.notices("nats-down", "resolved"), timeout=30)
        await rounds(svc, 3)
    (firing,) = receiver.notices("nats-down", "firing")
    assert "NATS unavailable" in firing["summary"] and firing["interfaces"] == [IFACE]
    assert len(receiver.notices("nats-down", "resolved")) == 1
