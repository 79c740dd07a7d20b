"""End-to-end file interface benchmark: a generated CSV billing export dropped into a folder
interface in `modern` mode, through the whole pipeline (hash, raw object store, records,
events published and acknowledged, manifest), on an embedded nats-server.

    python -m bench.file_pipeline --size 100
    python -m bench.file_pipeline --path export.835 --format x12-835 --fast-ingest off
    python -m bench.file_pipeline --path export.csv --translate-process on
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import tempfile
import time
import tomllib
from pathlib import Path

from router.config import parse_config
from router.service import Service

REPO = Path(__file__).resolve().parent.parent
HEADER = "TXN_ID,TXN_TYPE,SERVICE_DATE,POST_DATE,ACCOUNT,ENCOUNTER,CHARGE_CODE,CPT,QTY,AMOUNT,DEPT,FACILITY\n"


def generate(path: Path, megabytes: int) -> int:
    """Writes about `megabytes` MB of billing export; returns the record count."""
    target = megabytes * 1024 * 1024
    count = 0
    with path.open("w", newline="") as fh:
        fh.write(HEADER)
        size = len(HEADER)
        while size < target:
            line = (f"T-{count:09d},CG,01/05/2024,01/06/2024,ACC-{count % 9973},ENC-{count % 49999},99213,99213,"
                    f"{count % 3 + 1},{(count % 900) + 10}.25,CLINIC,NORTH\n")
            fh.write(line)
            size += len(line)
            count += 1
    return count


async def run(megabytes: int, source: Path | None = None, fmt: str = "csv",
              fast_ingest: bool = True, translate_process: bool = False) -> dict[str, object]:
    """One file through a folder interface; ``source``: an existing file (copied), else a
    generated CSV of ``megabytes`` MB; ``fast_ingest``: `nats.fast_ingest`; ``translate_process``:
    the interface's `translate_process` (chunks translated in a child process)."""
    work = Path(tempfile.mkdtemp(prefix="ficus-bench-files-"))
    try:
        for d in ("in", "archive", "staging"):
            (work / d).mkdir()
        suffix = "csv" if fmt == "csv" else "835"
        staged = work / "staging" / f"export.{suffix}"
        if source is not None:
            shutil.copyfile(source, staged)
            megabytes = round(staged.stat().st_size / 2**20)
            records = 0
        else:
            records = generate(staged, megabytes)
        interface: dict[str, object] = {
            "name": "billing", "kind": "folder", "path": str(work / "in"), "patterns": [f"*.{suffix}"],
            "poll_seconds": 0.2, "complete": "rename", "format": fmt,
            "after": "archive", "archive_dir": str(work / "archive"), "route": "modern",
            "translate_process": translate_process,
        }
        if fmt == "csv":
            spec = tomllib.loads((REPO / "fixtures/flat/billing_export.toml").read_text())
            interface["flat"] = {"layout": spec["layout"], "mapping": spec["mapping"]}
        cfg = parse_config({
            "state_dir": str(work / "state"), "log_level": "WARNING", "api": {"listen": "127.0.0.1:0"},
            "nats": {"fast_ingest": fast_ingest}, "interfaces": [interface],
        }, "bench")
        async with Service(cfg) as svc:
            stats = svc.interfaces["billing"].stats
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cpu_start = time.process_time()
            start = time.perf_counter()
            staged.rename(work / "in" / staged.name)
            while stats.acked < 1:  # noqa: ASYNC110 - polling a counter the pipeline bumps
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            translator = getattr(svc.interfaces["billing"].pipeline, "translator", None)
            child_cpu = _cpu_of(translator.pid) if translator is not None and translator.pid else 0.0
            published = stats.published
            ingest = svc.store.ingest_mode
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = (work / "archive" / staged.name).stat().st_size
        return {"megabytes": megabytes, "mb": round(size / 1e6, 1), "mb_per_s_decimal": round(size / 1e6 / elapsed, 2),
                "ingest": ingest, "records": records, "events": published, "seconds": round(elapsed, 2),
                "events_per_s": round(published / elapsed),
                "records_per_s": round(records / elapsed), "mb_per_s": round(megabytes / elapsed, 2),
                "peak_rss_mib": round(rss), "rss_before_file_mib": round(rss_before),
                "translate_process": translate_process, "cpu_s": round(cpu, 2),
                "translator_cpu_s": round(child_cpu, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc (the translator process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=100, help="MB of CSV")
    parser.add_argument("--path", type=Path, help="an existing file to take instead of a generated CSV")
    parser.add_argument("--format", default="csv", choices=["csv", "x12-835"])
    parser.add_argument("--fast-ingest", default="on", choices=["on", "off"])
    parser.add_argument("--translate-process", default="off", choices=["on", "off"],
                        help="the interface's translate_process: chunks translated in a child process")
    args = parser.parse_args()
    work = run(args.size, args.path, args.format, args.fast_ingest == "on", args.translate_process == "on")
    try:  # the event loop `ficus run` uses
        import uvloop
    except ImportError:
        print(json.dumps(asyncio.run(work)))
        return
    print(json.dumps(uvloop.run(work)))


if __name__ == "__main__":
    main()
