"""The raw copy of a file at disk speed: one file archived into the raw object store through
the call the file pipeline makes (`Stage.archive_file`: the existence check, then
`Objects.put`), on this benchmark's own nats-server (loopback, file storage, max_payload 8MB).

    python -m bench.raw_archive --mb 256 --json
    python -m bench.raw_archive --path export.835 --runs 5

Each run stores the file under a new name (so none is skipped as already stored) and
returns once JetStream acknowledged every chunk and the meta message. Prints one JSON
object: size in MB (1e6 bytes), the median run's seconds and MB/s, the process's peak
RSS, the chunk size used, and the CPU seconds of this process and of nats-server per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import median, nats_server
from router import names
from router.config import NatsConfig
from router.file_units import sha256_of
from router.routes import RouteTable
from router.stage import Stage
from router.stats import InterfaceStats
from router.store import Store, connect
from router.store.objects import chunk_size

MIB = 1 << 20


def generate(path: Path, mb: int) -> None:
    """`mb` MB (1e6 bytes) of random bytes, written a MiB at a time."""
    left = mb * 1_000_000
    with path.open("wb") as fh:
        while left > 0:
            block = os.urandom(min(MIB, left))
            fh.write(block)
            left -= len(block)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pid() -> int:
    """The nats-server this process started (`bench.common.nats_server` runs it as a child)."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me and "nats-server" in stat.split(")", 1)[0]:
                return int(entry)
    raise RuntimeError("no nats-server child found")


async def measure(path: Path, size: int, sha: str, runs: int, quiet: bool) -> dict[str, Any]:
    cfg = NatsConfig()
    load = [os.getloadavg()]
    with nats_server() as url:
        server = _server_pid()
        nc = await connect(cfg, [url], name="bench-raw-archive")
        store = Store(nc, cfg)
        try:
            await store.ensure()
            objects = await store.object_store(names.OBJ_RAW_FILES)
            stage = Stage("bench", store, RouteTable(store, {"bench": "modern"}), InterfaceStats())
            rows: list[dict[str, float]] = []
            for run in range(runs):
                cpu, server_cpu = time.process_time(), _cpu_seconds(server)
                start = time.perf_counter()
                await stage.archive_file(objects, path, f"{sha}-{run}")
                seconds = time.perf_counter() - start
                rows.append({"seconds": seconds, "mb_per_s": size / 1e6 / seconds,
                             "cpu_s": time.process_time() - cpu, "server_cpu_s": _cpu_seconds(server) - server_cpu})
                if not quiet:
                    print(f"run {run + 1}/{runs}: {size / 1e6:.1f} MB in {seconds:.2f} s, "
                          f"{rows[-1]['mb_per_s']:.1f} MB/s", flush=True)
            chunk = chunk_size(store.max_payload)
        finally:
            await store.close()
    load.append(os.getloadavg())
    mid = sorted(rows, key=lambda r: r["seconds"])[len(rows) // 2]
    return {
        "mb": round(size / 1e6, 1), "seconds": round(mid["seconds"], 3), "mb_per_s": round(mid["mb_per_s"], 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "chunk_bytes": chunk,
        "runs": len(rows), "mb_per_s_all": [round(r["mb_per_s"], 1) for r in rows],
        "cpu_s": round(median([r["cpu_s"] for r in rows]), 3),
        "server_cpu_s": round(median([r["server_cpu_s"] for r in rows]), 3),
        "load": [[round(x, 2) for x in one] for one in load],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="MB (1e6 bytes) of random bytes to generate")
    parser.add_argument("--path", type=Path, help="an existing file to archive instead")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ficus-bench-raw-") as tmp:
        path = args.path
        if path is None:
            path = Path(tmp) / "raw.bin"
            generate(path, args.mb)
        work = measure(path, path.stat().st_size, sha256_of(path), args.runs, args.json)
        try:  # the event loop `ficus run` uses
            import uvloop
        except ImportError:
            result = asyncio.run(work)
        else:
            result = uvloop.run(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
