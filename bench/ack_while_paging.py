"""MLLP ACK latency while consumers read event pages (issue 14: "MLLP ACK p99 unaffected while
pages are read").

One in-process Service (uvloop, its own nats-server) with one MLLP interface in `modern` mode
and the API on loopback. The canonical stream is filled first with synthetic events
(bench/events_pages.py `fill`), so pages come from a large stream. A sender in another
process (bench/ack_under_ingest.py `--sender`) sends DFT messages at a fixed rate over one
connection, each latency measured from its scheduled send time. Three windows: no reader;
`--readers` clients in a process of their own, each a named API client (viewer with content
access), walking the stream with cursors (`GET /api/v1/events?limit=100`, each from its own
start, half of them with a type filter) at `--pages-per-second` each (10: the steady state of
the default `api.rate_limit_per_minute`), or with `--greedy` without credentials and as fast as
the API answers; no reader again. Prints one JSON line and splices section 9 into
docs/benchmarks.md (`--page`).

    python -m bench.ack_while_paging [--events 200000] [--readers 4] [--seconds 20] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from bench.ack_under_ingest import figures
from bench.common import free_port
from bench.events_pages import fill
from bench.report import splice

REPO = Path(__file__).resolve().parent.parent
PAGE = 100


async def reader(http: aiohttp.ClientSession, api: str, start: int, typed: bool, stop: asyncio.Event,
                 counts: dict[str, Any], token: str | None, pace: float, phase: float = 0.0) -> None:
    """Pages through the stream from `start` with the cursor until `stop`; wraps to the start at the
    end. With a token, as a named client: a 429 is waited out (its Retry-After)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    filters = {"type": "org.ficus.revenue"} if typed else {}
    params: dict[str, str] = {"limit": str(PAGE), "after": str(start), **filters}
    next_at = time.perf_counter() + phase  # independent clients: not all on the same beat
    while not stop.is_set():
        if pace > 0:  # a client keeping to its rate limit's steady pace
            next_at += 1.0 / pace
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.perf_counter()))
            if stop.is_set():
                break
        resp = await http.get(f"{api}/api/v1/events", params=params, headers=headers)
        body = await resp.json()
        if resp.status == 429:
            counts["limited"] += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), float(resp.headers.get("Retry-After", "1")))
            continue
        if resp.status != 200:
            raise RuntimeError(f"page answered {resp.status}: {body}")
        counts["pages"] += 1
        counts["events"] += len(body["events"])
        if body["more"]:  # a cursor goes with the filters it was made with
            params = {"limit": str(PAGE), "cursor": body["cursor"], **filters}
        else:
            params = {"limit": str(PAGE), "after": "0", **filters}


async def readers_main(api: str, readers: int, events: int, seconds: float, tokens: list[str],
                       pace: float) -> dict[str, Any]:
    """The readers' own process (so their client work is not on the service's loop)."""
    stop = asyncio.Event()
    counts: dict[str, Any] = {"pages": 0, "events": 0, "limited": 0, "started": time.time()}
    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.create_task(reader(http, api, 1 + i * events // max(readers, 1), i % 2 == 1, stop, counts,
                                            tokens[i] if tokens else None, pace, _phase(i, readers, pace)))
                 for i in range(readers)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    counts["ended"] = time.time()
    return counts


async def api_instance(work: Path, nats_url: str, api: dict[str, Any]) -> tuple[asyncio.subprocess.Process, str]:
    """A second Ficus (`ficus run`, its own process) with no interface: it serves the API only."""
    port = free_port()
    conf = work / "api-only.toml"
    conf.write_text(tomli_w.dumps({"state_dir": str(work / "state-api"), "log_level": "WARNING",
                               "nats": {"url": nats_url}, "api": {**api, "listen": f"127.0.0.1:{port}"}}))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "router.cli", "run", "-c", str(conf), cwd=REPO,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                if (await http.get(f"{url}/readyz")).status == 200:
                    return proc, url
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API-only instance did not get ready in 60 s")


def _phase(i: int, readers: int, pace: float) -> float:
    """Reader i's offset within the beat: paced readers spread evenly, as independent clients are."""
    return i / (readers * pace) if pace > 0 else 0.0


async def store_pages(store: Any, readers: int, events: int, seconds: float, pace: float) -> dict[str, Any]:
    """`readers` loops reading pages of 100 straight from the store at `pace` each (Store.page)."""
    from router import names

    counts: dict[str, Any] = {"pages": 0, "events": 0, "limited": 0, "started": time.time()}
    deadline = time.perf_counter() + seconds

    async def one(start: int, phase: float) -> None:
        seq, next_at = start, time.perf_counter() + phase
        while time.perf_counter() < deadline:
            msgs = await store.page(names.STREAM_CANONICAL, "canonical.>", start_seq=seq, limit=PAGE)
            counts["pages"] += 1
            counts["events"] += len(msgs)
            seq = msgs[-1].seq + 1 if msgs and msgs[-1].pending else 1
            next_at += 1.0 / pace
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    await asyncio.gather(*(one(1 + i * events // max(readers, 1), _phase(i, readers, pace)) for i in range(readers)))
    counts["ended"] = time.time()
    return counts


async def run(events: int, readers: int, seconds: float, rate: float, greedy: bool, pace: float,
              separate: bool = False, store_only: bool = False) -> dict[str, Any]:
    from router.config import parse_config
    from router.embedded_nats import EmbeddedNats
    from router.offload import freeze_heap
    from router.service import Service

    work = Path(tempfile.mkdtemp(prefix="ficus-bench-paging-"))
    nats = EmbeddedNats(work / "nats")
    sender: subprocess.Popen[str] | None = None
    second: asyncio.subprocess.Process | None = None
    try:
        await nats.start()
        mllp = free_port()
        tokens = [] if greedy else [secrets.token_urlsafe(32) for _ in range(readers)]
        api: dict[str, Any] = {"listen": "127.0.0.1:0"}
        if tokens:  # each reader a named client (an ERP's): the default rate limit applies
            api["clients"] = [{"name": f"reader-{i}", "role": "viewer", "content": True,
                               "token_sha256": hashlib.sha256(t.encode()).hexdigest()} for i, t in enumerate(tokens)]
        cfg = parse_config({
            "state_dir": str(work / "state"), "log_level": "WARNING", "api": api,
            "nats": {"url": nats.url},
            "interfaces": [{"name": "his-charges", "kind": "hl7-mllp", "listen": f"127.0.0.1:{mllp}",
                            "mapping": "hl7v2", "route": "modern"}],
        }, "bench")
        async with Service(cfg) as svc:
            t0 = time.perf_counter()
            await fill(nats.url, 0, events)  # the service made the streams
            fill_s = time.perf_counter() - t0
            freeze_heap()  # as `ficus run` does after start-up
            assert svc.api_url is not None
            sender = subprocess.Popen([sys.executable, "-m", "bench.ack_under_ingest", "--sender", str(mllp),  # noqa: ASYNC220 - a fork, not a wait
                                       "--rate", str(rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            target = svc.api_url
            if separate:
                second, target = await api_instance(work, nats.url, api)
            await asyncio.sleep(1.0)  # connect and warm up; not counted
            before = time.time()
            await asyncio.sleep(seconds)
            spawned = time.time()
            if store_only:  # the pages read from the store in the service's process: no HTTP, no JSON
                counts = await store_pages(svc.store, readers, events, seconds, pace)
            else:
                pager = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.ack_while_paging", "--readers-of", target, "--readers",
                    str(readers), "--events", str(events), "--seconds", str(seconds), "--pages-per-second",
                    str(pace), *(["--greedy"] if greedy else []), stdout=subprocess.PIPE,
                    cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "BENCH_READER_TOKENS": ",".join(tokens)})
                read, _ = await pager.communicate()
                counts = json.loads(read)
            # The readers' own window (their process's start-up is in no window).
            paging, after = counts["started"], counts["ended"]
            await asyncio.sleep(seconds)
            end = time.time()
            if second is not None:
                second.terminate()
                await second.wait()
                second = None
            out, _ = await asyncio.to_thread(sender.communicate, "", 60)
            sender = None
        samples = [tuple(s) for s in json.loads(out)]
        return {
            "events_in_stream": events, "fill_seconds": round(fill_s, 1), "readers": readers, "rate": rate,
            "greedy": greedy, "pages_per_second_per_reader": None if greedy else pace, "separate": separate,
            "store_only": store_only,
            "pages_refused_429": counts["limited"], "pages": counts["pages"],
            "pages_per_s": round(counts["pages"] / (after - paging), 1),
            "events_read_per_s": round(counts["events"] / (after - paging)),
            "before": figures(samples, before, spawned),
            "while_paging": figures(samples, paging, after),
            "after": figures(samples, after, end),
        }
    finally:
        if sender is not None:
            sender.kill()
        if second is not None:
            second.kill()
            await second.wait()
        await nats.stop()


def section(runs: list[dict[str, Any]], note: str) -> list[str]:
    first = runs[0]
    out = ["## 9. MLLP ACK latency while event pages are read", "",
           "`python -m bench.ack_while_paging` (bench/ack_while_paging.py): one in-process service (MLLP interface "
           f"in modern, the API on loopback), {first['events_in_stream']:,} events in the canonical stream. A sender "
           f"process sends DFT messages at {first['rate']:.0f} msgs/s over one connection (latency from each "
           "message's scheduled send time) through three windows: no reader, readers (a process of their own) "
           "walking the stream with cursors (`limit=100`, half with a type filter), no reader again. Paced: each "
           "reader a named client (viewer with content access, every page audited) at the steady pace of the "
           "default `api.rate_limit_per_minute` (or slower); greedy: no credentials (no rate limit), as fast as "
           "the API answers; from the store in-process: the same pages read by Store.page inside the service's "
           "process, without HTTP or JSON; from an API-only instance: the readers call a second Ficus "
           f"(`ficus run`, no interfaces). {note}", "",
           "| readers | pages/s | events/s read | window | ACKs | ACK p50 | ACK p99 | max | ACKs over 50 ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    for res in runs:
        who = (f"{res['readers']} greedy" if res["greedy"] else
               f"{res['readers']} at {res['pages_per_second_per_reader']:g} pages/s")
        if res.get("separate"):
            who += ", from an API-only instance"
        if res.get("store_only"):
            who += ", read from the store in-process (no HTTP)"
        for label, f in (("before", res["before"]), ("paging", res["while_paging"]), ("after", res["after"])):
            rate = (f"{res['pages_per_s']:,}", f"{res['events_read_per_s']:,}") if label == "paging" else ("", "")
            out.append(f"| {who} | {rate[0]} | {rate[1]} | {label} | {f['messages']:,} | {f['p50_ms']:.2f} ms | "
                       f"{f['p99_ms']:.2f} ms | {f['max_ms']:.1f} ms | {f['over_50ms']} |")
    out += ["", "A page is read by batched direct gets (nats-server positions them; router/store/pages.py), two "
            "at a time per instance. Readers and listeners share the process's event loop and the machine's "
            "cores (readers, nats-server, the sender and Ficus on two here): the per-client rate limit bounds "
            "a reader's share; an API open without credentials has none.", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--page", type=Path, default=Path("docs/benchmarks.md"))
    ap.add_argument("--note", default="")
    ap.add_argument("--pages-per-second", type=float, default=10.0,
                    help="each reader's pace (10: the steady state of the default api.rate_limit_per_minute)")
    ap.add_argument("--greedy", action="store_true",
                    help="readers without credentials (no rate limit): as fast as the API answers")
    ap.add_argument("--one", action="store_true", help="one run (paced, or --greedy, or --separate), not all three")
    ap.add_argument("--separate", action="store_true",
                    help="the readers read from a second Ficus process with no interface (the API only)")
    ap.add_argument("--readers-of", metavar="API", help="be the readers' process (internal)")
    args = ap.parse_args()
    if args.readers_of:
        tokens = [t for t in os.environ.get("BENCH_READER_TOKENS", "").split(",") if t]
        pace = 0.0 if args.greedy else args.pages_per_second
        print(json.dumps(asyncio.run(readers_main(args.readers_of, args.readers, args.events, args.seconds, tokens,
                                                  pace))))
        return
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runs = []
    variants = ([(args.greedy, args.separate, args.pages_per_second, False)] if args.one else
                [(False, False, 2.0, True), (False, False, 2.0, False), (False, False, 10.0, False),
                 (True, False, 0.0, False), (False, True, 10.0, False)])
    for greedy, separate, pace, store_only in variants:
        res = runner(run(args.events, args.readers, args.seconds, args.rate, greedy, pace, separate, store_only))
        print(json.dumps(res), flush=True)
        runs.append(res)
    splice(args.page, section(runs, args.note))


if __name__ == "__main__":
    main()
