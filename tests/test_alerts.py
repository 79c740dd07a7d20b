"""Alerts with business context (issue 16 item 1): real Services on a real nats-server notify a
real HTTP receiver (aiohttp, generic JSON and Slack-shaped) and a real SMTP server (aiosmtpd).

Each scenario -- a silent feed, a dead-letter burst with money, a parity drop, a legacy
outage -- gives one firing notice naming process, facility and money, a bounded number of
reminders and one resolved notice; a second instance at the same time, and a restart in
between, send no duplicate. Minutes are fractions here so that a scenario takes seconds.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from legacy.simulated_engine import SimulatedEngine
from router import answers, simulate
from router.config import ConfigError, parse_config
from router.embedded_nats import EmbeddedNats
from router.service import Service
from tests.conftest import make_config, wait_for
from tests.mllp_client import msa, send_one

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
BAD_AMOUNT = (FIXTURES / "dft_p03_bad_amount.hl7").read_bytes()
IFACE = "his-charges"
TODAY = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[datetime.now(UTC).weekday()]


@dataclass
class Receiver:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_next: int = 0
    sink_down: bool = True
    """The sink's path (/sink) answers 503 while this holds (a receiver down)."""
    sink_posts: int = 0

    def notices(self, rule: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.posts if p.get("rule") == rule and (kind is None or p["notice"] == kind)]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver("")

    async def take(request: web.Request) -> web.Response:
        if found.fail_next:
            found.fail_next -= 1
            return web.Response(status=503)
        body = await request.json()
        body.setdefault("path", request.path)
        found.posts.append(body)
        found.headers.append(dict(request.headers))
        return web.Response(status=204)

    async def sink(request: web.Request) -> web.Response:
        await request.read()
        if found.sink_down:
            return web.Response(status=503)
        found.sink_posts += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/sink", sink)
    app.router.add_post("/{name}", take)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        msg = message_from_bytes(bytes(envelope.content or b""))
        with self.lock:
            self.messages.append({"subject": str(msg["Subject"]), "to": ",".join(envelope.rcpt_tos),
                                  "body": msg.get_payload(decode=True).decode()})  # type: ignore[union-attr]
        return "250 OK"

    def subjects(self, needle: str) -> list[str]:
        with self.lock:
            return [m["subject"] for m in self.messages if needle in m["subject"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def alerting(receiver: Receiver, smtp_port: int) -> dict[str, Any]:
    return {"evaluate_seconds": 0.2, "delivery_attempts": 1, "webhooks": [
        {"name": "hook", "url": f"{receiver.url}/hook", "format": "json", "bearer_token": "t0ken-for-the-hook"},
        {"name": "slack", "url": f"{receiver.url}/slack", "format": "slack"}],
        "email": [{"name": "mail", "host": "127.0.0.1", "port": smtp_port, "security": "plain",
                   "from": "ficus@example.org", "to": ["ops@example.org"]}]}


def rule(name: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "notify": ["hook", "slack", "mail"], "repeat_minutes": 0.02,
            "max_repeats": 2, **extra}


async def rounds(svc: Service, n: int) -> None:
    """Waits until `svc` has evaluated every rule `n` more times."""
    assert svc.alerts is not None
    target = svc.alerts.evaluations + n
    await wait_for(lambda: svc.alerts is not None and svc.alerts.evaluations >= target, timeout=30)


def assert_cycle(receiver: Receiver, box: Mailbox, name: str, *, max_repeats: int = 2) -> dict[str, Any]:
    """One firing, at most max_repeats reminders, one resolved, on each target; returns the firing."""
    firing = receiver.notices(name, "firing")
    assert len(firing) == 1, receiver.posts
    assert len(receiver.notices(name, "repeat")) <= max_repeats
    assert len(receiver.notices(name, "resolved")) == 1
    slack = [p for p in receiver.posts if p["path"] == "/slack" and f"] {name}:" in p["text"]]
    assert sum("FIRING]" in p["text"] and "STILL" not in p["text"] for p in slack) == 1
    assert slack[0]["blocks"][1]["text"]["type"] == "mrkdwn"
    assert len(box.subjects(f"[Ficus FIRING] {name}:")) == 1
    assert len(box.subjects(f"[Ficus RESOLVED] {name}:")) == 1
    return firing[0]


@pytest.mark.integration
async def test_silent_feed_inside_its_schedule_and_none_outside(
    nats_server: EmbeddedNats, receiver: Receiver, smtp: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = smtp
    others = [d for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if d != TODAY]
    cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}],
                      state_dir=tmp_path, alerting=alerting(receiver, port), alerts=[
                          rule("charges-silent", "silent", interfaces=[IFACE], silent_minutes=0.02,
                               facilities=["NORTH"],
                               schedule={"days": [TODAY], "start": "00:00", "end": "24:00",
                                         "timezone": "UTC"}),
                          rule("charges-silent-off-hours", "silent", interfaces=[IFACE], silent_minutes=0.02,
                               schedule={"days": others, "timezone": "UTC"})])
    async with Service(cfg) as svc:
        await wait_for(lambda: receiver.notices("charges-silent", "firing"), timeout=40)
        await wait_for(lambda: len(receiver.notices("charges-silent", "repeat")) == 2, timeout=40)
        await rounds(svc, 15)  # 3 s: room for a third reminder that must not come
        assert len(receiver.notices("charges-silent", "repeat")) == 2
        port_ = svc.interfaces[IFACE].listener.port
        assert msa(await send_one(port_, simulate.dft(1)))[0] == "AA"
        await wait_for(lambda: receiver.notices("charges-silent", "resolved"), timeout=40)
        await wait_for(lambda: box.subjects("[Ficus RESOLVED] charges-silent:"), timeout=40)
        await rounds(svc, 3)
    firing = assert_cycle(receiver, box, "charges-silent")
    assert firing["process"] == "claims-to-cash" and firing["facilities"] == ["NORTH"]
    assert firing["interfaces"] == [IFACE] and "inside its schedule" in firing["summary"]
    assert firing["money_at_risk"] is None  # a silent feed's usual volume is not computed
    assert not receiver.notices("charges-silent-off-hours"), "outside its schedule: no alert"
    hook = receiver.headers[receiver.posts.index(firing)]
    assert hook["Authorization"] == "Bearer t0ken-for-the-hook"


@pytest.mark.integration
async def test_dead_letter_burst_two_instances_and_a_restart_notify_once(
    nats_server: EmbeddedNats, receiver: Receiver, smtp: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = smtp
    alerts = [rule("charges-dead-letters", "dead_letters", interfaces=[IFACE], count=1, money="100",
                   window_minutes=0.2, repeat_minutes=0.05, max_repeats=1)]

    def config(n: int) -> Any:
        return make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}],
                           state_dir=tmp_path / str(n), alerting=alerting(receiver, port), alerts=alerts)

    async with Service(config(1)) as first, Service(config(2)) as second:
        reply = await send_one(first.interfaces[IFACE].listener.port, BAD_AMOUNT)
        assert msa(reply)[0] == "CA"  # MSH-15 AL: a commit ACK, the message is in the DLQ
        await wait_for(lambda: receiver.notices("charges-dead-letters", "firing"), timeout=20)
        await rounds(first, 5)
        await rounds(second, 5)
    async with Service(config(3)) as again:  # the restart: same NATS, a new process's state
        await rounds(again, 10)
        assert len(receiver.notices("charges-dead-letters", "firing")) == 1
        await wait_for(lambda: receiver.notices("charges-dead-letters", "resolved"), timeout=30)
        await wait_for(lambda: box.subjects("[Ficus RESOLVED] charges-dead-letters:"), timeout=20)
        await rounds(again, 3)
        async with aiohttp.ClientSession() as http:
            shown = await (await http.get(f"{again.api_url}/api/v1/alerts")).json()
    firing = assert_cycle(receiver, box, "charges-dead-letters", max_repeats=1)
    assert firing["facilities"] == ["NORTHCLINIC"] and firing["process"] == "claims-to-cash"
    assert firing["money_at_risk"] == "125.50", "FT1-11 amounts that parse, gross"
    assert "1 dead letters on his-charges for NORTHCLINIC" in firing["summary"]
    mail = next(m for m in box.messages if "FIRING] charges-dead-letters" in m["subject"])
    assert "Money at risk: 125.50" in mail["body"] and "Facilities: NORTHCLINIC" in mail["body"]
    assert "TESTPATIENT" not in json.dumps(receiver.posts) + mail["body"], "no patient data in a notice"
    answers.Alerts.model_validate(shown)  # the documented answer (router/openapi.py)
    (alert,) = shown["alerts"]
    assert alert["rule"] == "charges-dead-letters" and alert["state"] == "resolved"
    assert alert["money_at_risk"] == "125.50" and alert["facilities"] == ["NORTHCLINIC"]


@pytest.mark.integration
async def test_parity_drop_in_shadow(
    nats_server: EmbeddedNats, receiver: Receiver, smtp: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = smtp
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "shadow",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}],
                          state_dir=tmp_path, alerting=alerting(receiver, port),
                          alerts=[rule("charges-parity", "parity", interfaces=[IFACE], min_samples=3, below=0.9)])
        async with Service(cfg) as svc, aiohttp.ClientSession() as http:
            listener = svc.interfaces[IFACE].listener.port
            stats = svc.interfaces[IFACE].stats
            for payload in (simulate.dft(1), BAD_AMOUNT, BAD_AMOUNT.replace(b"DFT0002", b"DFT0003")):
                assert msa(await send_one(listener, payload))[0] == "AA"  # the legacy engine's answer
            await wait_for(lambda: stats.parity.samples == 3)
            await wait_for(lambda: receiver.notices("charges-parity", "firing"), timeout=20)
            await wait_for(lambda: len(receiver.notices("charges-parity", "repeat")) == 2, timeout=20)
            await rounds(svc, 10)
            resp = await http.put(f"{svc.api_url}/api/v1/routes/{IFACE}", json={"mode": "legacy",
                                                                                "reason": "parity too low"})
            assert resp.status == 200, await resp.text()
            await wait_for(lambda: receiver.notices("charges-parity", "resolved"), timeout=20)
            await wait_for(lambda: box.subjects("[Ficus RESOLVED] charges-parity:"), timeout=20)
            await rounds(svc, 3)
    firing = assert_cycle(receiver, box, "charges-parity")
    assert firing["facilities"] == ["NORTHCLINIC"] and firing["process"] == "claims-to-cash"
    assert firing["money_at_risk"] == "251.00", "two shadow dead letters of 125.50"
    assert "parity of his-charges is 0.3333 over 3 samples" in firing["summary"]


@pytest.mark.integration
async def test_legacy_outage(
    nats_server: EmbeddedNats, receiver: Receiver, smtp: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = smtp
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "legacy",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}",
                                             "legacy_connect_timeout_seconds": 1}],
                          state_dir=tmp_path, alerting=alerting(receiver, port),
                          alerts=[rule("charges-legacy", "legacy_errors", interfaces=[IFACE], window_minutes=1)])
        async with Service(cfg) as svc:
            listener = svc.interfaces[IFACE].listener.port
            message = simulate.dft(7, facility="SOUTH")
            assert msa(await send_one(listener, simulate.dft(6, facility="SOUTH")))[0] == "AA"
            await engine.stop()
            assert msa(await send_one(listener, message))[0] != "AA"
            await wait_for(lambda: receiver.notices("charges-legacy", "firing"), timeout=20)
            await wait_for(lambda: len(receiver.notices("charges-legacy", "repeat")) == 2, timeout=20)
            await rounds(svc, 10)
            await engine.start()
            assert msa(await send_one(listener, message))[0] == "AA"
            await wait_for(lambda: receiver.notices("charges-legacy", "resolved"), timeout=20)
            await wait_for(lambda: box.subjects("[Ficus RESOLVED] charges-legacy:"), timeout=20)
            await rounds(svc, 3)
    firing = assert_cycle(receiver, box, "charges-legacy")
    assert firing["facilities"] == ["SOUTH"] and firing["process"] == "claims-to-cash"
    expected = sum(abs(float(line.split(b"|")[11])) for line in message.split(b"\r") if line.startswith(b"FT1"))
    assert firing["money_at_risk"] == f"{expected:.2f}"
    assert "refused 1 units" in firing["summary"]


@pytest.mark.integration
async def test_a_failed_delivery_is_sent_at_the_next_evaluation(
    nats_server: EmbeddedNats, receiver: Receiver, smtp: tuple[Mailbox, int], tmp_path: Path
) -> None:
    _box, port = smtp
    receiver.fail_next = 2
    cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}],
                      state_dir=tmp_path, alerting=alerting(receiver, port),
                      alerts=[{**rule("quiet", "silent", silent_minutes=0.01, max_repeats=0), "notify": ["hook"]}])
    async with Service(cfg) as svc:
        await wait_for(lambda: receiver.notices("quiet", "firing"), timeout=20)
        await rounds(svc, 5)
    assert receiver.fail_next == 0 and len(receiver.notices("quiet", "firing")) == 1


def test_config_errors_name_the_key_and_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret-smtp-password")
    base: dict[str, Any] = {
        "nats": {"url": "nats://127.0.0.1:14222"},
        "interfaces": [{"name": IFACE, "kind": "hl7-mllp", "listen": "127.0.0.1:0", "mapping": "hl7v2.dft_p03",
                        "route": "modern"}],
        "alerting": {"email": [{"name": "mail", "host": "smtp.example.org", "security": "plain",
                                "from": "ficus@example.org", "to": ["ops@example.org"],
                                "username": "ficus", "password": "env:SMTP_PASSWORD"}],
                     "webhooks": [{"name": "hook", "url": "http://hooks.example.org/x"}]},
        "alerts": [{"name": "a", "kind": "dead_letters", "notify": ["nowhere"]},
                   {"name": "b", "kind": "silent", "interfaces": ["nope"], "notify": ["mail"]}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(base)
    text = str(err.value)
    assert "alerting.email.0: Value error" not in text
    assert "plain" in text and "loopback" in text
    assert "alerting.webhooks.0.url" in text and "https" in text
    assert "s3cret" not in text
    base["alerting"]["email"][0]["security"] = "starttls"
    base["alerting"]["webhooks"][0]["url"] = "https://hooks.example.org/x"
    with pytest.raises(ConfigError) as err:
        parse_config(base)
    text = str(err.value)
    assert "needs count or money" in text or "notify" in text
    base["alerts"][0].update(count=3)
    with pytest.raises(ConfigError) as err:
        parse_config(base)
    assert "alerts[b]: kind 'silent' needs silent_minutes" in str(err.value)
    base["alerts"][1]["silent_minutes"] = 30
    with pytest.raises(ConfigError) as err:
        parse_config(base)
    assert "alerts[a].notify: no [[alerting.webhooks]] or [[alerting.email]] named 'nowhere'" in str(err.value)
    base["alerts"][0]["notify"] = ["hook"]
    with pytest.raises(ConfigError) as err:
        parse_config(base)
    assert "alerts[b].interfaces: no interface named 'nope'" in str(err.value)
    base["alerts"][1]["interfaces"] = [IFACE]
    cfg = parse_config(base)
    assert cfg.alerting.email[0].sender == "ficus@example.org" and cfg.alerts[1].schedule is None


def test_notice_shapes() -> None:
    from router.alert_notify import Notice, slack_body, teams_body

    notice = Notice(rule="r", kind="dead_letters", notice="firing", subject="x/NORTH", process="claims-to-cash",
                    interfaces=["x"], facilities=["NORTH"], money_at_risk="10.00", since="2026-01-01T00:00:00+00:00",
                    summary="2 dead letters")
    slack = slack_body(notice)
    assert set(slack) == {"text", "blocks"} and "Money at risk:* 10.00" in slack["blocks"][1]["text"]["text"]
    teams = teams_body(notice)
    assert teams["@type"] == "MessageCard" and {"name": "Facilities", "value": "NORTH"} in teams["sections"][0]["facts"]


def test_schedule_window() -> None:
    from router.alerts import in_schedule
    from router.config import AlertScheduleConfig

    schedule = AlertScheduleConfig(days=["mon", "tue", "wed", "thu", "fri"], start="07:00", end="19:00",
                                   timezone="America/Chicago")
    monday_noon = datetime(2026, 11, 30, 18, 0, tzinfo=UTC).timestamp()  # 12:00 in Chicago
    inside, opened = in_schedule(schedule, monday_noon)
    assert inside and monday_noon - opened == 5 * 3600
    assert not in_schedule(schedule, datetime(2026, 11, 30, 2, 0, tzinfo=UTC).timestamp())[0]  # Sunday 20:00
    assert not in_schedule(schedule, datetime(2026, 11, 29, 18, 0, tzinfo=UTC).timestamp())[0]  # Sunday noon


def test_cli_table() -> None:
    from router.cli import alerts_table

    table = alerts_table([
        {"rule": "quiet", "kind": "silent", "state": "ok", "process": "supply", "interfaces": [], "facilities": [],
         "money_at_risk": None, "since": None, "last_sent": None, "repeats": 0, "summary": ""},
        {"rule": "dl", "kind": "dead_letters", "state": "firing", "process": "claims-to-cash",
         "interfaces": ["his"], "facilities": ["NORTH"], "money_at_risk": "10.00", "since": "2026-01-01T00:00:00+00:00",
         "last_sent": "2026-01-01T00:00:00+00:00", "repeats": 1, "summary": "2 dead letters"}])
    lines = table.splitlines()
    assert lines[0].startswith("STATE") and lines[1].startswith("firing") and "10.00" in lines[1]
    assert lines[2].startswith("ok")
