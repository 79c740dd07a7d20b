"""Delivering alert notices: a webhook (generic JSON, Slack- or Teams-compatible) and e-mail over SMTP.

A notice holds identifiers, counts and money only (rule, process, interfaces, facilities,
amounts): never message content, so it may leave Ficus for a chat channel or a mailbox.
Each target gets a bounded number of tries per call; a failure is logged by class (never a
body, a token or an address) and reported to the caller, which tries again at its next
evaluation (router/alerts.py).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any, Literal

import aiohttp

from router.config import AlertEmailConfig, AlertingConfig, AlertWebhookConfig

log = logging.getLogger("ficus.alerts")
NoticeKind = Literal["firing", "repeat", "resolved"]
RETRY_PAUSE = 0.5
"""Seconds before the second try of a target (doubled for each further one)."""


@dataclass(frozen=True)
class Notice:
    """One notice of one alert, as every target receives it."""

    rule: str
    kind: str
    notice: NoticeKind
    subject: str
    process: str
    interfaces: list[str]
    facilities: list[str]
    money_at_risk: str | None
    since: str
    summary: str
    repeats: int = 0

    def title(self) -> str:
        word = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[self.notice]
        return f"[Ficus {word}] {self.rule}: {self.summary}"

    def facts(self) -> list[tuple[str, str]]:
        """The notice as (label, value) lines, in the order people read them."""
        return [
            ("Business process", self.process),
            ("Interfaces", ", ".join(self.interfaces) or "-"),
            ("Facilities", ", ".join(self.facilities) or "-"),
            ("Money at risk", self.money_at_risk or "-"),
            ("Since", self.since),
            ("Rule", f"{self.rule} ({self.kind})"),
        ]

    def as_json(self) -> dict[str, Any]:
        return {"source": "ficus", **asdict(self)}


def slack_body(notice: Notice) -> dict[str, Any]:
    """Slack's incoming-webhook shape: `text` (the fallback) and Block Kit `blocks`."""
    lines = "\n".join(f"*{label}:* {value}" for label, value in notice.facts())
    return {
        "text": notice.title(),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": notice.title()[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": lines}},
        ],
    }


def teams_body(notice: Notice) -> dict[str, Any]:
    """A MessageCard, which Teams incoming webhooks and workflows accept."""
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": notice.title(),
        "themeColor": "2EB886" if notice.notice == "resolved" else "D83B01",
        "title": notice.title(),
        "sections": [{"facts": [{"name": label, "value": value} for label, value in notice.facts()]}],
    }


def webhook_body(target: AlertWebhookConfig, notice: Notice) -> dict[str, Any]:
    if target.format == "slack":
        return slack_body(notice)
    if target.format == "teams":
        return teams_body(notice)
    return notice.as_json()


def email_message(target: AlertEmailConfig, notice: Notice) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = notice.title()
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.to)
    msg.set_content("\n".join(f"{label}: {value}" for label, value in notice.facts()) + "\n")
    return msg


def _send_mail(target: AlertEmailConfig, msg: EmailMessage) -> None:
    """Blocking: run off the event loop."""
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if target.security == "tls":
        smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=target.timeout_seconds, context=context)
    else:
        smtp = smtplib.SMTP(target.host, target.port, timeout=target.timeout_seconds)
    with smtp:
        if target.security == "starttls":
            smtp.starttls(context=context)
        if target.username is not None and target.password is not None:
            smtp.login(target.username, target.password)
        smtp.send_message(msg)


class Notifier:
    """Sends notices to the configured targets by name; one HTTP session for all webhooks."""

    def __init__(self, cfg: AlertingConfig) -> None:
        self.cfg = cfg
        self.webhooks = {t.name: t for t in cfg.webhooks}
        self.email = {t.name: t for t in cfg.email}
        self._http: aiohttp.ClientSession | None = None
        self.sent = 0
        self.failed = 0

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _post(self, target: AlertWebhookConfig, notice: Notice) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"User-Agent": "ficus-alerts"}
        if target.bearer_token:
            headers["Authorization"] = f"Bearer {target.bearer_token}"
        timeout = aiohttp.ClientTimeout(total=target.timeout_seconds)
        async with self._http.post(target.url, json=webhook_body(target, notice), headers=headers,
                                   timeout=timeout) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"HTTP {resp.status}")

    async def _deliver_once(self, name: str, notice: Notice) -> None:
        if name in self.webhooks:
            await self._post(self.webhooks[name], notice)
        elif name in self.email:
            target = self.email[name]
            await asyncio.to_thread(_send_mail, target, email_message(target, notice))
        else:  # the config checks names; a target removed while a notice was pending
            log.warning("alert %s: target %s is not configured; dropped", notice.rule, name)

    async def deliver(self, name: str, notice: Notice) -> bool:
        """Sends `notice` to one target, a few tries; True when it was accepted."""
        pause = RETRY_PAUSE
        for attempt in range(1, self.cfg.delivery_attempts + 1):
            try:
                await self._deliver_once(name, notice)
                self.sent += 1
                return True
            except (OSError, TimeoutError, aiohttp.ClientError, smtplib.SMTPException, RuntimeError) as exc:
                why = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
                log.warning("alert %s: %s notice to %s failed (try %d of %d): %s", notice.rule, notice.notice,
                            name, attempt, self.cfg.delivery_attempts, why)
            if attempt < self.cfg.delivery_attempts:
                await asyncio.sleep(pause)
                pause *= 2
        self.failed += 1
        return False
