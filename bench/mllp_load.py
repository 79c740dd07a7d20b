"""A load generator for MLLP: N connections, each sending one message at a time and waiting
for its ACK (as real senders do). Run as a separate process so it does not share the
service's core: `python -m bench.mllp_load PORT --connections 8 --seconds 10`."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from router import simulate
from wrappers.mllp_framing import FrameDecoder, frame


async def _connection(port: int, messages: list[bytes], stop_at: float, latencies: list[float],
                      codes: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = FrameDecoder(1 << 20)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            payload = messages[i % len(messages)]
            i += 1
            t0 = time.perf_counter()
            writer.write(frame(payload))
            replies: list[bytes] = []
            while not replies:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                replies = [r for r in decoder.feed(chunk) if isinstance(r, bytes)]
            latencies.append(time.perf_counter() - t0)
            code = replies[0].split(b"MSA", 1)[1][1:3].decode()
            codes[code] = codes.get(code, 0) + 1
    finally:
        writer.close()


async def run(port: int, connections: int, seconds: float, kind: str, unique: bool) -> dict[str, object]:
    """Sends for `seconds`; returns throughput and ACK latency percentiles."""
    base = 1_000_000 * int(time.time() % 1000)
    count = 200_000 if unique else 500
    make = simulate.dft if kind == "dft" else simulate.adt
    messages = [make(base + i) for i in range(count)]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(
        _connection(port, messages[c::connections], stop_at, latencies, codes) for c in range(connections)
    ))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3) if latencies else 0.0

    return {"messages": len(latencies), "seconds": round(elapsed, 2),
            "msgs_per_s": round(len(latencies) / elapsed), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "p999_ms": pct(0.999), "codes": codes, "bytes_per_msg": len(messages[0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--kind", choices=["dft", "adt"], default="dft")
    parser.add_argument("--unique", action="store_true", help="never repeat a message (no dedupe hits)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.port, args.connections, args.seconds, args.kind, args.unique))))


if __name__ == "__main__":
    main()
