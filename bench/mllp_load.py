"""A load generator for MLLP: N connections, each sending one message at a time and waiting
for its ACK (as real senders do). Run as a separate process so it does not share the
service's core:

    python -m bench.mllp_load PORT --connections 8 --seconds 10 --kind dft
    python -m bench.mllp_load PORT --rate 5000 --seconds 10            # fixed rate (all connections)
    python -m bench.mllp_load PORT --backlog nats://127.0.0.1:4222     # sample FICUS_CANONICAL each second

Closed loop by default (as fast as the ACKs come back). With `--rate`, each connection
sends on a fixed schedule (rate / connections per second); latency is measured from the
*scheduled* send time, so a stalled server is not hidden by the sender slowing down
(no coordinated omission). The first `--warmup` seconds are not counted. With
`--backlog`, the canonical stream's message count is sampled every second beside the
number of positive ACKs times the events per message: acknowledged work that is not
yet stored as events would show as a growing backlog. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench import messages as bench_messages
from protocols.mllp import FrameDecoder, frame


class Counters:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.codes: dict[str, int] = {}
        self.positive = 0
        self.sent = 0


async def _connection(port: int, feed: bench_messages.Feed, conn: int, start: float, warm_at: float, stop_at: float,
                      interval: float | None, offset: float, c: Counters) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = FrameDecoder(1 << 20)
    i = 0
    next_at = start + offset
    try:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            if interval is not None:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                t0 = next_at
                next_at += interval
            else:
                t0 = now
            writer.write(frame(feed.get(conn, i)))
            i += 1
            c.sent += 1
            replies: list[bytes] = []
            while not replies:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                replies = [r for r in decoder.feed(chunk) if isinstance(r, bytes)]
            done = time.perf_counter()
            code = replies[0].split(b"MSA", 1)[1][1:3].decode()
            if code in ("AA", "CA"):
                c.positive += 1
            if done >= warm_at:
                c.latencies.append(done - t0)
                c.codes[code] = c.codes.get(code, 0) + 1
    finally:
        writer.close()


async def _sample_backlog(url: str, stream: str, events_per_msg: int, c: Counters, stop_at: float,
                          samples: list[dict[str, float]]) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        base = (await js.stream_info(stream)).state.messages
        start = time.perf_counter()
        while time.perf_counter() < stop_at:
            await asyncio.sleep(1.0)
            acked = c.positive
            stored = (await js.stream_info(stream)).state.messages - base
            samples.append({"t": round(time.perf_counter() - start, 2), "acked_msgs": acked,
                            "expected_events": acked * events_per_msg, "stream_events": stored,
                            "backlog_events": acked * events_per_msg - stored})
    finally:
        await nc.close()


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return round(sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))] * 1000, 3)


async def run(port: int, connections: int, seconds: float, kind: str, *, rate: float | None = None,
              warmup: float = 1.0, backlog_url: str | None = None, stream: str = "FICUS_CANONICAL",
              tag: int | None = None) -> dict[str, Any]:
    """Sends for `warmup + seconds`; returns throughput and ACK latency percentiles."""
    feed = bench_messages.Feed(kind, tag if tag is not None else int(time.time() * 10))
    c = Counters()
    start = time.perf_counter() + 0.05
    warm_at = start + warmup
    stop_at = warm_at + seconds
    interval = connections / rate if rate else None
    tasks = [_connection(port, feed, k, start, warm_at, stop_at, interval,
                         (interval or 0) * k / connections, c) for k in range(connections)]
    samples: list[dict[str, float]] = []
    if backlog_url:
        tasks.append(_sample_backlog(backlog_url, stream, bench_messages.EVENTS_PER_MESSAGE[kind], c, stop_at,
                                     samples))
    await asyncio.gather(*tasks)
    measured = time.perf_counter() - warm_at
    lat = sorted(c.latencies)
    out: dict[str, Any] = {
        "kind": kind, "connections": connections, "rate_target": rate, "messages": len(lat),
        "seconds": round(measured, 2), "msgs_per_s": round(len(lat) / measured),
        "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99), "p999_ms": percentile(lat, 0.999),
        "max_ms": percentile(lat, 1.0), "codes": c.codes, "bytes_per_msg": len(feed.get(0, 0)),
    }
    if backlog_url:
        out["backlog_samples"] = samples
        if samples:
            half = len(samples) // 2 or 1
            first = max(s["backlog_events"] for s in samples[:half])
            last = max(s["backlog_events"] for s in samples[half:]) if samples[half:] else first
            out["backlog_max_first_half"] = first
            out["backlog_max_second_half"] = last
            out["backlog_growing"] = last > max(first, 0) + 100
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--kind", choices=sorted(bench_messages.MAKERS), default="dft")
    parser.add_argument("--rate", type=float, help="fixed total rate (msgs/s over all connections)")
    parser.add_argument("--backlog", metavar="NATS_URL", help="sample the canonical stream's count each second")
    parser.add_argument("--stream", default="FICUS_CANONICAL")
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.port, args.connections, args.seconds, args.kind, rate=args.rate, warmup=args.warmup,
                        backlog_url=args.backlog, stream=args.stream))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
