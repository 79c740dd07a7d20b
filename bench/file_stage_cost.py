"""CPU of the file pipeline's worker thread against translation alone, on one file (issue 19).

The worker's part of end to end, without NATS: the file's units (router/file_units.py) cut into
chunks by ``FilePipeline._chunk`` -- translated, routed by the stage, event messages and ledger
deltas made -- with the cyclic collector paused as the pipeline pauses it; against
``bench.flat_csv`` / ``bench.x12_835`` ``--mode ficus`` (read, map, serialise, drop). Both in
this process, alternating (alone, worker, then worker, alone...), CPU seconds
(``time.process_time``) per round, medians. The ratio is what the stage adds per record on top
of translating it; the event loop's share (publishing, acks, manifest) comes on top of it.

    python -m bench.file_stage_cost --path export.csv --format csv
    python -m bench.file_stage_cost --path export.835 --format x12-835 --rounds 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import flat_csv, x12_835
from canonical.flat import FlatSpec
from router.file_pipeline import FilePipeline
from router.file_units import file_units
from router.manifest import FileEntry
from router.routes import Route
from router.stage import Stage

REPO = Path(__file__).resolve().parent.parent


def worker(path: Path, fmt: str, mode: str = "modern") -> tuple[float, int]:
    """CPU seconds of the worker's chunks over the whole file, and the events made."""
    flat = None
    if fmt == "csv":
        spec = tomllib.loads((REPO / "fixtures/flat/billing_export.toml").read_text(encoding="utf-8"))
        flat = FlatSpec.model_validate({"layout": spec["layout"], "mapping": spec["mapping"]})
    route = Route(mode=mode)  # type: ignore[arg-type]
    store: Any = SimpleNamespace(cfg=SimpleNamespace(key_index=False, event_index=False))
    routes: Any = SimpleNamespace(get=lambda _name: route)
    stats: Any = SimpleNamespace()
    stage = Stage("billing", store, routes, stats, money_format=fmt)
    pipeline: Any = SimpleNamespace(name="billing", stage=stage)
    entry = FileEntry("billing", path.name, path.stat().st_size, 0.0, "ab" * 32, raw="objectstore://bench/x")
    events = 0
    gc.disable()  # router/offload.py gc_paused, as the pipeline runs a file
    try:
        start = time.process_time()
        with path.open("rb") as fh:
            units = file_units(fh, fmt, flat, stage.context(entry.raw, route), name=path.name,
                               sha256=entry.sha256, reference=None)
            first = 0
            while True:
                chunk = FilePipeline._chunk(pipeline, units, entry, route, first)
                events += len(chunk.out.events)
                first = chunk.next_record
                if chunk.last:
                    break
        return time.process_time() - start, events
    finally:
        gc.enable()
        gc.collect()


def alone(path: Path, fmt: str) -> float:
    start = time.process_time()
    (flat_csv if fmt == "csv" else x12_835).measure(path, "ficus")
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--format", default="csv", choices=["csv", "x12-835"])
    parser.add_argument("--mode", default="modern", choices=["modern", "shadow"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = [os.getloadavg()]
    a: list[float] = []
    w: list[float] = []
    for i in range(args.rounds):
        if i % 2 == 0:
            a.append(alone(args.path, args.format))
            w.append(worker(args.path, args.format, args.mode)[0])
        else:
            w.append(worker(args.path, args.format, args.mode)[0])
            a.append(alone(args.path, args.format))
    load.append(os.getloadavg())
    ma, mw = statistics.median(a), statistics.median(w)
    print(json.dumps({"format": args.format, "mode": args.mode, "alone_cpu_s": round(ma, 2),
                      "worker_cpu_s": round(mw, 2), "worker_over_alone": round(mw / ma, 2),
                      "alone_runs": [round(x, 2) for x in a], "worker_runs": [round(x, 2) for x in w],
                      "loadavg": [[round(x, 2) for x in la] for la in load]}))


if __name__ == "__main__":
    main()
