"""MLLP ACK latency while the same process ingests a large 835 (issue 12 item 7).

One Service (uvloop, a nats-server of its own started with EmbeddedNats) with two interfaces
in `modern` mode: `adt` (hl7-mllp, mapping hl7v2) and `remits` (a folder, format x12-835).
A sender in another process sends DFT messages at a fixed rate over one MLLP connection,
waiting for each ACK; latency is measured from each message's *scheduled* send time, so a
stalled loop shows instead of slowing the sender. After a baseline stretch with no file, a
generated 835 (`bench/x12_835.py`: transactions of 1,000 claims) is dropped into the folder;
the ACK latencies of the messages scheduled while it is ingested are reported beside those
of the baseline.

    python -m bench.ack_under_ingest --megabytes 50              # translation off the loop
    python -m bench.ack_under_ingest --megabytes 50 --on-loop    # the old path, for comparison
    python -m bench.ack_under_ingest --megabytes 50 --views      # with the status views on
    python -m bench.ack_under_ingest --sender PORT --rate 200    # (the sender process itself)

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import messages as bench_messages
from bench.common import free_port
from bench.x12_835 import generate

REPO = Path(__file__).resolve().parent.parent
VIEWS_WAIT_SECONDS = 900.0
"""The longest the run waits, after the file, for the views to catch up."""


# -- the sender (its own process) -----------------------------------------------------------

async def send(port: int, rate: float, stop: threading.Event) -> list[tuple[float, float, str]]:
    """(scheduled wall time, ACK latency s, MSA-1) per message until ``stop`` is set."""
    from protocols.mllp import FrameReader, frame

    feed = bench_messages.Feed("dft", int(time.time() * 10))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames = FrameReader(reader, 1 << 20)
    interval = 1.0 / rate
    out: list[tuple[float, float, str]] = []
    next_at = time.perf_counter()
    offset = time.time() - time.perf_counter()  # perf_counter -> wall time, for the windows
    i = 0
    try:
        while not stop.is_set():
            now = time.perf_counter()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            t0 = next_at
            next_at += interval
            writer.write(frame(feed.get(0, i)))
            i += 1
            try:
                reply = await frames.read()
            except asyncio.IncompleteReadError:
                return out
            code = reply.split(b"MSA", 1)[1][1:3].decode()
            out.append((t0 + offset, time.perf_counter() - t0, code))
    finally:
        writer.close()
    return out


def sender_main(port: int, rate: float) -> None:
    """Sends until stdin closes; prints the samples as one JSON line."""
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    try:
        import uvloop

        samples = uvloop.run(send(port, rate, stop))
    except ImportError:
        samples = asyncio.run(send(port, rate, stop))
    print(json.dumps(samples))


# -- the service and the windows ------------------------------------------------------------

def figures(samples: list[tuple[float, float, str]], start: float, end: float) -> dict[str, Any]:
    """Latency percentiles (ms) of the messages scheduled in [start, end)."""
    lat = sorted(s[1] for s in samples if start <= s[0] < end)
    codes: dict[str, int] = {}
    for s in samples:
        if start <= s[0] < end:
            codes[s[2]] = codes.get(s[2], 0) + 1

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    seconds = max(end - start, 1e-9)
    slowest = sorted((s for s in samples if start <= s[0] < end), key=lambda s: -s[1])[:5]
    slow_seconds: dict[int, int] = {}
    for s in samples:
        if start <= s[0] < end and s[1] > 0.05:
            slow_seconds[int(s[0] - start)] = slow_seconds.get(int(s[0] - start), 0) + 1
    return {"slowest_at_s_ms": [[round(s[0] - start, 2), round(s[1] * 1000, 1)] for s in slowest],
            # Where the ACKs over 50 ms fell: [second after the start of the window, how many].
            "over_50ms_at_s": sorted([[t, n] for t, n in slow_seconds.items()], key=lambda x: -x[1])[:12],
            "messages": len(lat), "msgs_per_s": round(len(lat) / seconds, 1), "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "max_ms": pct(1.0), "over_50ms": sum(1 for x in lat if x > 0.05), "codes": codes}


async def views_lag(store: Any) -> int:
    """Live events the views consumer has not yet acknowledged (0 when its views hold them all)."""
    from router import names
    from router.views import VIEWS_CONSUMER

    info = await store._js.consumer_info(names.STREAM_CANONICAL, VIEWS_CONSUMER)
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


async def run(megabytes: int, rate: float, baseline_seconds: float, on_loop: bool,
              with_views: bool = False, fast_ingest: bool = False, translate_process: bool = False,
              ) -> dict[str, Any]:
    from router.config import parse_config
    from router.embedded_nats import EmbeddedNats
    from router.offload import ON_LOOP_ENV, freeze_heap
    from router.service import Service

    if on_loop:
        os.environ[ON_LOOP_ENV] = "1"
    work = Path(tempfile.mkdtemp(prefix="ficus-bench-ack-"))
    nats = EmbeddedNats(work / "nats")
    sender: subprocess.Popen[str] | None = None
    try:
        for d in ("in", "archive", "staging"):
            (work / d).mkdir()
        staged = work / "staging" / "remit.835"
        claims = generate(staged, megabytes, 1000)
        size = staged.stat().st_size
        await nats.start()
        mllp = free_port()
        cfg = parse_config({
            "state_dir": str(work / "state"), "log_level": "WARNING", "api": {"listen": "127.0.0.1:0"},
            "nats": {"url": nats.url, "fast_ingest": fast_ingest}, "views": {"enabled": with_views},
            "interfaces": [
                {"name": "adt", "kind": "hl7-mllp", "listen": f"127.0.0.1:{mllp}", "mapping": "hl7v2",
                 "route": "modern"},
                {"name": "remits", "kind": "folder", "path": str(work / "in"), "patterns": ["*.835"],
                 "poll_seconds": 0.2, "complete": "rename", "format": "x12-835", "after": "archive",
                 "archive_dir": str(work / "archive"), "route": "modern", "translate_process": translate_process},
            ],
        }, "bench")
        async with Service(cfg) as svc:
            freeze_heap()  # as `ficus run` does after start-up
            stats = svc.interfaces["remits"].stats
            sender = subprocess.Popen([sys.executable, "-m", "bench.ack_under_ingest", "--sender", str(mllp),  # noqa: ASYNC220 - a fork, not a wait
                                       "--rate", str(rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            await asyncio.sleep(1.0)  # connect and warm up; not counted
            base_start = time.time()
            await asyncio.sleep(baseline_seconds)
            ingest_start = time.time()
            staged.rename(work / "in" / "remit.835")
            while stats.acked < 1:  # noqa: ASYNC110 - polling a counter the pipeline bumps
                await asyncio.sleep(0.05)
            ingest_end = time.time()
            views_behind = await views_lag(svc.store) if with_views else None
            views_end = ingest_end
            views_left = None
            if with_views:  # the sender goes on while the views catch up: those ACKs count too
                while await views_lag(svc.store) and time.time() - ingest_end < VIEWS_WAIT_SECONDS:  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
                views_end = time.time()
                views_left = await views_lag(svc.store)
            await asyncio.sleep(1.0)
            out, _ = await asyncio.to_thread(sender.communicate, "", 60)  # the service keeps answering
            sender = None
            published = stats.published
            dead = stats.dead_lettered
        samples = [tuple(s) for s in json.loads(out)]
        return {
            "translation": "on the loop" if on_loop else "off the loop", "views": with_views,
            "fast_ingest": fast_ingest, "translate_process": translate_process,
            "views_pending_at_file_end": views_behind,
            "views_caught_up_s_after_file": round(views_end - ingest_end, 1) if with_views else None,
            "views_pending_at_end": views_left,  # not 0: the views had not caught up in VIEWS_WAIT_SECONDS
            "megabytes": round(size / 1e6, 1),
            "claims": claims, "events": published, "dead_letters": dead, "rate": rate,
            "ingest_seconds": round(ingest_end - ingest_start, 1),
            "ingest_mb_per_s": round(size / 1e6 / (ingest_end - ingest_start), 2),
            "baseline": figures(samples, base_start, ingest_start),
            "during_ingest": figures(samples, ingest_start, ingest_end),
            # From the file done to the views holding every event (the consumer still busy).
            "views_catching_up": figures(samples, ingest_end, views_end) if with_views else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    finally:
        if sender is not None:
            sender.kill()
            sender.wait()
        await nats.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=int, default=50, help="size of the 835 (MB)")
    parser.add_argument("--rate", type=float, default=200.0, help="DFT messages per second, one connection")
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="sending with no file first")
    parser.add_argument("--on-loop", action="store_true", help="translate on the event loop (the old path)")
    parser.add_argument("--views", action="store_true", help="with the status views on ([views] enabled)")
    parser.add_argument("--fast-ingest", choices=("on", "off"), default="off", help="nats.fast_ingest")
    parser.add_argument("--translate-process", choices=("on", "off"), default="off",
                        help="the folder interface's translate_process (its chunks cut in a child process)")
    parser.add_argument("--sender", type=int, metavar="PORT", help="be the sender process (internal)")
    args = parser.parse_args()
    if args.sender:
        sender_main(args.sender, args.rate)
        return
    coro = run(args.megabytes, args.rate, args.baseline_seconds, args.on_loop, args.views,
               args.fast_ingest == "on", args.translate_process == "on")
    try:  # the event loop `ficus run` uses
        import uvloop
    except ImportError:
        print(json.dumps(asyncio.run(coro)))
        return
    print(json.dumps(uvloop.run(coro)))


if __name__ == "__main__":
    main()
