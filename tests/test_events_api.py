"""The consumer API on a real service: filters, cursor pages, the SSE feed (resume, slow client)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest

from router import events_api, names, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.mllp_client import MllpTestClient, msa

pytestmark = pytest.mark.integration
CHARGE = "org.ficus.revenue.charge.posted.v1"


def _ifaces() -> list[dict[str, Any]]:
    return [{"name": n, "mapping": "hl7v2.dft_p03", "route": "modern"} for n in ("his-charges", "lab-charges")]


async def _send(port: int, seqs: range, facility: str = "NORTH", lines: int = 2) -> None:
    async with MllpTestClient(port) as client:
        for seq in seqs:
            assert msa(await client.exchange(simulate.dft(seq, lines=lines, facility=facility)))[0] == "AA"


async def _all(http: aiohttp.ClientSession, api: str, limit: int, **query: str) -> tuple[list[dict[str, Any]], int]:
    """Every event of a listing, page by page with the cursor; and the number of pages."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {**query, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        resp = await http.get(f"{api}/api/v1/events", params=params)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        pages += 1
        assert len(body["events"]) <= limit
        out += body["events"]
        cursor = body["cursor"]
        if not body["more"]:
            return out, pages
        assert pages < 1000


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [e["event"]["id"] for e in items]


async def test_filters_and_cursor_pages(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, _ifaces(), nats={"event_index": True})
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url
        his = svc.interfaces["his-charges"].listener.port
        lab = svc.interfaces["lab-charges"].listener.port
        await _send(his, range(1, 6), "NORTH")
        await _send(lab, range(6, 9), "SOUTH")
        middle = datetime.now(UTC)
        await asyncio.sleep(0.01)  # stored times are per nanosecond; a clear boundary
        await _send(his, range(9, 11), "SOUTH")

        everything, _ = await _all(http, api, 1000)
        assert len(everything) == 10 * 2 and len(set(_ids(everything))) == 20
        assert all(e["event"]["type"] == CHARGE for e in everything)
        seqs = [e["seq"] for e in everything]
        assert seqs == sorted(seqs)

        # Paging with a cursor: every event once, in order, however small the page.
        for limit in (1, 3, 7):
            paged, pages = await _all(http, api, limit)
            assert _ids(paged) == _ids(everything)
            assert pages >= len(everything) // limit

        # Type: whole, prefix, and one that matches nothing.
        assert _ids((await _all(http, api, 4, type=CHARGE))[0]) == _ids(everything)
        assert _ids((await _all(http, api, 4, type="org.ficus.revenue"))[0]) == _ids(everything)
        assert (await _all(http, api, 4, type="org.ficus.patient"))[0] == []
        assert (await _all(http, api, 4, type="org.ficus.revenue.charge.posted.v9"))[0] == []

        # Interface and facility: from the index stream, same events, same order.
        def source(iface: str | None, facility: str | None) -> list[str]:
            want = set()
            for seq in range(1, 11):
                f = "NORTH" if seq <= 5 else "SOUTH"
                i = "lab-charges" if 6 <= seq <= 8 else "his-charges"
                if (iface is None or iface == i) and (facility is None or facility == f):
                    want.add(f"DFT{seq:08d}")
            return [e["event"]["id"] for e in everything
                    if e["event"]["data"]["control_id"] in want] if want else []

        lab_only, _ = await _all(http, api, 2, interface="lab-charges")
        assert _ids(lab_only) == source("lab-charges", None) and len(lab_only) == 6
        south, _ = await _all(http, api, 2, facility="SOUTH")
        assert _ids(south) == source(None, "SOUTH") and len(south) == 10
        his_south, _ = await _all(http, api, 3, interface="his-charges", facility="SOUTH")
        assert _ids(his_south) == source("his-charges", "SOUTH") and len(his_south) == 4
        assert (await _all(http, api, 3, facility="EAST"))[0] == []
        body = await (await http.get(f"{api}/api/v1/events", params={"interface": "lab-charges"})).json()
        assert body["stream"] == names.STREAM_EVIDX

        # Time range: stored after `middle`; and up to it.
        later, _ = await _all(http, api, 3, **{"from": middle.isoformat()})
        assert _ids(later) == source("his-charges", "SOUTH")
        earlier, _ = await _all(http, api, 3, to=middle.isoformat())
        assert _ids(earlier) == _ids(everything)[:16]

        # Shadow: nothing was in shadow.
        assert (await _all(http, api, 5, mode="shadow"))[0] == []

        # A cursor belongs to its filters: with others (or none of ours) it is a 400.
        first = await (await http.get(f"{api}/api/v1/events", params={"limit": "2", "interface": "his-charges"})).json()
        for other in ({"interface": "lab-charges"}, {}, {"interface": "his-charges", "type": CHARGE},
                      {"interface": "his-charges", "mode": "shadow"}):
            resp = await http.get(f"{api}/api/v1/events", params={**other, "cursor": first["cursor"]})
            assert resp.status == 400, other
            assert "other filters" in (await resp.json())["error"]
        for bad in ("x", "eyJ9", "e30"):
            resp = await http.get(f"{api}/api/v1/events", params={"cursor": bad})
            assert resp.status == 400
        for query in ({"type": "org.ficus.*"}, {"type": "org.ficus.a b"}, {"interface": "A B"},
                      {"from": "yesterday"}, {"mode": "both"}, {"facility": "x" * 65}):
            assert (await http.get(f"{api}/api/v1/events", params=query)).status == 400, query
            resp = await http.get(f"{api}/api/v1/events/stream", params=query)
            assert resp.status == 400 and "error" in await resp.json(), query
        for query in ({"heartbeat": "0"}, {"heartbeat": "x"}, {"heartbeat": "61"}, {"cursor": "x"}):
            assert (await http.get(f"{api}/api/v1/events/stream", params=query)).status == 400, query


class Sse:
    """A minimal SSE reader over aiohttp: (id, data) per event, comments counted."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments = 0

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        ident, data = "", []
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.resp.content.readline()).decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    return ident, json.loads("\n".join(data))


async def test_sse_resumes_with_last_event_id(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, _ifaces(), nats={"event_index": True})
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url
        his = svc.interfaces["his-charges"].listener.port
        lab = svc.interfaces["lab-charges"].listener.port
        await _send(his, range(1, 4))
        query = {"interface": "his-charges", "from": "2000-01-01T00:00:00Z", "heartbeat": "1"}
        got: list[str] = []
        async with http.get(f"{api}/api/v1/events/stream", params=query) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            sse = Sse(resp)
            for _ in range(4):
                last_id, item = await sse.next()
                got.append(item["event"]["id"])
            # A heartbeat comes while nothing happens.
            sends = asyncio.create_task(_send(his, range(4, 6)))
            while len(got) < 8:
                last_id, item = await sse.next()
                got.append(item["event"]["id"])
            await sends
        # The feed ends with its client (seen by the next heartbeat): audited once, started and ended.

        async def stream_records() -> list[dict[str, Any]]:
            body = await (await http.get(f"{api}/api/v1/audit", params={"action": "events_stream"})).json()
            return list(body["records"])

        async def ended() -> bool:
            return [r["result"] for r in await stream_records()] == ["started", "ok"]

        # Seen at the server's next heartbeat write; on a loaded machine that can take a while.
        await wait_for(ended, timeout=30)
        (started, _) = await stream_records()
        assert started["target"]["stream"] == names.STREAM_EVIDX and started["interface"] == "his-charges"
        # Disconnected; more events meanwhile, on both interfaces.
        await _send(his, range(6, 9))
        await _send(lab, range(9, 11))
        async with http.get(f"{api}/api/v1/events/stream", params=query,
                            headers={"Last-Event-ID": last_id}) as resp:
            sse = Sse(resp)
            while len(got) < 16:
                _, item = await sse.next()
                got.append(item["event"]["id"])
            started = time.monotonic()
            while sse.comments == 0:  # heartbeats while idle
                with pytest.raises(TimeoutError):
                    await sse.next(timeout=1.5)
                assert time.monotonic() - started < 10
        everything, _ = await _all(http, api, 100, interface="his-charges")
        assert got == _ids(everything) and len(got) == len(set(got)) == 16

        # A Last-Event-ID made with other filters is refused.
        resp = await http.get(f"{api}/api/v1/events/stream", headers={"Last-Event-ID": last_id})
        assert resp.status == 400


async def test_a_client_that_stops_reading_is_dropped_and_ingest_goes_on(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_api, "QUEUE_MAX", 20)
    cfg = make_config(nats_server.url, _ifaces(), nats={"event_index": True})
    async with service_factory(cfg) as svc:
        url = urlsplit(svc.api_url)
        his = svc.interfaces["his-charges"].listener.port
        before = events_api.SSE_DROPPED._value.get()
        # A client with a tiny receive buffer that never reads after its request.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
        path = "/api/v1/events/stream?" + urlencode({"heartbeat": "60"})
        await asyncio.get_running_loop().sock_sendall(
            sock, f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        try:
            await asyncio.sleep(0.2)  # the feed subscribes (new events only) before the traffic
            started = time.monotonic()
            # 10,000 events, ~13 MB of feed: more than the kernel buffers of the stalled connection hold.
            await _send(his, range(1, 401), lines=25)  # every ACK an AA
            took = time.monotonic() - started
            await wait_for(lambda: events_api.SSE_DROPPED._value.get() > before, timeout=20)
        finally:
            sock.close()
        assert took < 60, f"400 messages took {took:.1f}s while a client stalled"
        async with aiohttp.ClientSession() as http:
            metrics = await (await http.get(f"{svc.api_url}/metrics")).text()
        assert "ficus_sse_dropped_total" in metrics
