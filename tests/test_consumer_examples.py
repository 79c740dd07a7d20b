"""docs/consumers.md stays true: its three worked examples (docs/examples/) run against a real
service, each as the separate program a consumer would run."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from router import simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import REPO, ServiceFactory, make_config, wait_for
from tests.ficus_proc import free_port
from tests.mllp_client import MllpTestClient, msa

pytestmark = pytest.mark.integration
EXAMPLES = REPO / "docs" / "examples"
TOKEN = "erp-consumer-token-0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(b"consumer-examples-secret-32-bytes").decode()


def _config(nats_url: str, tmp: Path, **top: Any) -> Any:
    """One MLLP charge interface in modern; the API's one client is an ERP: viewer with content."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    return make_config(nats_url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}],
                       state_dir=tmp / "state",
                       api={"clients": [{"name": "erp", "role": "viewer", "content": True, "token_sha256": digest}]},
                       **top)


async def _send(port: int, seqs: range) -> None:
    async with MllpTestClient(port) as client:
        for seq in seqs:
            assert msa(await client.exchange(simulate.dft(seq, lines=2)))[0] == "AA"


async def _run(script: str, *args: str, timeout: float = 60) -> list[str]:
    """Runs an example to its end; its output lines (the process is killed if it overruns)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / script), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "FICUS_TOKEN": TOKEN})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()[-2000:]
    return out.decode().splitlines()


async def _event_ids(http: aiohttp.ClientSession, api: str) -> list[str]:
    resp = await http.get(f"{api}/api/v1/events", params={"limit": "1000"},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200, await resp.text()
    return [item["event"]["id"] for item in (await resp.json())["events"]]


async def test_nats_durable_consumer_with_the_exported_schemas(
        nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "router.cli", "schemas", "export", str(schemas),
                                                stdout=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    async with service_factory(_config(nats_server.url, tmp_path)) as svc, aiohttp.ClientSession() as http:
        port = svc.interfaces["his-charges"].listener.port
        await _send(port, range(1, 4))
        args = ("--nats", nats_server.url, "--schemas", str(schemas), "--durable", "erp-test")
        first = await _run("nats_consumer.py", *args, "--count", "6")
        await _send(port, range(4, 6))
        # The durable consumer goes on where it stopped: the two new messages' events only.
        second = await _run("nats_consumer.py", *args, "--count", "4")
        ids = await _event_ids(http, svc.api_url)
    got = [line.split()[1] for line in first + second]
    assert all(line.startswith("org.ficus.revenue.charge.posted.v1 ") for line in first + second)
    assert got == ids and len(ids) == 10


async def test_pull_pages_with_the_cursor_and_the_sse_feed_with_last_event_id(
        nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path) -> None:
    async with service_factory(_config(nats_server.url, tmp_path)) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url
        port = svc.interfaces["his-charges"].listener.port
        await _send(port, range(1, 4))
        cursor = tmp_path / "cursor.txt"
        pull = ("--api", api, "--state", str(cursor), "--limit", "4", "--once")
        first = await _run("pull_events.py", *pull)
        await _send(port, range(4, 6))
        second = await _run("pull_events.py", *pull)  # from the saved cursor: the new events only
        assert await _run("pull_events.py", *pull) == []
        ids = await _event_ids(http, api)
        assert [line.split()[2] for line in first + second] == ids and len(ids) == 10

        last_id = tmp_path / "last-id.txt"
        sse = ("--api", api, "--state", str(last_id), "--from", "2000-01-01T00:00:00Z", "--heartbeat", "1")
        head = await _run("sse_feed.py", *sse, "--count", "7")
        tail = await _run("sse_feed.py", *sse, "--count", "3")  # resumed with Last-Event-ID
        assert [line.split()[2] for line in head + tail] == ids


@asynccontextmanager
async def _receiver(tmp: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """The example receiver as a process: its URL and the lines it printed so far."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "sink_receiver.py"), "--port", str(port), "--seen", str(tmp / "seen.txt"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "WEBHOOK_SECRET": SECRET})
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            lines.append(line.decode().rstrip())

    reader = asyncio.create_task(read())
    try:
        await wait_for(lambda: any(x.startswith("listening on") for x in lines), timeout=20)
        yield f"http://127.0.0.1:{port}/events", lines
    finally:
        proc.kill()
        await proc.wait()
        await reader


async def test_a_sink_to_a_receiver_verifying_signatures_and_dropping_repeats(
        nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path) -> None:
    async with _receiver(tmp_path) as (url, lines):
        sink = {"name": "erp", "url": url, "signing_secret": SECRET, "filter": {"types": ["org.ficus.revenue.charge"]}}
        async with service_factory(_config(nats_server.url, tmp_path, sinks=[sink])) as svc, \
                aiohttp.ClientSession() as http:
            await _send(svc.interfaces["his-charges"].listener.port, range(1, 4))
            ids = await _event_ids(http, svc.api_url)
            await wait_for(lambda: len([x for x in lines if x.startswith("received")]) == len(ids), timeout=30)
            # Each once (in order per business key; keys go in parallel).
            assert sorted(x.split()[2] for x in lines if x.startswith("received")) == sorted(ids)

            # The same event again (Ficus after a lost answer): answered 2xx, not processed twice.
            body = json.dumps({"id": ids[0], "type": "org.ficus.revenue.charge.posted.v1", "data": {}})
            now = datetime.now(UTC)
            signed = {"webhook-id": ids[0], "webhook-timestamp": str(int(now.timestamp())),
                      "webhook-signature": Webhook(SECRET).sign(ids[0], now, body),
                      "Idempotency-Key": ids[0], "Content-Type": "application/cloudevents+json"}
            async with http.post(url, data=body, headers=signed) as resp:
                assert resp.status == 200
            forged = {**signed, "Idempotency-Key": "new-key"}
            async with http.post(url, data=body.replace("{}", '{"amount": "1000000"}'), headers=forged) as resp:
                assert resp.status == 401
            await wait_for(lambda: "refused: bad signature" in lines, timeout=10)
            assert f"repeat {ids[0]} dropped" in lines
            assert len([x for x in lines if x.startswith("received")]) == len(ids)
