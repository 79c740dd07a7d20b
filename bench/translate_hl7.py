"""Micro-benchmark: translate_hl7 vs hl7.parse on a ~1.4 KB DFT^P03 (not a test).

Run from the repository root:  PYTHONPATH=. .venv/bin/python bench/translate_hl7.py
Prints messages per second (best of several rounds) for:
  peek_header, translate_hl7, translate_hl7 + to_json of every event, hl7.parse.
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

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "hl7" / "dft_p03_charge_and_credit.hl7"


def rate(fn: Callable[[], object], seconds: float = 1.0, rounds: int = 3) -> float:
    """Best calls-per-second over ``rounds`` runs of about ``seconds`` each."""
    best = 0.0
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(200):
                fn()
            n += 200
        best = max(best, n / elapsed)
    return best


def main() -> None:
    raw = FIXTURE.read_bytes()
    ctx = TranslationContext("bench", "live", "raw.bench/1", datetime.now(UTC))
    text = raw.decode("utf-8")

    def full() -> None:
        for event in translate_hl7(raw, "hl7v2.dft_p03", ctx).events:
            event.to_json()

    cases: list[tuple[str, Callable[[], object]]] = [
        ("peek_header", lambda: peek_header(raw)),
        ("translate_hl7", lambda: translate_hl7(raw, "hl7v2.dft_p03", ctx)),
        ("translate_hl7 + to_json", full),
        ("hl7.parse", lambda: hl7.parse(text)),
    ]
    print(f"message: {FIXTURE.name}, {len(raw)} bytes, Python {sys.version.split()[0]}")
    for name, fn in cases:
        print(f"{name:>26}: {rate(fn):>10,.0f} msg/s")


if __name__ == "__main__":
    main()
