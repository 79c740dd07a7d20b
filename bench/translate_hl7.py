"""Micro-benchmark: translate_hl7 vs hl7.parse on a ~1.4 KB DFT^P03 (not a test).

Run from the repository root:  PYTHONPATH=. .venv/bin/python bench/translate_hl7.py

``--site-map [PATH]``: the built-in mapping against the same under a 10-field site map
(:func:`site_map_cost`; default fixtures/mappings/bench_ten_fields.toml).

Prints messages per second (best of three one-second rounds, one core) for:
peek_header alone; translate_hl7 (peek, decode, split, map, pydantic validation of
every event); the same plus ``to_json`` of every event; and ``hl7.parse`` alone
(no mapping at all) on the same text. The fixture has two FT1 segments, so each
message gives two events; a one-FT1 variant and an ADT^A01 are shown for scale.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import hl7

from canonical.hl7v2.reader import peek_header
from canonical.translate import TranslationContext, translate_hl7

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hl7"
DFT = FIXTURES / "dft_p03_charge_and_credit.hl7"
ADT = FIXTURES / "adt_a01.hl7"


def rate(fn: Callable[[], object], seconds: float = 1.0, rounds: int = 3) -> float:
    """Best calls per second over ``rounds`` runs of about ``seconds`` each."""
    best = 0.0
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(200):
                fn()
            n += 200
        best = max(best, n / elapsed)
    return best


def one_ft1(raw: bytes) -> bytes:
    """The DFT without its second FT1 (a single-charge message)."""
    segments = raw.rstrip(b"\r").split(b"\r")
    ft1s = [i for i, s in enumerate(segments) if s.startswith(b"FT1|")]
    return b"\r".join(s for i, s in enumerate(segments) if i != ft1s[-1]) + b"\r"


def measure_json(seconds: float) -> dict[str, float]:
    """Per-core rates on the benchmark feed (bench.messages, 1-2 KB ADT and 3-FT1 DFT),
    one round of `seconds` each: what bench.run repeats in fresh processes."""
    from bench.messages import Feed

    ctx = TranslationContext("bench", "live", "raw.bench/1", datetime.now(UTC))
    out: dict[str, float] = {}
    for kind in ("adt", "dft"):
        feed = Feed(kind, 1)
        msgs = [feed.get(0, i) for i in range(500)]
        texts = [m.decode("utf-8") for m in msgs]
        it = iter(range(10**12))

        def translate() -> None:
            translate_hl7(msgs[next(it) % 500], "hl7v2", ctx)  # noqa: B023

        def translate_json() -> None:
            for event in translate_hl7(msgs[next(it) % 500], "hl7v2", ctx).events:  # noqa: B023
                event.to_json()

        def parse() -> None:
            hl7.parse(texts[next(it) % 500])  # noqa: B023

        out[f"{kind}_translate"] = rate(translate, seconds, 1)
        out[f"{kind}_translate_json"] = rate(translate_json, seconds, 1)
        out[f"{kind}_hl7_parse"] = rate(parse, seconds, 1)
    return out


def translate_only(kind: str, seconds: float) -> None:
    """translate_hl7 alone on the benchmark feed for `seconds` (what bench.run profiles)."""
    from bench.messages import Feed

    ctx = TranslationContext("bench", "live", "raw.bench/1", datetime.now(UTC))
    feed = Feed(kind, 1)
    msgs = [feed.get(0, i) for i in range(500)]
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        for raw in msgs:
            translate_hl7(raw, "hl7v2", ctx)


SITE_MAP = FIXTURES.parent / "mappings" / "bench_ten_fields.toml"


def site_map_cost(seconds: float = 0.3, rounds: int = 20, kind: str = "dft", path: Path = SITE_MAP,
                  ) -> dict[str, float]:
    """The benchmark feed translated by the built-in mapping and by the same mapping under the
    10-field site map (fixtures/mappings/bench_ten_fields.toml), in alternating rounds of
    `seconds` on one core, best round of each: on a shared machine the best round is the one
    least disturbed, and alternating exposes both to the same load; rates are per second of this
    process's CPU time. Events are also serialised
    (`to_json`), as the router does, so the extensions' serialisation is counted too."""
    from bench.messages import Feed
    from canonical.hl7v2.fieldmap import load_field_map
    from canonical.translate import with_field_map

    ctx = TranslationContext("bench", "live", "raw.bench/1", datetime.now(UTC))
    site = with_field_map("hl7v2", load_field_map(path))
    feed = Feed(kind, 1)
    msgs = [feed.get(0, i) for i in range(500)]

    def rate_of(mapping: object, with_json: bool) -> float:
        # CPU time of this process, not the wall clock: on a shared machine the time spent
        # waiting for a core would be counted against whichever side was waiting.
        n, start = 0, time.process_time()
        while (elapsed := time.process_time() - start) < seconds:
            for raw in msgs:
                events = translate_hl7(raw, mapping, ctx).events  # type: ignore[arg-type]  # a name or a mapping
                if with_json:
                    for event in events:
                        event.to_json()
            n += len(msgs)
        return n / elapsed

    best = {"builtin": 0.0, "site": 0.0, "builtin_json": 0.0, "site_json": 0.0}
    for _ in range(rounds):
        for with_json in (False, True):
            suffix = "_json" if with_json else ""
            best["builtin" + suffix] = max(best["builtin" + suffix], rate_of("hl7v2", with_json))
            best["site" + suffix] = max(best["site" + suffix], rate_of(site, with_json))
    best["ratio"] = best["site"] / best["builtin"]
    best["ratio_json"] = best["site_json"] / best["builtin_json"]
    return best


def main() -> None:
    if "--site-map" in sys.argv:
        import os

        at = sys.argv.index("--site-map") + 1
        path = Path(sys.argv[at]) if at < len(sys.argv) else SITE_MAP
        result = site_map_cost(path=path)
        print(f"{path.name}, DFT feed (3 FT1/message), one core, load average {os.getloadavg()[0]:.2f} at the end:")
        for label, key in (("translate_hl7", ""), ("translate_hl7 + to_json", "_json")):
            print(f"{label:>24}: built-in {result['builtin' + key]:>8,.0f} msg/s, 10-field site map "
                  f"{result['site' + key]:>8,.0f} msg/s ({result['ratio' + key]:.1%} of built-in)")
        return
    if "--only" in sys.argv:
        translate_only(sys.argv[sys.argv.index("--only") + 1], 1.0)
        return
    if "--json" in sys.argv:
        import json

        print(json.dumps(measure_json(float(sys.argv[sys.argv.index("--json") + 1]))))
        return
    raw = DFT.read_bytes()
    ctx = TranslationContext("bench", "live", "raw.bench/1", datetime.now(UTC))
    events = len(translate_hl7(raw, "hl7v2", ctx).events)
    single, adt = one_ft1(raw), ADT.read_bytes()

    def with_json() -> None:
        for event in translate_hl7(raw, "hl7v2", ctx).events:
            event.to_json()

    cases: list[tuple[str, Callable[[], object], int]] = [
        ("peek_header", lambda: peek_header(raw), 0),
        ("translate_hl7", lambda: translate_hl7(raw, "hl7v2", ctx), events),
        ("translate_hl7 + to_json", with_json, events),
        ("hl7.parse (no mapping)", lambda: hl7.parse(raw.decode("utf-8")), 0),
        ("translate_hl7, one FT1", lambda: translate_hl7(single, "hl7v2", ctx), 1),
        ("translate_hl7, ADT^A01", lambda: translate_hl7(adt, "hl7v2", ctx), 1),
    ]
    print(f"{DFT.name}: {len(raw)} bytes, {events} FT1/events; Python {sys.version.split()[0]}")
    for name, fn, per_message in cases:
        per_second = rate(fn)
        extra = f"  ({per_second * per_message:,.0f} events/s)" if per_message else ""
        print(f"{name:>26}: {per_second:>10,.0f} msg/s{extra}")


if __name__ == "__main__":
    main()
