"""No header or field value leaves Ficus in an ACK, a dead letter, the parity API, a log line
or the dashboard (issue 10, item 10); control ids appear bounded and escaped.

Planted text goes into MSH-18 (a charset the message cannot be decoded with), MSH-9, FT1-6
and a 5,000-character MSH-10, on a real service with a real nats-server; JSON log lines and
trace spans (issue 16) are checked the same way.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import aiohttp
import pytest

from canonical.safe_text import MAX_ID, MAX_REASON, bounded_id, safe_reason
from legacy.simulated_engine import SimulatedEngine
from router import simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.mllp_client import MllpTestClient, msa

pytestmark = pytest.mark.integration
PLANTED = "PLANTED<script>"
LONG_ID = "LONG" + "7" * 4996  # 5,000 characters


def _edit(payload: bytes, segment: bytes, field: int, value: bytes) -> bytes:
    segments = payload.split(b"\r")
    for i, seg in enumerate(segments):
        if seg.startswith(segment):
            fields = seg.split(b"|")
            fields += [b""] * (field + 1 - len(fields))
            fields[field] = value
            segments[i] = b"|".join(fields)
            break
    return b"\r".join(segments)


def hostile_messages() -> list[bytes]:
    """Four DFTs, each with planted text where a reason used to quote it."""
    planted = PLANTED.encode()
    # MSH-18 names a charset, and the body is neither UTF-8 nor windows-1252 (0x81): undecodable.
    charset = _edit(simulate.dft(1), b"MSH", 17, planted + b"\\X0A\\")
    charset = charset.replace(b"DEMO^PATIENT", b"DEMO\x81^PATIENT", 1)
    msh9 = _edit(simulate.dft(2), b"MSH", 8, planted + b"^P03^DFT_P03")
    ft1_6 = _edit(simulate.dft(3), b"FT1", 6, planted)
    long_id = _edit(simulate.dft(4), b"MSH", 9, LONG_ID.encode())
    return [charset, msh9, ft1_6, long_id]


def assert_clean(where: str, text: str) -> None:
    assert PLANTED not in text and "PLANTED" not in text, where
    assert LONG_ID[:MAX_ID + 1] not in text, f"{where}: an unbounded control id"


async def _views(http: aiohttp.ClientSession, api: str) -> dict[str, str]:
    return {path: await (await http.get(f"{api}{path}")).text()
            for path in ("/", "/api/v1/dlq", "/api/v1/parity/his-charges", "/api/v1/interfaces")}


async def test_modern_mode_quotes_no_planted_value(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        replies: list[bytes] = []
        async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
            for payload in hostile_messages():
                reply = await client.exchange(payload)
                assert reply is not None
                replies.append(reply)
        codes = [msa(r)[0] for r in replies]
        assert "AA" not in codes, codes
        for reply in replies:
            assert_clean("ACK", reply.decode("latin-1"))
        await wait_for(lambda: svc.interfaces["his-charges"].stats.dead_lettered == 4)
        views = await _views(http, svc.api_url)
    for path, text in views.items():
        assert_clean(path, text)
    letters: list[dict[str, Any]] = json.loads(views["/api/v1/dlq"])["dead_letters"]
    assert len(letters) == 4
    for letter in letters:
        assert len(letter["reason"]) <= MAX_REASON and len(letter["unit"]) <= MAX_ID
    reasons = {x["locator"]: x["reason"] for x in letters if x.get("locator")}
    assert "MSH-18 character set" in reasons["MSH-18"]
    assert reasons["FT1[1]-6"] == "FT1[1]-6 transaction type is not one of CD, CG, CR"
    assert_clean("logs", caplog.text)


async def test_shadow_mode_quotes_no_planted_value(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "shadow",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            stats = svc.interfaces["his-charges"].stats
            async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
                for payload in hostile_messages():
                    assert await client.exchange(payload) is not None
            await wait_for(lambda: stats.parity.samples == 4 and stats.dead_lettered == 4)
            views = await _views(http, svc.api_url)
    for path, text in views.items():
        assert_clean(path, text)
    assert_clean("logs", caplog.text)


async def test_json_logs_and_spans_quote_no_planted_value(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    """The same four messages with `log_format = "json"` and tracing on (issue 16): every line
    is one JSON object, and neither a line nor a span attribute quotes a planted value."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from router import tracing
    from router.cli import log_handler

    stream = io.StringIO()
    handler = log_handler(stream, "json")
    handler.setLevel(logging.DEBUG)
    root, ficus = logging.getLogger(), logging.getLogger("ficus")
    old = ficus.level
    root.addHandler(handler)
    ficus.setLevel(logging.DEBUG)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
        async with service_factory(cfg) as svc:
            async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
                for payload in hostile_messages():
                    assert await client.exchange(payload) is not None
            await wait_for(lambda: svc.interfaces["his-charges"].stats.dead_lettered == 4)
    finally:
        root.removeHandler(handler)
        ficus.setLevel(old)
        tracing.uninstall()
        tracing.log_units(False)
        provider.shutdown()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    letters = [line for line in lines if "dead-lettered" in line["message"]]
    assert len(letters) == 4 and all(line["interface"] == "his-charges" and line["trace_id"] for line in letters)
    assert_clean("JSON logs", stream.getvalue())
    assert_clean("JSON log units", json.dumps([line.get("unit") for line in lines]))
    spans = exporter.get_finished_spans()
    assert {"receive", "archive", "translate", "publish"} <= {s.name for s in spans}
    assert_clean("span attributes", json.dumps([dict(s.attributes or {}) for s in spans]))


def test_safe_text_bounds_and_escapes_and_is_idempotent() -> None:
    assert bounded_id("DFT00000001") == "DFT00000001"
    long = bounded_id(LONG_ID)
    assert len(long) == MAX_ID and long != bounded_id(LONG_ID[:-1] + "8"), "long ids stay distinct"
    assert bounded_id("A\r\nB\x1b") == "A\\x0d\\x0aB\\x1b"
    reason = safe_reason("line one\nline two " + "x" * 1000)
    assert len(reason) == MAX_REASON and "\n" not in reason
    for text in (long, reason, bounded_id("a\u2028b")):
        assert bounded_id(text, len(text)) == text and safe_reason(text, len(text)) == text
