"""The console in a real browser (issue 16 item 4, acceptance 2): Playwright driving Debian's
chromium (headless, /usr/bin/chromium; `make` installs both) against a real service with an
MLLP interface (a simulated legacy engine behind it) and a folder 835 interface, fed real
traffic. Screenshots go to tests/artifacts/ (gitignored).

Skipped with a message when chromium or the playwright package is missing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from legacy.simulated_engine import SimulatedEngine
from router import simulate
from router.config import NatsConfig
from router.embedded_nats import EmbeddedNats
from router.service import Service
from tests.conftest import make_config, wait_for
from tests.mllp_client import MllpTestClient, msa
from tests.test_files_service import folder_iface

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
REVERSAL = REPO / "fixtures/x12/reversal_pair.835"
BAD_AMOUNT = REPO / "fixtures/hl7/dft_p03_bad_amount.hl7"
ADMIN_TOKEN = "console-admin-secret-token-0123456789"
OPERATOR_TOKEN = "console-operator-secret-token-0123456789"

try:
    from playwright.async_api import Browser, Page, async_playwright
    from playwright.async_api import expect as pw_expect
except ImportError:  # pragma: no cover - `make` installs it
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(async_playwright is None, reason="the playwright package is not installed (make installs it)"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                       "(make installs it: apt-get install chromium)"),
]
# The message browser needs C2's business-key index (nats.key_index) and its API.
KEY_INDEX = "key_index" in NatsConfig.model_fields


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        # --no-sandbox: the tests may run as root (a container), where chromium's sandbox refuses to start.
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                            args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Console:
    svc: Service
    page: Page
    problems: list[str]

    @property
    def url(self) -> str:
        assert self.svc.api_url is not None
        return self.svc.api_url

    async def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


@asynccontextmanager
async def console(nats_url: str, tmp_path: Path, token: str = ADMIN_TOKEN) -> AsyncIterator[Console]:
    """A service with traffic behind it, and a signed-in browser page (1366x768)."""
    remit = folder_iface(tmp_path, name="payer-835", patterns=["*.835"], format="x12-835", flat=None, legacy=None)
    clients = [{"name": "night-admin", "role": "admin",
                "token_sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()},
               {"name": "day-operator", "role": "operator",
                "token_sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()}]
    async with SimulatedEngine() as engine:
        cfg = make_config(
            nats_url,
            [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern",
              "legacy": f"mllp://127.0.0.1:{engine.port}"}, remit],
            state_dir=str(tmp_path / "state"), api={"clients": clients},
            nats={"key_index": True} if KEY_INDEX else {})
        async with Service(cfg) as svc:
            port = svc.interfaces["his-charges"].listener.port  # type: ignore[union-attr]
            async with MllpTestClient(port) as client:
                for seq in range(1, 4):
                    assert msa(await client.exchange(simulate.dft(seq, lines=2)))[0] == "AA"
                assert msa(await client.exchange(BAD_AMOUNT.read_bytes()))[0] in ("CA", "AE")
            shutil.copy(REVERSAL, tmp_path / "in" / "reversal.835")
            await wait_for(lambda: svc.interfaces["payer-835"].stats.acked == 1, timeout=30)
            await wait_for(lambda: svc.interfaces["his-charges"].stats.dead_lettered == 1, timeout=30)
            async with browser() as chromium:
                context = await chromium.new_context(viewport={"width": 1366, "height": 768})
                page = await context.new_page()
                problems: list[str] = []
                # A resource the CSP blocked, a script error: the console must load with neither.
                page.on("console", lambda m: problems.append(f"{m.text} at {m.location.get('url', '')}")
                        if m.type == "error" else None)
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                page.set_default_timeout(15_000)
                out = Console(svc, page, problems)
                resp = await page.goto(out.url + "/")
                assert resp is not None and resp.status == 401
                # Nothing but this server: no inline script, no other origin.
                assert "script-src 'self'" in resp.headers["content-security-policy"]
                await page.get_by_label("Token").fill(token)
                await page.get_by_role("button", name="Open the console").click()
                await page.wait_for_url(out.url + "/")
                yield out
                await context.close()


EXPECTED_ERRORS = {("401", "/"), ("403", "/console/audit"), ("404", "/favicon.ico")}
"""Errors a page may log: the sign-in page's 401, an operator's 403 on the audit trail (both
asked for by the tests) and the browser's own favicon request."""


def _no_blocked(problems: list[str], base: str) -> None:
    """No script error, nothing refused by the Content-Security-Policy: nothing logged but EXPECTED_ERRORS."""
    bad = []
    for text in problems:
        found = re.match(r"Failed to load resource: the server responded with a status of (\d+) .* at (\S+)$", text)
        url = found.group(2) if found else ""
        if found and url.startswith(base) and (found.group(1), url[len(base):]) in EXPECTED_ERRORS:
            continue
        bad.append(text)
    assert not bad, bad


async def test_overview_live_flip_with_the_gate_and_its_audit_entry(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with console(nats_server.url, tmp_path) as c:
        page = c.page
        # The overview: both interfaces, their route, live figures through SSE (the clock moves).
        await pw_expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        # In the interfaces table: the instances table names interfaces too (leases).
        row = page.locator("#interfaces").get_by_role("row", name="his-charges")
        await pw_expect(row).to_contain_text("modern")
        await pw_expect(page.locator('td[data-iface="payer-835"][data-field="received"]')).to_have_text("1")
        await pw_expect(page.locator('[data-live="clock"]')).to_contain_text("updated")
        await pw_expect(page.locator('td[data-iface="his-charges"][data-field="dead_letters"]')).to_contain_text("1")
        await pw_expect(page.locator("#alerts")).to_contain_text("alert")  # "no alerts" or the alerts
        assert "night-admin (admin)" in await page.locator(".who").inner_text()
        await c.shot("overview")
        # Live: a message sent now shows on the page without a reload.
        port = c.svc.interfaces["his-charges"].listener.port  # type: ignore[union-attr]
        async with MllpTestClient(port) as client:
            assert msa(await client.exchange(simulate.dft(9, lines=2)))[0] == "AA"
        await pw_expect(page.locator('td[data-iface="his-charges"][data-field="received"]')).to_have_text("5")

        # The interface page, reached and used with the keyboard only.
        await page.get_by_role("link", name="his-charges").click()
        await pw_expect(page.get_by_role("heading", name="Interface his-charges")).to_be_visible()
        for _ in range(40):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement && document.activeElement.id") == "flip-mode":
                break
        else:
            raise AssertionError("Tab never reached the flip form's route selector")
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), "the focused control shows its focus"
        await page.keyboard.press("l")  # the select takes its option by initial: legacy
        assert await page.locator("#flip-mode").input_value() == "legacy"
        await page.keyboard.press("Tab")  # facility: empty, the whole interface
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "flip-reason"
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "flip-check"
        await page.keyboard.press("Enter")
        confirm = page.locator("#flip-confirm")
        await pw_expect(page.locator("#verdict")).to_contain_text("The gate allows the flip of his-charges to legacy")
        # Confirming without a reason is refused on the page; nothing is sent.
        await confirm.focus()
        await page.keyboard.press("Enter")
        await pw_expect(page.locator("#flip-result")).to_have_text("A reason is required.")
        assert c.svc.routes.get("his-charges").mode == "modern"
        await page.keyboard.type("drill: legacy engine takes over during the ERP upgrade")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")  # the check again: the verdict, then the confirmation
        await pw_expect(page.locator("#verdict")).to_contain_text("allows")
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "flip-confirm"
        await c.shot("interface-verdict")
        await page.keyboard.press("Enter")
        await pw_expect(page.locator("#flip-result")).to_contain_text("Switched to legacy")
        assert c.svc.routes.get("his-charges").mode == "legacy"
        assert c.svc.routes.get("his-charges").actor == "night-admin"
        await pw_expect(page.locator("#history")).to_contain_text("drill: legacy engine takes over")
        await c.shot("interface-flipped")

        # The gate refuses a flip to modern from legacy (shadow first), shown before any confirmation.
        await page.locator("#flip-mode").select_option("modern")
        await page.locator("#flip-check").click()
        await pw_expect(page.locator("#verdict")).to_contain_text("refuses")
        assert await page.locator("#flip-confirm").count() == 0
        # One facility into shadow: allowed, confirmed with its reason; the interface stays in legacy.
        await page.locator("#flip-mode").select_option("shadow")
        await page.get_by_label("Facility (empty: the whole interface)").fill("NORTH")
        await page.get_by_label("Reason (required", exact=False).fill("gather parity at NORTH first")
        await page.locator("#flip-check").click()
        await pw_expect(page.locator("#verdict")).to_contain_text("allows the flip of his-charges (facility NORTH)")
        await page.locator("#flip-confirm").click()
        await pw_expect(page.locator("#flip-result")).to_contain_text("Facility NORTH switched to shadow")
        route = c.svc.routes.get("his-charges")
        assert route.mode == "legacy" and route.facilities == {"NORTH": "shadow"}
        await pw_expect(page.locator("#history")).to_contain_text("gather parity at NORTH first")

        # The audit trail shows the flip with its actor and reason.
        await page.get_by_role("link", name="Audit trail").click()
        await page.locator("#a-action").select_option("route_flip")
        await page.get_by_role("button", name="Show").click()
        flip_row = page.locator("#audit-records tbody tr", has_text="route_flip").first
        await pw_expect(flip_row).to_contain_text("night-admin")
        await pw_expect(flip_row).to_contain_text("his-charges")
        await c.shot("audit")
        _no_blocked(c.problems, c.url)


async def test_dead_letter_dry_run_then_discard(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with console(nats_server.url, tmp_path) as c:
        page = c.page
        await page.get_by_role("link", name="Dead letters").click()
        await pw_expect(page.locator("#dlq-status")).to_contain_text("1 dead letter(s) shown")
        letter = page.locator("#dlq-list tbody tr").first
        await pw_expect(letter).to_contain_text("his-charges")
        await letter.get_by_role("button").click()
        await pw_expect(page.locator("#dlq-detail")).to_contain_text('"interface": "his-charges"')
        letter_id = await page.locator("#dlq-id").input_value()
        # The dry run: the amount is still bad, so the replay would still fail; nothing stored.
        await page.get_by_role("button", name="Replay: dry run").click()
        await pw_expect(page.locator("#dlq-result")).to_contain_text("Dry run: the replay would still fail")
        await pw_expect(page.locator("#dlq-detail")).to_contain_text('"dry_run": true')
        await c.shot("dead-letter-dry-run")
        # Discarding needs a reason.
        await page.get_by_role("button", name="Discard").click()
        await pw_expect(page.locator("#dlq-result")).to_have_text("A reason is required to discard.")
        await page.get_by_label("Reason (required to discard)").fill("a test message from the HIS vendor")
        await page.get_by_role("button", name="Discard").click()
        await pw_expect(page.locator("#dlq-result")).to_contain_text("Discarded by night-admin")
        await page.locator("#dlq-state").select_option("")
        await page.get_by_role("button", name="Filter").click()
        await pw_expect(page.locator("#dlq-list tbody tr").first).to_contain_text("discarded")
        # Both actions are in the audit trail, the dry run as such.
        await page.get_by_role("link", name="Audit trail").click()
        await page.get_by_role("button", name="Show").click()
        records = page.locator("#audit-records tbody")
        await pw_expect(records.locator("tr", has_text="dlq_replay").first).to_contain_text('"dry_run":true')
        await pw_expect(records.locator("tr", has_text="dlq_discard").first).to_contain_text(
            f'"dead_letter":{letter_id}')
        await c.shot("audit-dead-letters")
        _no_blocked(c.problems, c.url)


async def test_an_operator_sees_no_content_and_no_audit(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with console(nats_server.url, tmp_path, token=OPERATOR_TOKEN) as c:
        page = c.page
        assert await page.get_by_role("link", name="Audit trail").count() == 0
        await page.get_by_role("link", name="Dead letters").click()
        await pw_expect(page.get_by_text("it needs the admin role")).to_be_visible()
        assert await page.get_by_role("button", name="Inspect").is_disabled()
        resp = await page.goto(c.url + "/console/audit")
        assert resp is not None and resp.status == 403
        # The session alone is no API credential: the CSRF header is needed too.
        cookies = {x["name"]: x["value"] for x in await page.context.cookies()}
        async with aiohttp.ClientSession(cookies=cookies) as http:
            assert (await http.get(c.url + "/api/v1/interfaces")).status == 401
            assert (await http.put(c.url + "/api/v1/routes/his-charges",
                                   json={"mode": "legacy", "reason": "csrf"})).status == 401
            await page.goto(c.url + "/")
            csrf = await page.locator('meta[name="ficus-csrf"]').get_attribute("content")
            assert csrf
            ok = await http.get(c.url + "/api/v1/interfaces", headers={"X-Ficus-CSRF": csrf})
            assert ok.status == 200
            assert (await http.get(c.url + "/api/v1/interfaces", headers={"X-Ficus-CSRF": csrf + "x"})).status == 401
        _no_blocked(c.problems, c.url)


@pytest.mark.skipif(not KEY_INDEX, reason="the business-key index (nats.key_index, C2) is not in this tree")
async def test_find_a_message_by_control_id_and_by_claim_and_see_its_events(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with console(nats_server.url, tmp_path) as c:
        page = c.page
        await page.get_by_role("link", name="Messages").click()
        await page.get_by_label("Control id (MSH-10)").fill("DFT00000002")
        await page.get_by_role("button", name="Search").click()
        await pw_expect(page.locator("#msg-status")).to_have_text("1 message(s) found")
        found = page.locator("#msg-results tbody tr").first
        await pw_expect(found).to_contain_text("DFT00000002")
        await pw_expect(found).to_contain_text("his-charges")
        await found.get_by_role("button", name="Follow the chain of DFT00000002").click()
        events = page.locator('[data-chain="events"] li')
        await pw_expect(events.first).to_contain_text("org.ficus.revenue.charge")
        await c.shot("message-by-control-id")

        await page.get_by_label("Control id (MSH-10)").fill("")
        await page.get_by_label("Claim number").fill("PCN004")
        await page.get_by_role("button", name="Search").click()
        await pw_expect(page.locator("#msg-status")).to_contain_text("message(s) found")
        found = page.locator("#msg-results tbody tr").first
        await pw_expect(found).to_contain_text("payer-835")
        await found.get_by_role("button").click()
        await pw_expect(page.locator('[data-chain="events"] li').first).to_contain_text("org.ficus.claims")
        await c.shot("message-by-claim")
        # Both searches and the chain reads are audited.
        await page.get_by_role("link", name="Audit trail").click()
        await page.get_by_role("button", name="Show").click()
        await pw_expect(page.locator("#audit-records tbody tr", has_text="message_search").first).to_be_visible()
        _no_blocked(c.problems, c.url)
