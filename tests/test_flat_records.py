"""canonical.records: value conversion, mapping validation, record -> event, deterministic ids."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from canonical.context import TranslationContext
from canonical.errors import TranslationError
from canonical.records import FieldSpec, RecordError, RecordMapping, convert, map_record, row_values
from canonical.schemas import default_models, event_schemas

FLAT = Path(__file__).resolve().parent.parent / "fixtures" / "flat"
CTX = TranslationContext("billing-export", "live", "raw.billing-export/1", datetime(2024, 1, 6, tzinfo=UTC))
CHARGES = RecordMapping.model_validate(tomllib.loads((FLAT / "billing_export.toml").read_text())["mapping"])
ROW = {
    "transaction_id": "T-1",
    "service_date": "01/05/2024",
    "account_number": "ACC-1",
    "charge_code": "99213",
    "amount": "125.00",
    "quantity": "1",
    "facility": "NORTH",
}


def spec(type_: str = "string", **kw: Any) -> FieldSpec:
    return FieldSpec.model_validate({"field": "f", "type": type_, **kw})


def charge(**changes: object) -> Any:
    (event,) = map_record({**ROW, **changes}, CHARGES, CTX, unit="sha", index=7, locator="line 9")
    return event


# --- convert ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12.50", Decimal("12.50")), ("-3", Decimal(-3)), (" .5 ", Decimal("0.5")), (7, Decimal(7)),
     (Decimal("1.10"), Decimal("1.10")), (0.1, Decimal("0.1")), (1234.5, Decimal("1234.5"))],
)
def test_decimal_conversion_is_exact(value: object, expected: Decimal) -> None:
    result = convert(value, spec("decimal"))
    assert result == expected and isinstance(result, Decimal)
    assert str(result) == str(expected)


@pytest.mark.parametrize("value", ["1,234.50", "1e5", "$12", "NaN", "12.5-", "(3.00)", float("inf"), True])
def test_decimal_rejects_anything_but_plain_numbers(value: object) -> None:
    with pytest.raises(RecordError) as info:
        convert(value, spec("decimal"))
    assert info.value.field == "f"
    assert str(value) not in str(info.value) or str(value) == "True"


def test_integer_dates_and_strings() -> None:
    assert convert("42", spec("integer")) == 42
    assert convert(Decimal("3"), spec("integer")) == 3
    with pytest.raises(RecordError):
        convert("4.5", spec("integer"))
    assert convert("20240105", spec("date", format="%Y%m%d")) == date(2024, 1, 5)
    assert convert("2024-01-05", spec("date")) == date(2024, 1, 5)
    assert convert(datetime(2024, 1, 5), spec("date")) == date(2024, 1, 5)
    with pytest.raises(RecordError, match="time of day"):
        convert(datetime(2024, 1, 5, 10, 30), spec("date"))
    with pytest.raises(RecordError, match="format %m/%d/%Y"):
        convert("2024-01-05", spec("date", format="%m/%d/%Y"))
    assert convert("2024-01-05T07:00", spec("datetime")) == datetime(2024, 1, 5, 7)
    assert convert(Decimal("1234"), spec()) == "1234"
    assert convert(Decimal("1E+3"), spec()) == "1000"
    assert convert("  A1 ", spec()) == "A1"


def test_missing_values_default_and_required() -> None:
    with pytest.raises(RecordError, match="missing"):
        convert("  ", spec())
    assert convert(None, spec(required=False)) is None
    assert convert("", spec("decimal", default="0.00")) == Decimal("0.00")


def test_field_spec_rejects_inconsistent_sources() -> None:
    with pytest.raises(ValidationError, match="column or index"):
        spec(column="A", index=1)
    with pytest.raises(ValidationError, match="both start and length"):
        spec(start=1)
    with pytest.raises(ValidationError, match="format applies"):
        spec("decimal", format="%Y")
    with pytest.raises(ValidationError, match="extra"):
        FieldSpec.model_validate({"field": "f", "colum": "A"})


# --- mapping validation ---------------------------------------------------------------


def test_mapping_lists_every_missing_required_field() -> None:
    with pytest.raises(ValidationError) as info:
        RecordMapping.model_validate({"target": "charges", "fields": [{"field": "amount", "column": "AMT"}]})
    message = str(info.value)
    assert "charges needs these fields mapped: charge_code, service_date" in message
    assert "needs one of: account_number, encounter_number" in message


def test_mapping_refuses_free_text_unknown_fields_bad_types_and_zones() -> None:
    with pytest.raises(ValidationError) as info:
        RecordMapping.model_validate(
            {
                "target": "supply_usage",
                "key": ["lot"],
                "timezone": "Mars/Olympus",
                "fields": [
                    {"field": "item_description", "column": "DESC"},
                    {"field": "quantity", "type": "string"},
                    {"field": "colour"},
                ],
            }
        )
    message = str(info.value)
    assert "'item_description': free text is never carried" in message
    assert "'quantity': type 'string' not allowed (use decimal)" in message
    assert "'colour' is not a supply_usage field" in message
    assert "key field 'lot' is not mapped" in message
    assert "unknown timezone 'Mars/Olympus'" in message


def test_mapping_fills_omitted_types_from_the_target() -> None:
    types = {f.field: f.type for f in CHARGES.fields}
    assert types["amount"] == "decimal" and types["service_date"] == "date" and types["charge_code"] == "string"


# --- records to events ------------------------------------------------------------------


def test_charge_posted_with_control_id_and_facility() -> None:
    event = charge()
    assert event.type == "org.ficus.revenue.charge.posted.v1"
    assert event.data.control_id == "T-1" and event.data.ft1_index == 1
    assert event.data.transaction_type == "CG"
    assert event.data.net_amount == Decimal("125.00")
    assert event.data.service_date == "2024-01-05"
    assert event.ficusfacility == "NORTH" and event.data.currency == "USD"
    body = json.loads(event.to_json())
    assert body["data"]["amount"] == "125.00"
    jsonschema.validate(body, event_schemas(default_models())[event.type])


@pytest.mark.parametrize(
    ("changes", "net"),
    [({"amount": "-40.00"}, "-40.00"), ({"quantity": "-1"}, "-125.00"), ({"transaction_type": "cr"}, "-125.00"),
     ({"transaction_type": "CD", "amount": "-5"}, "-5")],
)
def test_credited_charges(changes: dict[str, str], net: str) -> None:
    event = charge(**changes)
    assert event.type == "org.ficus.revenue.charge.credited.v1"
    assert event.data.net_amount == Decimal(net)


def test_ids_are_deterministic_from_interface_unit_key_and_type() -> None:
    first, again = charge(), charge()
    assert first.id == again.id == first.model_copy().id
    assert charge(amount="130.00").id == first.id  # same record key: a corrected re-send is the same event
    assert charge(transaction_id="T-2").id != first.id
    assert charge(amount="-1").id != first.id  # credited is another type
    (other_file,) = map_record(ROW, CHARGES, CTX, unit="sha2", index=7, locator="line 9")
    assert other_file.id != first.id


def test_ids_fall_back_to_the_record_position_without_a_key() -> None:
    fields = [f.model_copy(update={"required": False}) if f.field == "transaction_id" else f for f in CHARGES.fields]
    mapping = CHARGES.model_copy(update={"fields": fields})
    row = {**ROW, "transaction_id": ""}
    (event,) = map_record(row, mapping, CTX, unit="sha", index=7, locator="line 9")
    assert event.data.control_id == "sha:7" and event.subject == "sha:7"
    assert map_record(row, mapping, CTX, unit="sha", index=7, locator="line 9")[0].id == event.id
    (moved,) = map_record(row, mapping, CTX, unit="sha", index=8, locator="line 10")
    assert moved.id != event.id


def test_errors_name_locator_and_every_field_never_free_text() -> None:
    with pytest.raises(TranslationError) as info:
        charge(amount="1,234.50", service_date="2024-13-45", account_number="")
    error = info.value
    assert error.reason == (
        "line 9: service_date: not a date in format %m/%d/%Y; account_number: missing; "
        "amount: not a plain decimal number"
    )
    assert error.locator == "line 9 service_date"
    assert error.control_id == "T-1" and error.facility == "NORTH" and error.amount is None
    with pytest.raises(TranslationError) as info:
        charge(service_date="x")
    assert info.value.amount == Decimal("125.00")


def test_database_rows_are_already_typed() -> None:
    mapping = RecordMapping.model_validate(
        {
            "target": "purchase_orders",
            "key": ["po_number", "line_number"],
            "facility_field": "facility",
            "fields": [
                {"field": "po_number", "column": "PO_NO"},
                {"field": "line_number", "column": "LINE_NO"},
                {"field": "vendor_id", "column": "VENDOR"},
                {"field": "item_id", "column": "ITEM"},
                {"field": "quantity", "column": "QTY"},
                {"field": "unit_cost", "column": "COST"},
                {"field": "approved_at", "column": "APPROVED", "type": "datetime"},
                {"field": "facility", "column": "FAC", "required": False},
            ],
        }
    )
    row = {"po_no": 45001, "LINE_NO": Decimal("2"), "VENDOR": "V-77", "ITEM": "SUP-1", "QTY": 3.0,
           "COST": Decimal("19.99"), "APPROVED": datetime(2024, 1, 5, 14, 30), "FAC": None}
    (event,) = map_record(row_values(row, mapping.fields), mapping, CTX, unit="dbo.po_lines", index=0,
                          locator="row po=45001")
    assert event.type == "org.ficus.supply.purchase_order.approved.v1"
    assert event.data.record_key == "45001|2" and event.data.line_number == 2
    assert event.data.amount == Decimal("59.970") and event.data.approved_at == "2024-01-05T14:30:00+00:00"
    assert event.nats_subject() == "canonical.supply.purchase_order.approved"
    assert event.ficusfacility == ""
