"""Benchmark translate_835 on a large generated 835 file.

Writes a synthetic file of ``--size`` megabytes (default 1024) to /tmp: one
interchange with many ST transactions of ``--claims`` claims each (one service
line, two adjustments per claim, one PLB per transaction), then translates it,
builds and serialises every event to JSON and drops it. Prints MB/s, claims/s,
events/s and peak RSS (``resource.getrusage``).

    .venv/bin/python bench/x12_835.py --size 200
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from canonical.context import TranslationContext
from canonical.x12 import translate_835

ISA = "ISA*00*          *00*          *ZZ*BENCHPAYER     *ZZ*BENCHHOSP      *241015*1200*^*00501*000000001*0*P*:~\n"


def transaction(st: int, claims: int) -> str:
    """One balanced ST..SE of ``claims`` claims."""
    segs = [
        f"ST*835*{st:09d}",
        f"BPR*I*{claims * 150 - 10}.00*C*ACH*CCP*01*999999999*DA*1*1512345678**01*9*DA*9*20241016",
        f"TRN*1*EFT{st:09d}*1512345678",
        "DTM*405*20241015",
        "N1*PR*BENCH HEALTH PLAN",
        "REF*2U*PAYER99",
        "N1*PE*BENCH HOSPITAL*XX*1234567893",
        "LX*1",
    ]
    for n in range(claims):
        segs += [
            f"CLP*PCN{st:06d}{n:06d}*1*200.00*150.00*20.00*12*ICN{st:06d}{n:06d}*11*1",
            "DTM*232*20240901",
            "SVC*HC:99213:25*200.00*150.00**1",
            "DTM*472*20240901",
            "CAS*PR*1*20.00",
            "CAS*CO*45*30.00",
            f"REF*6R*L{n:06d}",
        ]
    segs.append("PLB*1234567893*20241231*WO:OVERPAY*10.00")
    segs.append(f"SE*{len(segs) + 1}*{st:09d}")
    return "~\n".join(segs) + "~\n"


def generate(path: Path, size_mb: int, claims: int) -> int:
    """Write the file; returns the number of claims in it."""
    target = size_mb * 1_000_000
    written = total = st = 0
    with path.open("w", encoding="ascii") as out:
        out.write(ISA + "GS*HP*BENCHPAYER*BENCHHOSP*20241015*1200*1*X*005010X221A1~\n")
        while written < target:
            st += 1
            text = transaction(st, claims)
            out.write(text)
            written += len(text)
            total += claims
        out.write(f"GE*{st}*1~\nIEA*1*000000001~\n")
    return total


def events_of(path: Path) -> Iterator[int]:
    """Translate, serialise every event to JSON, yield byte counts (then drop)."""
    ctx = TranslationContext("bench-835", "live", "raw.bench", datetime(2024, 10, 16, tzinfo=UTC))
    with path.open("rb") as stream:
        for result in translate_835(stream, ctx, source_name=path.name):
            if result.error is not None:
                raise SystemExit(result.error.reason)
            assert result.events is not None
            for event in result.events:
                yield len(event.to_json())


def tokenize_only(path: Path) -> tuple[int, int]:
    """The ceiling of the reader: segments and claims (CLP) from X12Reader, nothing built."""
    from canonical.x12.reader import X12Reader

    segments = claims = 0
    with path.open("rb") as stream:
        for seg in X12Reader(stream):
            segments += 1
            if seg.id == "CLP":
                claims += 1
    return segments, claims


def pyx12_claims(path: Path) -> int:
    """pyx12 (the HIPAA X12 parser and validator on PyPI) walking the 835 map: claims (loop 2100)."""
    import pyx12.error_handler
    import pyx12.params
    import pyx12.x12context

    claims = 0
    with path.open(encoding="ascii") as fd:
        reader = pyx12.x12context.X12ContextReader(pyx12.params.params(), pyx12.error_handler.errh_null(), fd)
        for node in reader.iter_segments("2100"):
            if node.id == "2100":
                claims += 1
    return claims


def measure(path: Path, mode: str) -> dict[str, object]:
    """One measurement in this process: ficus (translate + JSON), tokenize, or pyx12."""
    size = path.stat().st_size
    start = time.perf_counter()
    events = 0
    if mode == "ficus":
        claims = 0
        ctx = TranslationContext("bench-835", "live", "raw.bench", datetime(2024, 10, 16, tzinfo=UTC))
        with path.open("rb") as stream:
            for result in translate_835(stream, ctx, source_name=path.name):
                if result.error is not None:
                    raise SystemExit(result.error.reason)
                assert result.events is not None
                for event in result.events:
                    event.to_json()
                    events += 1
                    claims += event.type.startswith("org.ficus.claims.claim.")
    elif mode == "tokenize":
        _, claims = tokenize_only(path)
    else:
        claims = pyx12_claims(path)
    elapsed = time.perf_counter() - start
    return {"mode": mode, "mb": round(size / 1e6, 1), "seconds": round(elapsed, 2),
            "mb_per_s": round(size / 1e6 / elapsed, 2), "claims": claims, "claims_per_s": round(claims / elapsed),
            "events": events, "events_per_s": round(events / elapsed),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    """Generate, translate, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="file size in MB (default 1024)")
    parser.add_argument("--claims", type=int, default=1000, help="claims per transaction (default 1000)")
    parser.add_argument("--path", type=Path, default=Path("/tmp/ficus-bench.835"))
    parser.add_argument("--mode", choices=["ficus", "tokenize", "pyx12"], help="one JSON measurement of an "
                        "existing file (--path): Ficus's translator, its tokenizer alone, or pyx12")
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()
    if args.mode:
        import json

        print(json.dumps(measure(args.path, args.mode)))
        return
    claims = generate(args.path, args.size, args.claims)
    if args.generate_only:
        print(claims)
        return
    size = args.path.stat().st_size
    start = time.perf_counter()
    count = sum(1 for _ in events_of(args.path))
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"file {size / 1e6:.0f} MB, {claims} claims, {count} events in {elapsed:.1f} s")
    print(f"{size / 1e6 / elapsed:.2f} MB/s, {claims / elapsed:.0f} claims/s, {count / elapsed:.0f} events/s")
    print(f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
