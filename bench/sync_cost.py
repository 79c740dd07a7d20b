"""What `sync_interval: always` costs on a three-node NATS cluster with R3 streams.

For each variant (the server default, fsync every 2 minutes; and `sync_interval: always`, fsync
before each acknowledgement), a fresh three-node cluster (tests/nats_cluster.py) and one
`ficus run` on it (`nats.replicas = 3`, one hl7-mllp interface in modern mode); then, from a
separate load process (bench/mllp_load.py):

- fixed rate: DFTs at `--rate` msgs/s over 4 connections, ACK latency p50/p99 (measured from
  the scheduled send time, so a stall is not hidden);
- closed loop: 8 connections, each sending its next message when its ACK came: throughput.

Variants alternate over `--rounds` so a shared machine's drift falls on both. Prints one JSON
line (the machine, each run, and medians per variant).

    python -m bench.sync_cost --rounds 2 --seconds 10 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, Child, free_port, machine, median, run_json, wait_http
from tests.nats_cluster import nats_cluster

VARIANTS = {"default": None, "always": "always"}


def _config(work: Path, nats_url: str, mllp: int, api: int) -> Path:
    path = work / "ficus.toml"
    path.write_text(f"""
state_dir = "{work / 'state'}"
log_level = "WARNING"
[nats]
url = "{nats_url}"
replicas = 3
[api]
listen = "127.0.0.1:{api}"
[[interfaces]]
name = "bench"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp}"
mapping = "hl7v2"
route = "modern"
""")
    return path


async def one(variant: str, seconds: float, rate: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"ficus-bench-sync-{variant}-"))
    try:
        async with nats_cluster(work / "cluster", sync_interval=VARIANTS[variant]) as cluster:
            mllp, api = free_port(), free_port()
            cfg = _config(work, cluster.url, mllp, api)
            child = Child([str(VENV_BIN / "ficus"), "run", "-c", str(cfg)], log=work / "ficus.log", ready_port=mllp)
            await asyncio.to_thread(child.start, 90)
            try:
                await asyncio.to_thread(wait_http, f"http://127.0.0.1:{api}/readyz", 60)
                fixed = await asyncio.to_thread(run_json, [
                    "-m", "bench.mllp_load", str(mllp), "--connections", "4", "--seconds", str(seconds),
                    "--rate", str(rate), "--kind", "dft", "--warmup", "2"], seconds + 60)
                closed = await asyncio.to_thread(run_json, [
                    "-m", "bench.mllp_load", str(mllp), "--connections", "8", "--seconds", str(seconds),
                    "--kind", "dft", "--warmup", "2"], seconds + 60)
            finally:
                await asyncio.to_thread(child.stop)
        return {"variant": variant,
                "fixed_rate": {k: fixed[k] for k in ("rate_target", "messages", "p50_ms", "p99_ms", "max_ms", "codes")},
                "closed_loop": {k: closed[k] for k in ("msgs_per_s", "p50_ms", "p99_ms", "codes")}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def run(rounds: int, seconds: float, rate: float) -> dict[str, Any]:
    info = machine()
    runs = []
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            runs.append(await one(variant, seconds, rate))
    summary = {}
    for variant in VARIANTS:
        mine = [x for x in runs if x["variant"] == variant]
        summary[variant] = {
            "fixed_p50_ms": median([x["fixed_rate"]["p50_ms"] for x in mine]),
            "fixed_p99_ms": median([x["fixed_rate"]["p99_ms"] for x in mine]),
            "closed_msgs_per_s": median([x["closed_loop"]["msgs_per_s"] for x in mine]),
            "closed_p50_ms": median([x["closed_loop"]["p50_ms"] for x in mine]),
            "closed_p99_ms": median([x["closed_loop"]["p99_ms"] for x in mine]),
        }
    return {"bench": "sync_cost", "machine": info, "load_at_end": os.getloadavg(), "rate": rate,
            "seconds": seconds, "runs": runs, "median": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.rounds, args.seconds, args.rate))))


if __name__ == "__main__":
    main()
