"""Flip latency: from `PUT /api/v1/routes/<iface>` to the first message routed the new way.

Starts a simulated legacy engine (legacy.simulated_engine) in this process and `ficus run`
as a child with one hl7-mllp interface in `legacy` mode pointing at it; one sender
connection sends continuously (one message at a time). Each flip is timed from just
before the PUT is sent to the first ACK of a message that did not reach the legacy
engine (legacy -> modern; the engine's received count did not grow during that
message) or did (modern -> legacy). Prints one JSON line.

    python -m bench.flip --flips 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import VENV_BIN, Child, ficus_config, free_port, wait_http
from bench.messages import Feed
from legacy.simulated_engine import SimulatedEngine
from protocols.mllp import FrameReader, frame


async def run(flips: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ficus-bench-flip-"))
    engine = SimulatedEngine()
    await engine.start()
    mllp, api = free_port(), free_port()
    cfg = ficus_config(work, route="legacy", mllp_port=mllp, api_port=api, nats_port=free_port(),
                       legacy_port=engine.port)
    child = Child([str(VENV_BIN / "ficus"), "run", "-c", str(cfg)], log=work / "ficus.log", ready_port=mllp)
    await asyncio.to_thread(child.start)
    await asyncio.to_thread(wait_http, f"http://127.0.0.1:{api}/readyz", 30)
    feed = Feed("adt", int(time.time() * 10))
    # (ack time, whether the message reached the legacy engine)
    log: list[tuple[float, bool]] = []
    stop = asyncio.Event()

    async def sender() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", mllp)
        frames = FrameReader(reader, 1 << 20)
        i = 0
        while not stop.is_set():
            before = len(engine.received)
            writer.write(frame(feed.get(0, i)))
            i += 1
            try:
                await frames.read()
            except asyncio.IncompleteReadError:
                return
            log.append((time.perf_counter(), len(engine.received) > before))
        writer.close()

    task = asyncio.create_task(sender())
    results: dict[str, list[float]] = {"modern": [], "legacy": []}
    put_ms: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(1.0)
            for n in range(flips * 2):
                mode = "modern" if n % 2 == 0 else "legacy"
                want_legacy = mode == "legacy"
                mark = len(log)
                t0 = time.perf_counter()
                async with http.put(f"http://127.0.0.1:{api}/api/v1/routes/bench",
                                    json={"mode": mode, "reason": "bench", "force": True}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"PUT {mode}: {resp.status} {await resp.text()}")
                put_ms.append((time.perf_counter() - t0) * 1000)
                deadline = t0 + 10
                while True:
                    hit = next((t for t, legacy in log[mark:] if legacy == want_legacy and t > t0), None)
                    if hit is not None:
                        results[mode].append((hit - t0) * 1000)
                        break
                    if time.perf_counter() > deadline:
                        results[mode].append(float("inf"))
                        break
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await asyncio.to_thread(child.stop)
        await engine.stop()
        shutil.rmtree(work, ignore_errors=True)
    every = results["modern"] + results["legacy"]
    return {
        "flips": len(every), "messages": len(log),
        "to_modern_ms": [round(x, 2) for x in results["modern"]],
        "to_legacy_ms": [round(x, 2) for x in results["legacy"]],
        "median_ms": round(statistics.median(every), 2), "max_ms": round(max(every), 2),
        "put_median_ms": round(statistics.median(put_ms), 2),
        "legacy_engine_received": len(engine.received),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flips", type=int, default=5, help="flips each way")
    print(json.dumps(asyncio.run(run(parser.parse_args().flips))))


if __name__ == "__main__":
    main()
