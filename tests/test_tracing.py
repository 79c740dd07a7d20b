"""Tracing and JSON logs (issue 16, item 3): router/tracing.py, router/logjson.py.

A DFT sent to a real service (real nats-server, a real sink receiver) leaves one trace with
receive, archive, translate, publish and sink delivery spans (an in-memory exporter from the
OpenTelemetry SDK installed in the test's provider); the event carries the trace as the
CloudEvents ``traceparent`` extension and the sink's request in its ``traceparent`` header.
With tracing off nothing is set up and the events are the bytes they were before. `ficus run`
with ``log_format = "json"`` and ``[tracing] otlp_endpoint`` writes only JSON lines on stderr
and exports its spans over OTLP/HTTP to a collector played here by an aiohttp server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent
from canonical.translate import translate_hl7
from legacy.simulated_engine import SimulatedEngine
from router import simulate, tracing
from router.cli import log_handler
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.ficus_proc import Ficus, free_port
from tests.mllp_client import MllpTestClient, msa
from tests.odbc_db import usage_table
from tests.test_files_service import BILLING, folder_iface

TRACEPARENT = tracing.TRACEPARENT


@dataclass
class Receiver:
    """A sink's receiver (the ERP), or an OTLP collector: what came, with its headers."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=204 if request.path == "/events" else 200)


@contextlib.asynccontextmanager
async def receiver(path: str) -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post(path, rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}{path}"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The test's tracer provider, with an in-memory exporter: what a collector would get."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


def _trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans()
            if s.context is not None and _hex(s.context.trace_id, 32) == trace_id]


def _by_trace(events: list[dict[str, Any]]) -> dict[str | None, int]:
    """Events per trace id (None: events without a traceparent)."""
    return dict(Counter(tracing.trace_id_of(e.get("traceparent")) for e in events))


def _names(spans: list[ReadableSpan]) -> set[str]:
    return {s.name for s in spans}


def _attribute_text(spans: list[ReadableSpan]) -> str:
    return json.dumps([dict(s.attributes or {}) for s in spans])


CHARGES = {"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}


@pytest.mark.integration
async def test_one_dft_is_one_trace_from_receive_to_sink_delivery(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, spans: InMemorySpanExporter, tmp_path: Path,
) -> None:
    payload = simulate.dft(1)
    async with receiver("/events") as erp:
        cfg = make_config(nats_server.url, [CHARGES], state_dir=str(tmp_path / "state"),
                          sinks=[{"name": "erp", "url": erp.url}])
        async with service_factory(cfg) as svc:
            async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
                assert msa(await client.exchange(payload))[0] == "AA"
            await wait_for(lambda: len(erp.requests) == 3, timeout=20)  # three FT1s, three charges
            await wait_for(lambda: len([s for s in spans.get_finished_spans() if s.name == "sink delivery"]) == 3,
                           timeout=10)
    events = erp.events
    trace_ids = {tracing.trace_id_of(e.get("traceparent")) for e in events}
    assert len(trace_ids) == 1 and None not in trace_ids, events
    trace_id = trace_ids.pop()
    assert trace_id is not None
    mine = _trace(spans, trace_id)
    assert {"receive", "archive", "translate", "publish", "sink delivery"} <= _names(mine), _names(mine)
    by_name = {s.name: s for s in mine}
    root = by_name["receive"]
    assert root.parent is None and root.context is not None  # a new trace: MLLP carries none
    for stage in ("archive", "translate", "publish"):
        parent = by_name[stage].parent
        assert parent is not None and parent.span_id == root.context.span_id, stage
    # The events carry the unit's span; each delivery continues it and sends its own context.
    assert {e["traceparent"][:-3] for e in events} == {f"00-{trace_id}-{_hex(root.context.span_id, 16)}"}
    assert all(int(e["traceparent"][-2:], 16) & 1 for e in events)  # sampled
    deliveries = {_hex(s.context.span_id, 16): s for s in mine if s.name == "sink delivery" and s.context}
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in deliveries.values())
    for headers, _ in erp.requests:
        m = TRACEPARENT.match(headers["traceparent"])
        assert m is not None and m.group(1) == trace_id and m.group(2) in deliveries, headers
    assert {s.attributes.get("ficus.status") for s in deliveries.values() if s.attributes} == {204}
    # Identifiers only: no control id in clear, no patient, account or charge value.
    text = _attribute_text(mine)
    for value in ("DFT00000001", "DEMO", "PATIENT", "MRN", "ACCT", "V0000"):
        assert value not in text, (value, text)
    assert (root.attributes or {}).get("ficus.interface") == "his-charges"
    assert (root.attributes or {}).get("ficus.outcome") == "AA"


@pytest.mark.integration
async def test_shadow_and_file_units_trace_their_legacy_forward(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, spans: InMemorySpanExporter, tmp_path: Path,
) -> None:
    async with SimulatedEngine() as engine:
        shadow = {**CHARGES, "route": "shadow", "legacy": f"mllp://127.0.0.1:{engine.port}"}
        files = folder_iface(tmp_path, route="shadow")  # shadow: the file also goes to the legacy folder
        cfg = make_config(nats_server.url, [shadow, files], state_dir=str(tmp_path / "state"))
        async with service_factory(cfg) as svc:
            async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
                assert msa(await client.exchange(simulate.dft(2)))[0] == "AA"
            shutil.copy(BILLING, tmp_path / "in" / "billing.csv")
            await wait_for(lambda: svc.interfaces["billing"].stats.acked == 1, timeout=30)
            await wait_for(lambda: svc.interfaces["his-charges"].stats.parity.samples == 1, timeout=10)

    def unit_trace(interface: str) -> list[ReadableSpan]:
        root = next(s for s in spans.get_finished_spans() if s.name == "receive"
                    and s.attributes and s.attributes.get("ficus.interface") == interface)
        assert root.context is not None
        return _trace(spans, _hex(root.context.trace_id, 32))

    # Shadow: the legacy engine's answer first, then translation and publish off the sender's path.
    assert {"receive", "archive", "legacy forward", "translate", "publish"} <= _names(unit_trace("his-charges"))
    # A file: its original archived, its records translated and published in chunks, the file delivered.
    assert {"receive", "archive", "translate", "publish", "legacy forward"} <= _names(unit_trace("billing"))


@pytest.mark.integration
async def test_without_tracing_nothing_is_set_up_and_events_are_unchanged(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path,
) -> None:
    payload = simulate.dft(3)
    async with receiver("/events") as erp:
        cfg = make_config(nats_server.url, [CHARGES], state_dir=str(tmp_path / "state"),
                          sinks=[{"name": "erp", "url": erp.url}])
        async with service_factory(cfg) as svc:
            assert not tracing.enabled()
            async with MllpTestClient(svc.interfaces["his-charges"].listener.port) as client:
                assert msa(await client.exchange(payload))[0] == "AA"
            await wait_for(lambda: len(erp.requests) == 3, timeout=20)
            assert not tracing.enabled()
    assert all("traceparent" not in headers for headers, _ in erp.requests)
    # Byte for byte what translation gave before tracing existed (no traceparent key at all).
    first = erp.events[0]
    ctx = TranslationContext("his-charges", "live", first["ficusraw"], datetime.now(UTC), "UTC")
    expected = {ev.id: ev.to_json() for ev in translate_hl7(payload, "hl7v2.dft_p03", ctx).events}
    assert {json.loads(body)["id"]: body for _, body in erp.requests} == expected
    assert all(b"traceparent" not in body for _, body in erp.requests)


@pytest.mark.integration
async def test_a_batch_of_rows_is_one_trace(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, spans: InMemorySpanExporter, tmp_path: Path,
) -> None:
    with usage_table("postgresql") as db:
        db.insert(5)
        async with receiver("/events") as erp:
            cfg = make_config(nats_server.url, [db.interface("supplies")], state_dir=str(tmp_path / "state"),
                              sinks=[{"name": "erp", "url": erp.url}])
            async with service_factory(cfg) as svc:
                stats = svc.interfaces["supplies"].stats
                await wait_for(lambda: stats.published == 5, timeout=30)
                db.insert(3)  # one statement: one commit, read in one batch
                # Whether the sink also saw the first batch depends on when its consumer started.
                await wait_for(lambda: stats.published == 8 and 3 in _by_trace(erp.events).values(), timeout=30)
    by_trace = _by_trace(erp.events)
    assert None not in by_trace, erp.events
    trace_id = next(t for t, n in by_trace.items() if n == 3)  # three rows of one batch: one trace
    assert trace_id is not None
    mine = _trace(spans, trace_id)
    assert {"receive", "archive", "translate", "publish", "sink delivery"} <= _names(mine)
    receive = next(s for s in mine if s.name == "receive")
    assert (receive.attributes or {}).get("ficus.rows") == 3
    assert (receive.attributes or {}).get("ficus.outcome") == "committed"


def test_a_call_its_attributes_do_not_fit_still_runs(spans: InMemorySpanExporter) -> None:
    @tracing.traced_sync("translate", lambda self, a: {"a": a})
    def work(a: int, b: int = 0) -> int:
        return a + b

    with tracing.unit("receive", "x"):
        assert work(1, b=2) == 3 and work(a=1) == 1  # the lambda takes no b, nor a by keyword
    errors = [s.attributes for s in spans.get_finished_spans() if s.name == "translate"]
    assert errors == [{"ficus.attributes_error": "TypeError"}] * 2


def test_the_span_helper_is_a_shared_no_op_and_imports_nothing_when_off() -> None:
    code = (
        "import sys\n"
        "from router import tracing\n"
        "import router.stage, router.mllp_pipeline, router.sinks, router.file_pipeline, router.odbc_pipeline\n"
        "a = tracing.span('archive', interface='x')\n"
        "assert a is tracing.span('publish') and not tracing.enabled()\n"
        "with a as s:\n"
        "    s.set_attribute('ficus.x', 1)\n"
        "assert tracing.current_traceparent() is None\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_traceparent_parsing_and_events_omit_it_when_absent() -> None:
    tp = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    assert tracing.trace_id_of(tp) == "ab" * 16
    assert tracing.trace_id_of("01-" + "ab" * 16 + "-" + "cd" * 8 + "-01") is None
    assert tracing.trace_id_of(None) is None
    ctx = TranslationContext("his", "live", "nats://FICUS_RAW/1", datetime.now(UTC), "UTC")
    event = translate_hl7(simulate.dft(4), "hl7v2.dft_p03", ctx).events[0]
    assert b"traceparent" not in event.to_json()
    traced = event.model_copy(update={"traceparent": tp})
    body = json.loads(traced.to_json())
    assert body["traceparent"] == tp
    assert type(event).model_validate(body).traceparent == tp  # consumers read it back (extra="forbid")
    assert "traceparent" not in CloudEvent.model_json_schema(mode="serialization")["required"]


def test_json_lines_escape_what_could_forge_a_line() -> None:
    stream = io.StringIO()
    handler = log_handler(stream, "json")
    log = logging.getLogger("ficus.test.json")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("file %s done", "a\nFORGED INFO x\r\x1b[31m\x85\u2028.csv",
                 extra={"interface": "billing", "stage": "commit", "outcome": "done", "duration_ms": 12.5})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("with a traceback\nFORGED too")
    finally:
        log.removeHandler(handler)
        log.propagate = True
        tracing.log_units(False)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "file a\nFORGED INFO x\r\x1b[31m\x85\u2028.csv done"
    assert {k: first[k] for k in ("level", "logger", "interface", "stage", "outcome", "duration_ms")} == {
        "level": "INFO", "logger": "ficus.test.json", "interface": "billing", "stage": "commit",
        "outcome": "done", "duration_ms": 12.5}
    assert first["time"].endswith("Z") and "trace_id" not in first
    assert second["level"] == "ERROR" and "Traceback" in second["exception"] and "boom" in second["exception"]


OTLP_CONFIG = """
state_dir = "{state}"
log_level = "INFO"
log_format = "json"
[nats]
url = "{nats}"
publish_timeout_seconds = 2
[api]
listen = "127.0.0.1:{api}"
[tracing]
otlp_endpoint = "{otlp}"
service_name = "ficus-test"
[[interfaces]]
name = "his-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp}"
mapping = "hl7v2.dft_p03"
route = "modern"
"""


def _span_names(requests: list[tuple[dict[str, str], bytes]]) -> tuple[set[str], set[str]]:
    """Span names and service names in OTLP/HTTP export requests (protobuf)."""
    names: set[str] = set()
    services: set[str] = set()
    for _, body in requests:
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for rs in export.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            for ss in rs.scope_spans:
                names |= {s.name for s in ss.spans}
    return names, services


@pytest.mark.integration
async def test_ficus_run_logs_json_lines_and_exports_spans_over_otlp(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    api, mllp = free_port(), free_port()
    async with receiver("/v1/traces") as collector:
        conf = tmp_path / "ficus.toml"
        conf.write_text(OTLP_CONFIG.format(state=tmp_path / "state", nats=nats_server.url, api=api, mllp=mllp,
                                           otlp=collector.url))
        ficus = Ficus(conf, api, tmp_path / "stderr.log")
        try:
            await ficus.start()
            await ficus.wait_ready()
            async with MllpTestClient(mllp) as client:
                assert msa(await client.exchange(simulate.dft(5)))[0] == "AA"
                bad = simulate.dft(6).replace(b"|CG|", b"|ZZ|", 1)  # FT1-6 not a transaction type
                assert msa(await client.exchange(bad))[0] in ("AE", "AR")
                assert msa(await client.exchange(b"not hl7 at all"))[0] == "AR"
            assert await ficus.terminate() == 0  # the batch exporter flushes at shutdown
        finally:
            ficus.kill_if_running()
        names, services = _span_names(collector.requests)
    assert {"receive", "archive", "translate", "publish"} <= names, names
    assert services == {"ficus-test"}
    assert all(h.get("Content-Type") == "application/x-protobuf" for h, _ in collector.requests)
    lines = (tmp_path / "stderr.log").read_text().splitlines()
    assert lines, "ficus run wrote nothing"
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed), parsed
    assert any(p["message"].startswith("running; API") for p in parsed)
    letters = [p for p in parsed if "dead-lettered" in p["message"]]
    assert letters and all(p["interface"] == "his-charges" and p.get("trace_id") for p in letters), parsed
    assert {p.get("outcome") for p in letters} == {"dead_lettered"}
    assert not [p for p in parsed if "PATIENT" in json.dumps(p) or "ZZ" in p["message"]], parsed


def test_ficus_demo_logs_json_lines(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "router.cli", "demo", "--duration", "10", "-v", "--log-format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90,
                          cwd=Path(__file__).resolve().parent.parent, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line.get("interface") == "billing-export" for line in lines), lines[-5:]
    assert "ficus demo: the ERP received" in done.stdout  # the demo's own output stays on stdout


async def test_json_unit_context_names_interface_and_unit_and_ends_with_its_outcome() -> None:
    stream = io.StringIO()
    handler = log_handler(stream, "json")
    loggers = [logging.getLogger("ficus.test.unit"), logging.getLogger("ficus.units")]
    for one in loggers:
        one.addHandler(handler)
        one.setLevel(logging.DEBUG)
        one.propagate = False
    log = loggers[0]

    @tracing.traced_unit("receive", lambda name: ("his-charges", name, {}), lambda code: code)
    async def work(name: str) -> str:
        await asyncio.sleep(0)
        log.info("inside")
        return "AA"

    try:
        assert await work("DFT00000009") == "AA"
        log.info("outside")
    finally:
        for one in loggers:
            one.removeHandler(handler)
            one.propagate = True
            one.setLevel(logging.NOTSET)
        tracing.log_units(False)
    inside, done, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["interface"], inside["unit"]) == ("his-charges", "DFT00000009")
    assert {k: done[k] for k in ("logger", "interface", "unit", "stage", "outcome")} == {
        "logger": "ficus.units", "interface": "his-charges", "unit": "DFT00000009", "stage": "receive",
        "outcome": "AA"}
    assert isinstance(done["duration_ms"], float) and done["duration_ms"] >= 0
    assert "interface" not in outside and "unit" not in outside
