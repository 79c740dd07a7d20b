"""Reference tables: loading and its problems, lookups and their reasons, live reload."""

from __future__ import annotations

import os
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from canonical.errors import TranslationError
from canonical.reference import (
    SPECS,
    ChargeRef,
    FacilityRef,
    PayerRef,
    ReferenceData,
    ReferenceDataError,
    ReferenceError,
    ReferenceStore,
    UnmappedError,
    load_table,
    validate_tables,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "reference"
PATHS = {name: FIXTURES / f"{name}.csv" for name in SPECS}


def write(path: Path, text: str, *, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def problems_of(path: Path, table: str) -> list[str]:
    with pytest.raises(ReferenceError) as caught:
        load_table(path, SPECS[table])
    return caught.value.problems


@pytest.fixture
def data() -> ReferenceData:
    return ReferenceStore(PATHS).data


def test_fixture_tables_are_valid() -> None:
    assert validate_tables(PATHS) == []
    assert len(load_table(PATHS["charge_codes"], SPECS["charge_codes"])) == 5


def test_lookups(data: ReferenceData) -> None:
    # Leading zeros are part of a payer id.
    assert data.lookup_payer("00430") == PayerRef("00430", "C-10000430", "MEDICARE")
    assert data.lookup_payer(" 87726 ").erp_customer_id == "C-10087726"
    assert data.lookup_charge("J1100") == ChargeRef("J1100", "0636", "4100-530", "CC-PHARM", "PHARMACY")
    assert data.lookup_department("LAB").cost_center == "CC-LAB"
    assert data.facility("NORTHCAMPUS") == FacilityRef("NORTHCAMPUS", "NORTH")


UNMAPPED_PAYER = "unmapped payer: not in reference table payers"
UNMAPPED_CHARGE = "unmapped charge code: not in reference table charge_codes"
UNMAPPED_DEPARTMENT = "unmapped department: not in reference table departments"


def test_unmapped_lookups_have_exact_reasons_and_context(data: ReferenceData) -> None:
    amount = Decimal("125.00")
    cases = [
        (lambda: data.lookup_payer("430", control_id="MSG1", facility="NORTH", amount=amount), UNMAPPED_PAYER),
        (lambda: data.lookup_charge("99999", facility="NORTH", amount=amount), UNMAPPED_CHARGE),
        (lambda: data.lookup_department("XRAY", facility="NORTH", amount=amount), UNMAPPED_DEPARTMENT),
    ]
    for call, reason in cases:
        with pytest.raises(UnmappedError) as caught:
            call()
        error = caught.value
        assert isinstance(error, TranslationError)
        assert (error.reason, error.facility, error.amount) == (reason, "NORTH", amount)
    with pytest.raises(UnmappedError, match=r"^unmapped facility: not in reference table facilities$"):
        data.facility("EAST")


def test_unmapped_payer_reason_names_the_table_not_the_value(data: ReferenceData) -> None:
    # Issue 10: the sender's value stays out of reasons; the error keeps it as `key`.
    empty = ReferenceData({})
    with pytest.raises(UnmappedError) as caught:
        empty.lookup_payer("87726", control_id="C1")
    assert (caught.value.reason, caught.value.table, caught.value.key) == (UNMAPPED_PAYER, "payers", "87726")
    assert caught.value.control_id == "C1"


def test_canonical_facility_name_is_its_own_alias(data: ReferenceData) -> None:
    assert data.facility("SOUTH") == FacilityRef("SOUTH", "SOUTH")


def test_long_key_is_cut_in_reason(data: ReferenceData) -> None:
    with pytest.raises(UnmappedError) as caught:
        data.lookup_charge("X" * 200)
    assert len(caught.value.reason) < 60


def test_bom_is_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path / "departments.csv", "department,cost_center\r\nLAB,CC-LAB\r\n", bom=True)
    table = load_table(path, SPECS["departments"])
    assert table.get("LAB") == {"department": "LAB", "cost_center": "CC-LAB"}


def test_extra_columns_and_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "note,department,cost_center\nx,LAB,CC-LAB\n\n,,\ny,RAD,CC-RAD\n")
    assert sorted(load_table(path, SPECS["departments"]).rows) == ["LAB", "RAD"]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "codes.csv", "charge_code,revenue_code,cost_center\n99213,0510,CC\n")
    assert problems_of(path, "charge_codes") == [
        f"{path}: line 1: charge_codes table is missing column(s) gl_account, service_line"
    ]


def test_every_row_problem_is_reported_with_lines(tmp_path: Path) -> None:
    text = "payer_id,erp_customer_id,payer_group\n87726,C1,G\n60054,C2,G\n,C3,G\n87726,C4,G\n60054,C5\n"
    path = write(tmp_path / "payers.csv", text)
    assert problems_of(path, "payers") == [
        f"{path}: line 4: empty payer_id",
        f"{path}: line 5: duplicate payer_id 87726 (first on line 2)",
        f"{path}: line 6: 2 field(s), the header has 3",
    ]


def test_empty_file_and_bad_encoding(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path / "e.csv", ""), "payers") == [
        f"{tmp_path / 'e.csv'}: empty file, expected a header line"
    ]
    bad = tmp_path / "b.csv"
    bad.write_bytes(b"payer_id,erp_customer_id,payer_group\n87726,M\xfcller,G\n")
    assert problems_of(bad, "payers") == [f"{bad}: line 2: not UTF-8 (byte offset 44)"]


def test_validate_tables_collects_all_files(tmp_path: Path) -> None:
    bad = write(tmp_path / "departments.csv", "department\nLAB\n")
    problems = validate_tables(
        {"payers": PATHS["payers"], "departments": bad, "nope": bad, "facilities": tmp_path / "x"}
    )
    assert problems[0].startswith("unknown reference table 'nope'")
    assert problems[1] == f"{bad}: line 1: departments table is missing column(s) cost_center"
    assert problems[2].startswith(f"{tmp_path / 'x'}: cannot read facilities table")
    assert len(problems) == 3


def test_store_construction_raises_all_problems(tmp_path: Path) -> None:
    bad = write(tmp_path / "departments.csv", "department\nLAB\n")
    with pytest.raises(ReferenceDataError) as caught:
        ReferenceStore({"departments": bad, "payers": tmp_path / "missing.csv"})
    assert len(caught.value.problems) == 2


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, ReferenceStore]:
    path = tmp_path / "charge_codes.csv"
    shutil.copy(PATHS["charge_codes"], path)
    return path, ReferenceStore({"charge_codes": path})


def age(path: Path, seconds: float = 60) -> None:
    """Move the file's mtime into the past, past the racy window, as an old file would be."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


def test_reload_picks_up_a_changed_table(live: tuple[Path, ReferenceStore]) -> None:
    path, store = live
    before = store.data
    with pytest.raises(UnmappedError):
        before.lookup_charge("99999")
    with path.open("a", encoding="utf-8") as f:
        f.write("99999,0999,4999-000,CC-X,OTHER\n")
    assert store.maybe_reload() == []
    assert store.data.lookup_charge("99999").gl_account == "4999-000"
    # A snapshot taken before the reload stays as it was.
    with pytest.raises(UnmappedError):
        before.lookup_charge("99999")


def test_unchanged_file_is_not_swapped(live: tuple[Path, ReferenceStore]) -> None:
    path, store = live
    age(path)
    store.maybe_reload()
    snapshot = store.data
    assert store.maybe_reload() == []
    assert store.data is snapshot
    os.utime(path)  # touched, same bytes: re-hashed but not swapped
    assert store.maybe_reload() == []
    assert store.data is snapshot


def test_same_size_rewrite_within_the_same_tick_is_seen(live: tuple[Path, ReferenceStore]) -> None:
    path, store = live
    stat = path.stat()
    path.write_text(path.read_text(encoding="utf-8").replace("CC-LAB", "CC-LBX"), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime and size as before
    assert store.maybe_reload() == []
    assert store.data.lookup_charge("80053").cost_center == "CC-LBX"


def test_invalid_new_file_keeps_the_old_table_and_is_reported_once(live: tuple[Path, ReferenceStore]) -> None:
    path, store = live
    good = path.read_text(encoding="utf-8")
    path.write_text(good + "99213,0510,4100-200,CC-CLINIC,AMBULATORY\n", encoding="utf-8")
    problems = store.maybe_reload()
    assert problems == [
        f"{path}: line 7: duplicate charge_code 99213 (first on line 2) (keeping the previous charge_codes table)"
    ]
    assert store.data.lookup_charge("99213").revenue_code == "0510"
    assert store.maybe_reload() == []  # already reported
    path.unlink()
    assert len(store.maybe_reload()) == 1  # a vanished file is reported too, table kept
    assert store.data.lookup_charge("80053").service_line == "LABORATORY"
    path.write_text(good.replace("LABORATORY", "LAB-SVC"), encoding="utf-8")
    assert store.maybe_reload() == []
    assert store.data.lookup_charge("80053").service_line == "LAB-SVC"
