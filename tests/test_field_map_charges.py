"""The generated charge function of a site map (canonical/hl7v2/dft.py site_charge_code) against
a reference built another way: the built-in mapping's events with the map's values laid over
them (`FamilyMap.values`, the map's own reads) and its site fields in `extensions`.

The generated function skips the built-in reads a map replaces and shares the map's FT1 reads
with the built-in ones; this proves that changes no event, on the fixtures and on the benchmark
feed (500 messages, each with three charges, charges and credits), for maps that move
identifiers, FT1 fields, converted values, defaults and lookups.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.messages import Feed
from canonical.errors import TranslationError
from canonical.hl7v2.common import MessageReader
from canonical.hl7v2.fieldmap import FieldMap, compile_field_map, load_field_map
from canonical.hl7v2.reader import Hl7Message, decode_text, peek_header
from canonical.translate import TranslationContext, translate_hl7, with_field_map

REPO = Path(__file__).resolve().parent.parent
MAPS = REPO / "fixtures" / "mappings"
CTX = TranslationContext("north-charges", "live", "raw.north-charges/1", datetime(2024, 3, 5, 15, 0, tzinfo=UTC))

INLINE: dict[str, Any] = {
    "charge": {
        "transaction_id": {"path": "FT1-3", "fallback": ["FT1-2"]},
        "unit_amount": {"path": "FT1-12", "convert": "decimal"},
        "posting_date": {"path": "FT1-4"},
        "currency": {"path": "FT1-11.2", "default": "USD"},
        "performing_provider_id": "FT1-21",
        "ordering_provider_id": "FT1-20",
        "patient_id": {"path": "PID-3[2].1", "fallback": ["PID-3"]},
        "department": {"path": "FT1-13", "lookup": "departments", "lookup_miss": "keep"},
        "ward": {"path": "PV1-3", "convert": "location"},
        "admitted": {"path": "PV1-44", "convert": "timestamp"},
        "charge_again": {"path": "FT1-7", "convert": "coded"},
        "price_again": {"path": "FT1-12", "convert": "decimal"},
        "msh_app": "MSH-3",
    },
    "lookups": {"departments": {"ED": "EMERGENCY", "RAD": "RADIOLOGY"}},
}


def _maps() -> list[tuple[str, FieldMap]]:
    found = [(p.name, load_field_map(p)) for p in sorted(MAPS.glob("*.toml"))]
    return [(n, m) for n, m in found if m.charge is not None] + [("inline", compile_field_map(INLINE))]


def _messages() -> list[bytes]:
    feed = Feed("dft", 1)
    raws = [feed.get(0, i) for i in range(500)]
    raws += [p.read_bytes() for p in sorted((REPO / "fixtures").rglob("*.hl7")) if b"DFT^P03" in p.read_bytes()]
    return raws


def _reference(raw: bytes, fm: FieldMap) -> list[dict[str, Any]]:
    """Built-in events, the map's canonical values over their fields, its site fields added."""
    assert fm.charge is not None
    events = [json.loads(e.to_json())["data"] for e in translate_hl7(raw, "hl7v2", CTX).events]
    header = peek_header(raw)
    text, codec = decode_text(raw, header, "utf-8", "windows-1252")  # as translate_hl7 decodes
    msg = Hl7Message(text, hex_codec=codec)
    r = MessageReader(header, msg, CTX)
    scope = fm.charge.scope(msg)
    for index, (seg, data) in enumerate(zip(msg.segments("FT1"), events, strict=True), 1):
        values, extensions = fm.charge.values(r, scope, seg, index)
        assert not {"quantity", "amount", "transaction_type"} & set(values), "the reference cannot re-decide"
        data.update(json.loads(json.dumps(values, default=_plain)))
        if extensions is not None:
            data["extensions"] = json.loads(json.dumps(extensions, default=_plain))
    return events


def _plain(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if dump is not None else str(value)


@pytest.mark.parametrize(("name", "fm"), _maps(), ids=[n for n, _ in _maps()])
def test_generated_charges_equal_builtin_events_with_the_map_laid_over(name: str, fm: FieldMap) -> None:
    mapping = with_field_map("hl7v2", fm)
    compared = refused = 0
    for raw in _messages():
        try:
            expected = _reference(raw, fm)
        except TranslationError:
            refused += 1
            continue
        got = [json.loads(e.to_json())["data"] for e in translate_hl7(raw, mapping, CTX).events]
        assert got == expected, f"{name}: {peek_header(raw).control_id}"
        compared += 1
    assert compared >= 500, (compared, refused)
