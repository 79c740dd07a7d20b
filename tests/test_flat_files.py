"""canonical.flat: CSV and fixed-width reading, per-line errors, file-level errors, constant memory."""

from __future__ import annotations

import io
import tomllib
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from canonical.context import TranslationContext
from canonical.flat import CsvLayout, FixedWidthLayout, FlatRecord, FlatSpec, LayoutError, read_records, translate_flat
from canonical.records import FieldSpec

FLAT = Path(__file__).resolve().parent.parent / "fixtures" / "flat"
CTX = TranslationContext("flat-test", "shadow", "raw.flat-test/1", datetime(2024, 1, 6, tzinfo=UTC))
CSV = CsvLayout(kind="csv")
AB = [FieldSpec(field="a", column="A"), FieldSpec(field="b", column="B")]


def spec_of(name: str) -> FlatSpec:
    return FlatSpec.model_validate(tomllib.loads((FLAT / f"{name}.toml").read_text(encoding="utf-8")))


def read(data: bytes, layout: Any = CSV, fields: list[FieldSpec] = AB) -> list[FlatRecord]:
    return list(read_records(io.BytesIO(data), layout, fields))


def good(records: list[FlatRecord]) -> list[tuple[int, dict[str, str] | None]]:
    return [(r.line, r.values) for r in records if r.error is None]


# --- fixtures end to end -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suffix", "types"),
    [
        ("billing_export", "csv", ["posted", "posted", "credited", "credited", "posted"]),
        ("timekeeping", "txt", ["recorded"] * 5),
        ("materials_usage", "csv", ["recorded"] * 5),
    ],
)
def test_fixture_files_translate_without_errors(name: str, suffix: str, types: list[str]) -> None:
    with (FLAT / f"{name}.{suffix}").open("rb") as stream:
        outcomes = list(translate_flat(stream, spec_of(name), CTX, unit="sha-1"))
    assert [o.error for o in outcomes] == [None] * len(types)
    assert [o.events[0].type.split(".")[-2] for o in outcomes] == types
    assert all(o.events[0].nats_subject().startswith("shadow.canonical.") for o in outcomes)


def test_timekeeping_fixed_width_fields() -> None:
    with (FLAT / "timekeeping.txt").open("rb") as stream:
        first = next(translate_flat(stream, spec_of("timekeeping"), CTX, unit="sha-1"))
    data = first.events[0].data.model_dump(mode="json")
    assert first.line == 2  # the header line is skipped
    assert data["employee_id"] == "E0001001" and data["hours"] == "12.00" and data["amount"] == "546.0000"
    assert data["shift_start"] == "2024-01-05T07:00:00-05:00"


# --- CSV -------------------------------------------------------------------------------


def test_header_bom_crlf_quotes_and_blank_lines() -> None:
    data = '\ufeffa,"B"\r\n1,"x, ""quoted""\r\nsecond line"\r\n\r\n   \r\n2,y\r\n'.encode()
    assert good(read(data)) == [(2, {"a": "1", "b": 'x, "quoted"\r\nsecond line'}), (6, {"a": "2", "b": "y"})]


def test_no_header_with_column_names_or_indexes() -> None:
    layout = CsvLayout(kind="csv", header=False, columns=["A", "B"], delimiter="|")
    assert good(read(b"1|2\n3|4\n", layout)) == [(1, {"a": "1", "b": "2"}), (2, {"a": "3", "b": "4"})]
    by_index = [FieldSpec(field="a", index=2)]
    records = read(b"x,y,z,extra\nshort\n", CsvLayout(kind="csv", header=False), by_index)
    assert records[0].values == {"a": "z"}
    assert records[1].error == "line 2: 1 columns, expected 3"


def test_skip_lines_and_case_insensitive_header() -> None:
    data = b"EXPORT 2024-01-06\nrun 42\na,b\n1,2\n"
    assert good(read(data, CsvLayout(kind="csv", skip_lines=2))) == [(4, {"a": "1", "b": "2"})]


def test_bad_lines_in_the_middle_become_error_records_and_reading_goes_on() -> None:
    data = b"A,B\n1,2\n3\n4,\"x\"y\n\xff\xfe,5\n6,\"multi\nline\"\n7,8,9\n10,11\n"
    records = read(data)
    assert [(r.line, r.index, r.error) for r in records if r.error] == [
        (3, 1, "line 3: 1 columns, expected 2"),
        (4, 2, "line 4: malformed CSV (',' expected after '\"')"),
        (5, 3, "line 5: not valid utf-8 at byte 1"),
        (8, 5, "line 8: 3 columns, expected 2"),
    ]
    assert good(records) == [
        (2, {"a": "1", "b": "2"}),
        (6, {"a": "6", "b": "multi\nline"}),
        (9, {"a": "10", "b": "11"}),
    ]
    assert [r.index for r in records] == list(range(7))


def test_undecodable_line_inside_a_quoted_record_fails_that_record_only() -> None:
    records = read(b'A,B\n1,"start\n\xff end"\n2,3\n')
    assert [(r.line, r.error) for r in records] == [(3, "line 3: not valid utf-8 at byte 1"), (4, None)]


def test_header_missing_mapped_columns_is_a_file_error_listing_all() -> None:
    fields = [*AB, FieldSpec(field="c", column="C"), FieldSpec(field="d", column="D")]
    with pytest.raises(LayoutError, match="header lacks mapped columns: C, D"):
        read_records(io.BytesIO(b"A,B\n1,2\n"), CSV, fields)
    with pytest.raises(LayoutError, match="no header line"):
        read_records(io.BytesIO(b"\n\n"), CSV, AB)


def test_translate_flat_dead_letters_bad_lines_with_context() -> None:
    data = (FLAT / "billing_export.csv").read_bytes().replace(b"90.50", b"90,50")
    outcomes = list(translate_flat(io.BytesIO(data), spec_of("billing_export"), CTX, unit="sha-2"))
    errors = [o.error for o in outcomes if o.error]
    assert len(errors) == 1 and len(outcomes) == 5
    assert errors[0].reason == "line 3: 13 columns, expected 12"
    assert errors[0].locator == "line 3" and errors[0].control_id == "sha-2:1"


def test_layout_validation() -> None:
    with pytest.raises(ValidationError, match="not ASCII-compatible"):
        CsvLayout(kind="csv", encoding="utf-16")
    with pytest.raises(ValidationError, match="unknown encoding"):
        CsvLayout(kind="csv", encoding="klingon")
    with pytest.raises(ValidationError, match="columns is for files without a header"):
        CsvLayout(kind="csv", columns=["A"])
    config = tomllib.loads((FLAT / "timekeeping.toml").read_text(encoding="utf-8"))
    config["mapping"]["fields"][0] = {"field": "employee_id", "column": "EMP"}
    config["layout"]["record_length"] = 70
    with pytest.raises(ValidationError) as info:
        FlatSpec.model_validate(config)
    assert "'employee_id': fixed-width fields use start and length" in str(info.value)
    assert "'facility': ends after record_length 70" in str(info.value)


# --- fixed width ---------------------------------------------------------------------------


def test_fixed_width_lengths_and_blank_lines() -> None:
    fields = [FieldSpec(field="a", start=1, length=3), FieldSpec(field="b", start=4, length=4, required=False)]
    layout = FixedWidthLayout(kind="fixed-width")
    records = read(b"abc1234\r\n\r\nde\nfgh\n", layout, fields)
    assert [(r.line, r.values, r.error) for r in records] == [
        (1, {"a": "abc", "b": "1234"}, None),
        (3, None, "line 3: 2 characters, mapped fields need 3"),
        (4, {"a": "fgh", "b": ""}, None),
    ]
    strict = FixedWidthLayout(kind="fixed-width", record_length=7)
    assert read(b"abc1234\nfgh\n", strict, fields)[1].error == "line 2: 3 characters, expected 7"


# --- memory ----------------------------------------------------------------------------------


def test_large_file_is_read_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    line = b"T-0000000001,CG,01/05/2024,01/06/2024,ACC-5001,ENC-9001,99213,99213,1,125.00,CLINIC,NORTH\n"
    block = line * 10_000
    header = (FLAT / "billing_export.csv").read_bytes().splitlines(keepends=True)[0]
    with path.open("wb") as out:
        out.write(header)
        while out.tell() < 50 * 2**20:
            out.write(block)
    fields = spec_of("billing_export").mapping.fields
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            count = sum(1 for r in read_records(stream, CSV, fields) if r.error is None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == (path.stat().st_size - len(header)) // len(line)
    assert peak < 20 * 2**20
