"""Benchmark flat-file translation on a large generated CSV billing export.

Writes a synthetic export of ``--size`` megabytes (default 1024) to /tmp with the
header of ``fixtures/flat/billing_export.csv`` (one row in 20 a credit), then reads
it with ``read_records``, maps every record with ``map_record`` and serialises
each event with ``to_json``, dropping it. Prints records/s, MB/s and peak RSS
(``resource.getrusage``), for reading alone and for the whole path.

    .venv/bin/python bench/flat_csv.py --size 100
"""

from __future__ import annotations

import argparse
import resource
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from canonical.context import TranslationContext
from canonical.flat import FlatSpec, read_records
from canonical.records import map_record

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "flat"


def generate(path: Path, megabytes: int) -> int:
    """Write the export; returns the number of data rows."""
    header = (FIXTURES / "billing_export.csv").read_bytes().splitlines(keepends=True)[0]
    target = megabytes * 2**20
    rows = 0
    with path.open("wb") as out:
        out.write(header)
        while out.tell() < target:
            chunk = []
            for _ in range(10_000):
                rows += 1
                amount = f"-{rows % 900}.25" if rows % 20 == 0 else f"{rows % 900}.50"
                chunk.append(
                    f"T-{rows:010d},CG,01/05/2024,01/06/2024,ACC-{rows % 99991:05d},ENC-{rows % 77777:05d},"
                    f"99213,99213,1,{amount},CLINIC,NORTH\n"
                )
            out.write("".join(chunk).encode("ascii"))
    return rows


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, mode: str) -> dict[str, object]:
    """One measurement in this process: `ficus` (read_records + map_record + to_json),
    `read` (read_records alone) or `csv` (the stdlib csv.reader alone: the ceiling)."""
    import csv
    import io

    spec = FlatSpec.model_validate(tomllib.loads((FIXTURES / "billing_export.toml").read_text(encoding="utf-8")))
    ctx = TranslationContext("billing-export", "live", "raw.billing-export/bench", datetime.now(UTC))
    size = path.stat().st_size
    records = errors = 0
    start = time.perf_counter()
    with path.open("rb") as stream:
        if mode == "csv":
            for _ in csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline="")):
                records += 1
            records -= 1  # the header
        elif mode == "read":
            records = sum(1 for _ in read_records(stream, spec.layout, spec.mapping.fields))
        else:
            for record in read_records(stream, spec.layout, spec.mapping.fields):
                if record.values is None:
                    errors += 1
                    continue
                for event in map_record(record.values, spec.mapping, ctx, unit="bench", index=record.index,
                                        locator=f"line {record.line}"):
                    event.to_json()
                records += 1
    elapsed = time.perf_counter() - start
    return {"mode": mode, "mb": round(size / 1e6, 1), "seconds": round(elapsed, 2),
            "mb_per_s": round(size / 1e6 / elapsed, 2), "records": records, "records_per_s": round(records / elapsed),
            "errors": errors, "peak_rss_mib": round(peak_rss_mib(), 1)}


def main() -> None:
    """Generate, then measure reading alone and reading + mapping + JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1024, help="file size in MB")
    parser.add_argument("--path", type=Path, default=Path("/tmp/ficus-bench-billing.csv"))
    parser.add_argument("--mode", choices=["ficus", "read", "csv"],
                        help="one JSON measurement of an existing file (--path)")
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()
    if args.mode:
        import json

        print(json.dumps(measure(args.path, args.mode)))
        return
    if args.generate_only:
        print(generate(args.path, args.size))
        return
    spec = FlatSpec.model_validate(tomllib.loads((FIXTURES / "billing_export.toml").read_text(encoding="utf-8")))
    ctx = TranslationContext("billing-export", "live", "raw.billing-export/bench", datetime.now(UTC))
    rows = generate(args.path, args.size)
    size_mb = args.path.stat().st_size / 2**20
    print(f"file: {args.path} {size_mb:.0f} MB, {rows} rows; RSS after generation {peak_rss_mib():.0f} MiB")

    start = time.perf_counter()
    with args.path.open("rb") as stream:
        read = sum(1 for _ in read_records(stream, spec.layout, spec.mapping.fields))
    elapsed = time.perf_counter() - start
    print(f"read_records:          {read / elapsed:10,.0f} records/s {size_mb / elapsed:7.1f} MB/s"
          f"  peak RSS {peak_rss_mib():.0f} MiB")

    start = time.perf_counter()
    events = errors = json_bytes = 0
    with args.path.open("rb") as stream:
        for record in read_records(stream, spec.layout, spec.mapping.fields):
            if record.values is None:
                errors += 1
                continue
            for event in map_record(record.values, spec.mapping, ctx, unit="bench", index=record.index,
                                    locator=f"line {record.line}"):
                json_bytes += len(event.to_json())
                events += 1
    elapsed = time.perf_counter() - start
    print(f"read + map + to_json:  {events / elapsed:10,.0f} records/s {size_mb / elapsed:7.1f} MB/s"
          f"  peak RSS {peak_rss_mib():.0f} MiB  ({events} events, {errors} errors, "
          f"{json_bytes / 2**20:.0f} MB of JSON)")
    args.path.unlink()


if __name__ == "__main__":
    main()
