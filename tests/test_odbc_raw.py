"""The raw archive of database rows (router/odbc_raw.py): JSON chunks read back with the
values the driver gave, so a replay maps them to the events the live path made."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from canonical.context import TranslationContext
from canonical.errors import TranslationError
from canonical.records import RecordMapping, map_record, row_values
from router import names
from router.odbc_raw import column_types, raw_chunks, read_chunk

# Values as pyodbc hands them over (psqlodbc gives NUMERIC(12,8) 0.0000001 as Decimal('1.0E-7')).
ROW: dict[str, object] = {
    "id": 7, "item": "ITM-1", "qty": 2.5, "ok": True, "none": None,
    "tiny": Decimal("1.0E-7"), "big": Decimal("1.234E+3"), "cents": Decimal("2.00"), "neg": Decimal("-0.10"),
    "at": datetime(2024, 5, 1, 10, 0, 0, 123456), "midnight": datetime(2024, 5, 1),
    "aware": datetime(2024, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=2))),
    "day": date(2024, 5, 1), "clock": time(10, 11, 12), "blob": b"\x00\xff'\"", "guid": uuid.uuid4(),
}
MAPPING = RecordMapping.model_validate({
    "target": "supply_usage", "facility_field": "facility",
    "fields": [
        {"field": "item_id", "column": "item"},
        {"field": "quantity", "column": "qty"},
        {"field": "unit_of_measure", "default": "EA"},
        {"field": "unit_cost", "column": "cents"},
        {"field": "extended_cost", "column": "tiny"},
        {"field": "department", "column": "big"},          # a NUMERIC code read as text
        {"field": "encounter_number", "column": "at"},     # a timestamp read as text
        {"field": "used_at", "column": "midnight", "type": "date"},
        {"field": "facility", "default": "NORTH"},
    ],
})


def _events(row: dict[str, object]) -> list[str]:
    ctx = TranslationContext("usage", "live", "jetstream://FICUS_RAW/1", datetime(2024, 6, 1, tzinfo=UTC))
    return [ev.to_json().decode() for ev in map_record(row_values(row, MAPPING.fields), MAPPING, ctx,
                                                        unit="usage", index=7, locator="usage row id=7")]


def test_rows_read_back_are_the_rows_the_driver_gave() -> None:
    rows = [dict(ROW, id=i) for i in range(1, 4)]
    chunks, items = raw_chunks("usage", "usage", "ID", rows, [1, 2, 3], 1_000_000)
    assert chunks == [(0, 3)]
    (item,) = items
    assert item.subject == names.raw_subject("usage")
    chunk = read_chunk(item.payload)
    assert (chunk.table, chunk.key_column, chunk.keys) == ("usage", "ID", [1, 2, 3])
    assert chunk.rows == rows
    assert [{k: type(v) for k, v in row.items()} for row in chunk.rows] == [
        {k: type(v) for k, v in row.items()} for row in rows]
    assert [str(row["tiny"]) for row in chunk.rows] == ["1.0E-7"] * 3, "the exponent is kept"


def test_the_mapping_gives_the_same_events_for_rows_read_back() -> None:
    (item,) = raw_chunks("usage", "usage", "id", [ROW], [7], 1_000_000)[1]
    assert _events(read_chunk(item.payload).rows[0]) == _events(ROW)


def test_chunks_stored_without_types_read_some_values_as_text() -> None:
    """What a chunk stored before ``types`` gives (read_chunk's docstring): these differ."""
    (item,) = raw_chunks("usage", "usage", "id", [ROW], [7], 1_000_000)[1]
    doc = json.loads(item.payload)
    del doc["types"]
    (old,) = read_chunk(json.dumps(doc).encode()).rows
    assert old["tiny"] == "1.0E-7" and old["at"] == "2024-05-01 10:00:00.123456"
    with pytest.raises(TranslationError) as caught:
        _events(old)
    assert "extended_cost: not a plain decimal number" in caught.value.reason
    assert "used_at: not an ISO 8601 date" in caught.value.reason


def test_a_batch_is_cut_into_chunks_under_the_limit() -> None:
    rows = [dict(ROW, id=i) for i in range(1, 101)]
    chunks, items = raw_chunks("usage", "usage", "id", rows, list(range(1, 101)), 4096)
    assert len(chunks) > 1 and chunks[0][0] == 0 and chunks[-1][1] == 100
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(chunks))
    back = [read_chunk(item.payload) for item in items]
    assert [key for c in back for key in c.keys] == list(range(1, 101))
    heads = [json.loads(item.payload) for item in items]
    rows_bytes = [len(json.dumps(h["rows"], default=str, separators=(",", ":"))) for h in heads]
    assert all(n <= 4096 for n in rows_bytes), "rows within the limit; the head is the caller's headroom"
    assert [(h["first_key"], h["last_key"]) for h in heads] == [(a + 1, b) for a, b in chunks]
    assert len({item.msg_id for item in items}) == len(items)


def test_a_column_of_mixed_types_is_read_back_as_text() -> None:
    assert column_types([{"v": Decimal("1"), "w": None}, {"v": "x", "w": date(2024, 1, 1)}]) == {"w": "date"}


def test_an_integral_numeric_key_of_an_old_chunk_is_the_int_the_checkpoint_holds() -> None:
    old = {"interface": "usage", "table": "usage", "key_column": "id", "first_key": 17, "last_key": 17,
           "rows": [{"id": "17"}]}
    assert read_chunk(json.dumps(old).encode()).keys == [17]


def test_a_batch_in_one_chunk_is_the_rows_encoded_one_by_one() -> None:
    """The one-call encoding of a batch that fits (raw_chunks' fast path) stores the bytes the
    row-by-row path stores (a limit below one row cuts a chunk per row): the same rows array."""
    rows = [dict(ROW, id=i, item="é\u2028\"x" * i, none=None if i % 2 else i) for i in range(1, 8)]
    keys = list(range(1, 8))
    chunks, (item,) = raw_chunks("usage", "usage", "id", rows, keys, 1_000_000)
    assert chunks == [(0, 7)]
    cut, singles = raw_chunks("usage", "usage", "id", rows, keys, 10)
    assert cut == [(i, i + 1) for i in range(7)]
    each = [one.payload.split(b',"rows":[', 1)[1][:-2] for one in singles]
    head, rows_json = item.payload.split(b',"rows":', 1)
    assert rows_json == b"[" + b",".join(each) + b"]}"
    assert head == singles[0].payload.split(b',"rows":', 1)[0].replace(b'"last_key":1', b'"last_key":7')
