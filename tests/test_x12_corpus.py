"""Every X12 file of the shared corpus reads without an exception.

Balanced 835 transactions give events whose totals equal the BPR and CLP
figures; the others are dead-lettered with a reason naming the file, the ST and
the figures. The corpus comes from ``$FICUS_CORPUS`` or /work/shared/corpus.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from canonical.context import TranslationContext
from canonical.x12 import translate_835

CORPUS = Path(os.environ.get("FICUS_CORPUS", "/work/shared/corpus")) / "x12"
CTX = TranslationContext("payer-835", "shadow", "raw.payer-835/corpus", datetime(2024, 1, 1, tzinfo=UTC))
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []

#: file -> ST control numbers expected to balance and give events.
BALANCED = {
    "exhaustive_sample.txt": ["0001"],
    "nevada_medicaid.txt": ["0001", "0002", "0003"],
    "emedny_sample.txt": ["1740"],
    "united_healthcare_legacy_sample.txt": ["000000064"],
    "cob-contractural-adjustment.835": ["0001"],
    "medicare-part-a.835": ["1234"],
    "secondary-payment.835": ["1234"],
    "835_mult_loops.txt": ["0001"],
}
#: file -> a fragment every error reason of that file contains (why it is dead-lettered).
DEAD_LETTERED = {
    "demo.example1.837": "not an 835: ST01 837",
    "managed-care.835": "BPR16 is not a CCYYMMDD date",
    "tertiary-payment.835": "SVC02 24599.00 - CAS 1579.00 != SVC03 1766.50",
    "blue_cross_nc_sample.txt": "SVC02 is missing",
    "835_DeIdent_01.dat": "BPR02 99999.99 != sum(CLP04) 66417.62 - PLB 0",
    "Example1.txt": "CLP03 is missing",
    "UnicodeExample.txt": "not an 835: ST01 837",
}

pytestmark = pytest.mark.skipif(not FILES, reason=f"no X12 corpus under {CORPUS}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_translates_without_exception(path: Path) -> None:
    with path.open("rb") as stream:
        results = list(translate_835(stream, CTX, source_name=path.name))
    assert results
    for result in results:
        assert (result.events is None) != (result.error is None)
        if result.error is not None:
            assert path.name in result.error.reason
            if result.st_control is not None:
                assert f"ST {result.st_control} of {path.name}" in result.error.reason
    ok = [r.st_control for r in results if r.error is None]
    assert ok == BALANCED.get(path.name, [])
    if path.name in DEAD_LETTERED:
        assert all(DEAD_LETTERED[path.name] in r.error.reason for r in results if r.error is not None)
        assert any(r.error is not None for r in results)


@pytest.mark.parametrize("name", sorted(BALANCED))
def test_event_totals_equal_bpr_and_clp_figures(name: str) -> None:
    path = next((p for p in FILES if p.name == name), None)
    if path is None:
        pytest.skip(f"{name} not in corpus")
    with path.open("rb") as stream:
        for result in translate_835(stream, CTX, source_name=name):
            if result.events is None:
                continue
            docs = [json.loads(e.to_json()) for e in result.events]
            remit = docs[0]["data"]
            paid = sum(Decimal(d["data"]["paid"]) for d in docs if d["type"].endswith("claim.adjudicated.v1"))
            charge = sum(Decimal(d["data"]["charge"]) for d in docs if d["type"].endswith("claim.adjudicated.v1"))
            plb = sum(
                Decimal(d["data"]["total"]) for d in docs if d["type"].endswith("provider_adjustment.recorded.v1")
            )
            assert paid - plb == Decimal(remit["amount"])
            assert (paid, charge) == (Decimal(remit["total_paid"]), Decimal(remit["total_charge"]))
            assert all(d["type"].startswith("org.ficus.claims.") and d["ficusmode"] == "shadow" for d in docs)
