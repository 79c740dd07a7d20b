"""Consumer API pages (router/events_api.py): time per page as the streams grow, and what the
event index costs the ingest path.

    python -m bench.events_pages [--sizes 10000,100000,1000000] [--page docs/benchmarks.md]

One embedded nats-server and one in-process Service (an MLLP interface in modern, the API on
loopback, no credentials). First the index's cost: DFT messages over one MLLP connection, ACK
latency and rate with the index copies published and with them filtered out of the publish.
Then the streams are filled with synthetic events straight to JetStream (the canonical
subject and the index copy, as the stage stores them) up to each size, and pages of 100 are
timed through the HTTP API: the first page, a page from the middle (a cursor position), and
filtered by type, by a common and a rare interface, and by facility. The section is spliced
into the page (bench/report.py splice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nats

from bench.report import splice
from router import names, simulate
from router.config import parse_config
from router.embedded_nats import EmbeddedNats
from router.service import Service
from router.store import Outgoing, PubAck, Store
from tests.mllp_client import MllpTestClient, msa

PAGE = 100
READING = (
    'A page reads at most `limit` events wherever the cursor stands: the times stay flat from 10,000 to 1'
    ',000,000 events for every filter that matches often. A filter that matches rarely (1 in 10,000 here)'
    ' is the exception: to fill its page the server walks its per-block subject index up to the next matc'
    'hes, so that page costs more as matches get further apart (it is still done in nats-server, never by'
    ' reading the events out). The index copy costs ingest one more message per event in the same pipelin'
    'ed publish.'
)
RARE_EVERY = 10_000
QUERIES: list[tuple[str, dict[str, str]]] = [
    ("first page", {}),
    ("middle (cursor)", {"after": "MIDDLE"}),
    ("type", {"type": "org.ficus.revenue.charge.posted.v1"}),
    ("interface (1 in 10)", {"interface": "feed-3"}),
    ("interface (1 in 10,000)", {"interface": "rare"}),
    ("facility (1 in 5)", {"facility": "F2"}),
]


async def _ingest(port: int, count: int, first: int) -> dict[str, float]:
    lat: list[float] = []
    started = time.perf_counter()
    async with MllpTestClient(port) as client:
        for seq in range(first, first + count):
            t0 = time.perf_counter()
            assert msa(await client.exchange(simulate.dft(seq, lines=3)))[0] == "AA"
            lat.append((time.perf_counter() - t0) * 1000)
    took = time.perf_counter() - started
    lat.sort()
    return {"msgs_per_s": count / took, "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)]}


async def index_cost(port: int, count: int) -> dict[str, dict[str, float]]:
    """ACK latency with and without the index copies (alternating runs, the best of two each)."""
    original = Store.publish

    async def without_index(self: Store, items: Sequence[Outgoing]) -> Any:
        # The stage matches acks to items by position: a stand-in ack where an index copy was.
        acks = iter(await original(self, [i for i in items if not i.subject.startswith("evidx.")]))
        return [PubAck(stream=names.STREAM_EVIDX, seq=0) if i.subject.startswith("evidx.") else next(acks)
                for i in items]

    runs: dict[str, list[dict[str, float]]] = {"with index": [], "without index": []}
    first = 1
    for _ in range(2):
        for variant in runs:
            if variant == "without index":
                Store.publish = without_index  # type: ignore[method-assign]
            try:
                runs[variant].append(await _ingest(port, count, first))
            finally:
                Store.publish = original  # type: ignore[method-assign]
            first += count
    return {k: max(v, key=lambda r: r["msgs_per_s"]) for k, v in runs.items()}


async def fill(url: str, start: int, end: int) -> None:
    """Synthetic charge events `start`..`end`-1 on the canonical stream and in the index."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        batch: list[Any] = []
        for i in range(start, end):
            iface = "rare" if i % RARE_EVERY == RARE_EVERY - 1 else f"feed-{i % 10}"
            facility = f"F{i % 5}"
            body = json.dumps({"specversion": "1.0", "type": "org.ficus.revenue.charge.posted.v1", "id": f"b{i}",
                               "source": "bench", "data": {"n": i, "facility": facility,
                                                           "pad": "x" * 300}}).encode()
            headers = {names.HDR_INTERFACE: iface, names.HDR_MSG_ID: f"b{i}"}
            subject = "canonical.revenue.charge.posted"
            batch.append(await js.publish_async(subject, body, headers=headers))
            batch.append(await js.publish_async(names.evidx_subject("live", iface, facility, subject), body,
                                                headers=headers))
            if len(batch) >= 2000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
    finally:
        await nc.close()


async def page_times(http: aiohttp.ClientSession, api: str, size: int, runs: int = 5) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, query in QUERIES:
        params = {k: str(size // 2) if v == "MIDDLE" else v for k, v in query.items()}
        times = []
        await (await http.get(f"{api}/api/v1/events", params={**params, "limit": str(PAGE)})).read()  # warm-up
        for _ in range(runs):
            t0 = time.perf_counter()
            resp = await http.get(f"{api}/api/v1/events", params={**params, "limit": str(PAGE)})
            body = await resp.json()
            times.append((time.perf_counter() - t0) * 1000)
            assert resp.status == 200, body
            assert body["events"] or (label.startswith("interface (1 in 10,000)") and size < RARE_EVERY)
        out[label] = statistics.median(times)
    return out


async def run(sizes: list[int], ingest_count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ficus-bench-pages-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        await server.start()
        try:
            cfg = parse_config({
                "state_dir": str(Path(tmp) / "state"), "nats": {"url": server.url},
                "api": {"listen": "127.0.0.1:0"},
                "interfaces": [{"name": "his-charges", "kind": "hl7-mllp", "listen": "127.0.0.1:0",
                                "mapping": "hl7v2.dft_p03", "route": "modern"}],
            }, "bench")
            async with Service(cfg) as svc, aiohttp.ClientSession() as http:
                assert svc.api_url is not None
                listener = svc.interfaces["his-charges"].listener
                assert listener is not None
                port = listener.port
                cost = await index_cost(port, ingest_count)
                pages: dict[int, dict[str, float]] = {}
                filled, fill_s = 0, 0.0
                for size in sizes:
                    t0 = time.perf_counter()
                    await fill(server.url, filled, size)
                    fill_s += time.perf_counter() - t0
                    filled = size
                    pages[size] = await page_times(http, svc.api_url, size)
                    print(f"{size:>9,} events: " + ", ".join(f"{k} {v:.1f} ms" for k, v in pages[size].items()),
                          flush=True)
        finally:
            await server.stop()
    return {"ingest": cost, "ingest_count": ingest_count, "pages": pages, "fill_seconds": fill_s}


def section(res: dict[str, Any], sizes_note: str) -> list[str]:
    sizes = sorted(res["pages"])
    out = ["## 8. Event pages (consumer API)", "",
           "`python -m bench.events_pages` (bench/events_pages.py): `GET /api/v1/events?limit=100` through the "
           "HTTP API of an in-process service, median of 5 calls after one untimed, as the canonical stream and "
           f"the event index grow (synthetic charge events published straight to JetStream). {sizes_note}", "",
           "| page | " + " | ".join(f"{s:,} events" for s in sizes) + " |",
           "|---|" + "---|" * len(sizes)]
    for label, _ in QUERIES:
        out.append(f"| {label} | " + " | ".join(f"{res['pages'][s][label]:.1f} ms" for s in sizes) + " |")
    ing = res["ingest"]
    out += ["", READING]
    out += ["", f"What the index costs ingest: {res['ingest_count']:,} DFT messages (3 charges each) over one MLLP "
            "connection, the faster of two alternating runs each; \"without\" filters the index copies out of "
            "the publish (one more message per event in the same pipelined batch).", "",
            "| variant | msgs/s | ACK p50 | ACK p99 |", "|---|---|---|---|"]
    for variant, r in ing.items():
        out.append(f"| {variant} | {r['msgs_per_s']:,.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |")
    return [*out, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--ingest", type=int, default=1000)
    ap.add_argument("--page", type=Path, default=Path("docs/benchmarks.md"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    res = asyncio.run(run(sizes, args.ingest))
    splice(args.page, section(res, args.note))
    print(json.dumps(res["ingest"]))


if __name__ == "__main__":
    main()
