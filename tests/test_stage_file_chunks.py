"""A file chunk through the stage's short path (Stage.add_translated, ledger entries summed per
chunk) comes to exactly what the general path (a Record per unit through Stage.add, deltas merged
at commit) makes of it: the same event, index, dead-letter and ledger messages, counts and parity.

Pure unit test: the stage's store is a stand-in, nothing is published."""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from canonical.flat import FlatSpec
from router.config import Mode
from router.file_pipeline import BATCH, FilePipeline, _batch_id, _Chunk, file_record
from router.file_units import file_units
from router.manifest import FileEntry
from router.routes import Route
from router.stage import Outcome, Stage
from router.store import Outgoing

FLAT = Path(__file__).resolve().parent.parent / "fixtures" / "flat"
HEADER = "TXN_ID,TXN_TYPE,SERVICE_DATE,POST_DATE,ACCOUNT,ENCOUNTER,CHARGE_CODE,CPT,QTY,AMOUNT,DEPT,FACILITY\n"


def _csv(rows: int) -> bytes:
    lines = [HEADER]
    for i in range(rows):
        kind = "CR" if i % 7 == 3 else "CG"
        amount = "" if i % 97 == 5 else f"{i % 300}.25"  # a missing amount: a dead letter
        facility = ("NORTH", "SOUTH", "")[i % 3]
        lines.append(f"T-{i:06d},{kind},01/05/2024,01/06/2024,ACC-{i % 50},ENC-{i % 80},99213,99213,1,{amount},"
                     f"CLINIC,{facility}\n")
    return "".join(lines).encode()


def _stage(event_index: bool) -> Stage:
    store: Any = SimpleNamespace(cfg=SimpleNamespace(key_index=False, event_index=event_index))
    stats: Any = SimpleNamespace()
    return Stage("billing", store, SimpleNamespace(), stats, money_format="csv")  # type: ignore[arg-type]


def _wire(items: list[Outgoing], drop_at: bool = False) -> list[tuple[Any, ...]]:
    if not drop_at:
        return [(o.subject, o.payload, o.msg_id, o.headers) for o in items]
    # A dead letter says when it was made: the rest of it must match.
    return [(o.subject, {k: v for k, v in json.loads(o.payload).items() if k != "at"}, o.msg_id, o.headers)
            for o in items]


def _summary(out: Outcome, deltas: list[Outgoing]) -> dict[str, Any]:
    return {"events": _wire(out.events), "index": _wire(out.index), "letters": _wire(out.letters, drop_at=True),
            "deltas": _wire(deltas), "counts": (out.live, out.shadow, out.legacy, out.records),
            "parity": out.parity, "money": out.money, "failed": [r.locator for r in out.failed],
            "done": out.done}


@pytest.mark.parametrize(("mode", "facilities"), [
    ("modern", {}), ("shadow", {}), ("modern", {"SOUTH": "legacy"}), ("shadow", {"NORTH": "modern"}),
    ("legacy", {"NORTH": "shadow"}),
])
@pytest.mark.parametrize("event_index", [False, True])
def test_a_chunk_comes_to_what_a_record_per_unit_comes_to(mode: Mode, facilities: dict[str, Mode],
                                                          event_index: bool) -> None:
    spec_doc = tomllib.loads((FLAT / "billing_export.toml").read_text(encoding="utf-8"))
    flat = FlatSpec.model_validate({"layout": spec_doc["layout"], "mapping": spec_doc["mapping"]})
    route = Route(mode=mode, facilities=facilities)
    data = _csv(9 * BATCH)  # a third of the records only counted (legacy): still chunks of BATCH events
    entry = FileEntry("billing", "export.csv", len(data), 1.0, "ab" * 32, raw="objectstore://files/billing/x")

    fast = _stage(event_index)
    pipeline: Any = SimpleNamespace(name="billing", stage=fast)
    ctx = fast.context(entry.raw, route)  # one for both paths: it holds the time of receipt
    units = file_units(io.BytesIO(data), "csv", flat, ctx, name="export.csv", sha256=entry.sha256, reference=None)
    chunks: list[_Chunk] = []
    start = 0
    while not chunks or not chunks[-1].last:
        chunks.append(FilePipeline._chunk(pipeline, units, entry, route, start))
        start = chunks[-1].next_record
    assert len(chunks) > 2

    slow = _stage(event_index)
    records = [file_record(entry.raw, entry.sha256, u) for u in
               file_units(io.BytesIO(data), "csv", flat, ctx, name="export.csv",
                          sha256=entry.sha256, reference=None)]
    for chunk in chunks:
        if chunk.first is None:
            continue
        out = Outcome(traceparent=None)
        for record in records[chunk.first : chunk.next_record]:
            slow.add(out, record, route)
        assert chunk.out.deltas is not None
        assert _summary(chunk.out, chunk.out.deltas) == _summary(out, slow.deltas(out, _batch_id(entry, chunk)))
