"""ADT and DFT^P03 mappings on the synthetic fixtures: events, envelope, ids, errors."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from canonical import subjects
from canonical.envelope import EVENT_CLASSES, ChargeEvent, CloudEvent, EncounterEvent, event_id
from canonical.errors import CanonicalError, NotHl7Error, TranslationError, UnsupportedMessageError
from canonical.events import EVENT_MODELS, ChargeData, EncounterData
from canonical.translate import MAPPINGS, TranslationContext, check_mapping, translate_hl7

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hl7"
RECEIVED = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
CTX = TranslationContext("his-charges", "live", "raw.his-charges/7", RECEIVED)
# Patient data present in the fixtures that must never reach an event or a reason.
PATIENT_DATA = [
    "TESTPATIENT",
    "ALPHA",
    "BETA",
    "GAMMA",
    "DELTA",
    "PSILON",
    "19800101",
    "19750615",
    "19851111",
    "SAMPLE",
    "TESTTOWN",
    "Bahnhof",
]


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def edit(data: bytes, segment: str, field: int, value: str, occurrence: int = 1) -> bytes:
    """The message with one field replaced (HL7 numbering, "|" messages only)."""
    lines = re.split(rb"\r\n|\r|\n", data.strip())
    seen = 0
    for i, line in enumerate(lines):
        parts = line.decode("latin-1").split("|")
        if parts[0] == segment:
            seen += 1
            if seen == occurrence:
                index = field - 1 if segment == "MSH" else field
                parts += [""] * (index + 1 - len(parts))
                parts[index] = value
                lines[i] = "|".join(parts).encode("latin-1")
    return b"\r".join(lines) + b"\r"


def drop(data: bytes, segment: str) -> bytes:
    lines = re.split(rb"\r\n|\r|\n", data.strip())
    return b"\r".join(line for line in lines if not line.startswith(segment.encode() + b"|")) + b"\r"


def translate(data: bytes, mapping: str = "hl7v2", ctx: TranslationContext = CTX) -> list[CloudEvent]:
    return translate_hl7(data, mapping, ctx).events


def payload(event: CloudEvent) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(event.to_json())
    return decoded


def translation_error(data: bytes) -> TranslationError:
    with pytest.raises(TranslationError) as caught:
        translate(data)
    return caught.value


# -- DFT^P03 ----------------------------------------------------------------------------


def test_dft_gives_one_event_per_ft1_posted_then_credited() -> None:
    result = translate_hl7(raw("dft_p03_charge_and_credit.hl7"), "hl7v2.dft_p03", CTX)
    assert (result.header.message_type, result.header.control_id) == ("DFT", "DFT0001")
    posted, credited = result.events
    assert isinstance(posted, ChargeEvent) and isinstance(credited, ChargeEvent)
    assert posted.type == "org.ficus.revenue.charge.posted.v1"
    assert credited.type == "org.ficus.revenue.charge.credited.v1"
    assert posted.nats_subject() == "canonical.revenue.charge.posted"
    assert credited.nats_subject() == "canonical.revenue.charge.credited"


def test_charge_fields() -> None:
    event = translate(raw("dft_p03_charge_and_credit.hl7"))[0]
    assert payload(event)["data"] == {
        "control_id": "DFT0001",
        "ft1_index": 1,
        "transaction_id": "TXN-1001",
        "transaction_batch_id": "BATCH-77",
        "transaction_type": "CG",
        "service_date": "2024-03-05T10:00:00+00:00",
        "posting_date": "2024-03-05T14:30:00+00:00",
        "charge_code": {"code": "80053", "text": "COMPREHENSIVE METABOLIC PANEL", "system": "CPT"},
        "procedure_code": {"code": "80053", "text": "COMPREHENSIVE METABOLIC PANEL", "system": "CPT"},
        "quantity": "1",
        "amount": "125.50",
        "currency": "USD",
        "net_amount": "125.50",
        "unit_amount": "125.50",
        "department": "LAB",
        "performing_provider_id": "DOC0042",
        "ordering_provider_id": "DOC0043",
        "account_number": "ACCT000456",
        "encounter_number": "VIS000789",
        "patient_id": "MRN000123",
        "facility": "NORTHCLINIC",
        "erp": None,  # no reference tables in a pure translation
    }


def test_credit_line() -> None:
    data = payload(translate(raw("dft_p03_charge_and_credit.hl7"))[1])["data"]
    assert (data["ft1_index"], data["transaction_type"]) == (2, "CD")
    assert (data["service_date"], data["amount"], data["net_amount"]) == ("2024-03-04", "-45.00", "-45.00")
    assert data["ordering_provider_id"] is None
    assert data["charge_code"] == {"code": "99213", "text": "OFFICE VISIT EST PT", "system": "CPT"}


@pytest.mark.parametrize(
    ("ttype", "quantity", "amount", "action", "net"),
    [
        ("CG", "1", "10.00", "posted", "10.00"),
        ("CG", "-1", "10.00", "credited", "-10.00"),
        ("CG", "1", "-10.00", "credited", "-10.00"),
        ("CD", "1", "10.00", "credited", "-10.00"),
        ("CR", "", "10", "credited", "-10"),
        ("CG", "", "", "posted", None),
    ],
)
def test_posted_or_credited(ttype: str, quantity: str, amount: str, action: str, net: str | None) -> None:
    data = raw("dft_p03_charge_and_credit.hl7")
    data = edit(edit(edit(data, "FT1", 6, ttype), "FT1", 10, quantity), "FT1", 11, amount)
    event = translate(data)[0]
    assert event.type == f"org.ficus.revenue.charge.{action}.v1"
    assert payload(event)["data"]["net_amount"] == net


def test_money_is_a_json_string_never_a_float() -> None:
    body = translate(raw("dft_p03_charge_and_credit.hl7"))[0].to_json()
    assert b'"amount":"125.50"' in body and b'"quantity":"1"' in body
    assert isinstance(translate(raw("dft_p03_charge_and_credit.hl7"))[0].data, ChargeData)


def test_bad_amount_is_a_translation_error_with_business_context() -> None:
    error = translation_error(raw("dft_p03_bad_amount.hl7"))
    assert error.reason == "FT1[2]-11 extended amount is not a decimal"
    assert (error.control_id, error.locator, error.facility) == ("DFT0002", "FT1[2]-11", "NORTHCLINIC")
    assert error.amount == Decimal("125.50")  # the money that could be read is held up
    assert error.hl7_code == "102"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("field", "value", "reason", "locator"),
    [
        (6, "", "FT1[1]-6 transaction type is missing", "FT1[1]-6"),
        (6, "PY", "FT1[1]-6 transaction type is not one of CD, CG, CR", "FT1[1]-6"),
        (10, "1e3", "FT1[1]-10 quantity is not a decimal", "FT1[1]-10"),
        (11, "NaN", "FT1[1]-11 extended amount is not a decimal", "FT1[1]-11"),
        (12, "12,00", "FT1[1]-12 unit amount is not a decimal", "FT1[1]-12"),
        (4, "20241301", "FT1[1]-4 is not a valid HL7 timestamp", "FT1[1]-4"),
        (5, "yesterday", "FT1[1]-5 is not a valid HL7 timestamp", "FT1[1]-5"),
    ],
)
def test_bad_ft1_fields(field: int, value: str, reason: str, locator: str) -> None:
    error = translation_error(edit(raw("dft_p03_charge_and_credit.hl7"), "FT1", field, value))
    assert (error.reason, error.locator) == (reason, locator)


def test_missing_codes() -> None:
    data = edit(edit(raw("dft_p03_charge_and_credit.hl7"), "FT1", 7, ""), "FT1", 25, "")
    assert translation_error(data).reason == "FT1[1] has no transaction code (FT1-7) or procedure code (FT1-25)"
    only_procedure = translate(edit(raw("dft_p03_charge_and_credit.hl7"), "FT1", 7, ""))[0]
    assert payload(only_procedure)["data"]["charge_code"] is None


def test_money_at_risk_is_the_gross_total_of_readable_amounts() -> None:
    data = edit(raw("dft_p03_charge_and_credit.hl7"), "FT1", 4, "not a date", occurrence=2)
    error = translation_error(data)
    assert (error.locator, error.amount) == ("FT1[2]-4", Decimal("170.50"))
    no_amounts = edit(edit(data, "FT1", 11, ""), "FT1", 11, "", occurrence=2)
    assert translation_error(no_amounts).amount is None


def test_message_level_errors() -> None:
    dft = raw("dft_p03_charge_and_credit.hl7")
    assert translation_error(drop(dft, "FT1")).reason == "DFT^P03 has no FT1 segment"
    assert translation_error(drop(dft, "PID")).reason == "DFT^P03 has no PID segment"
    anonymous = edit(edit(edit(dft, "PID", 3, ""), "PID", 18, ""), "PV1", 19, "")
    assert translation_error(anonymous).reason == (
        "DFT^P03 has no patient id (PID-3), account (PID-18) or visit (PV1-19)"
    )
    assert translation_error(edit(dft, "MSH", 7, "soon")).locator == "MSH-7"
    no_id = translation_error(edit(dft, "MSH", 10, ""))
    assert (no_id.reason, no_id.locator) == ("DFT^P03 has an empty MSH-10 control id", "MSH-10")


def test_pv1_is_optional_for_charges() -> None:
    data = payload(translate(drop(raw("dft_p03_charge_and_credit.hl7"), "PV1"))[0])["data"]
    assert data["encounter_number"] is None and data["account_number"] == "ACCT000456"


def test_windows_1252_charge() -> None:
    (event,) = translate(raw("dft_p03_cp1252.hl7"))
    data = payload(event)["data"]
    assert data["charge_code"]["text"] == "Ärztliche Gebühr \u2013 Beratung"
    assert (data["facility"], event.ficusfacility, data["currency"]) == ("SÜDKLINIK", "SÜDKLINIK", "EUR")
    assert data["service_date"] == "2024-03-05"


# -- envelope -------------------------------------------------------------------------------


def test_envelope_attributes() -> None:
    shadow = TranslationContext("his-charges", "shadow", "raw.his-charges/7", RECEIVED, "Europe/Berlin")
    event = translate(raw("dft_p03_charge_and_credit.hl7"), ctx=shadow)[1]
    body = payload(event)
    assert {k: v for k, v in body.items() if k != "data"} == {
        "specversion": "1.0",
        "id": event_id("his-charges", "SYNTH_HIS^NORTHCLINIC", "DFT0001", "org.ficus.revenue.charge.credited.v1", 2),
        "source": "ficus://his-charges",
        "type": "org.ficus.revenue.charge.credited.v1",
        "subject": "DFT0001/FT1[2]",
        "time": "2024-03-05T14:30:00+01:00",
        "datacontenttype": "application/json",
        "ficusinterface": "his-charges",
        "ficusfacility": "NORTHCLINIC",
        "ficusmode": "shadow",
        "ficusraw": "raw.his-charges/7",
        "ficuscorrelation": "SYNTH_HIS^NORTHCLINIC:DFT0001",
    }
    assert event.nats_subject() == "shadow.canonical.revenue.charge.credited"
    assert re.fullmatch(r"[0-9a-f]{32}", event.id)


def test_ids_are_deterministic_and_distinct() -> None:
    first = [e.id for e in translate(raw("dft_p03_charge_and_credit.hl7"))]
    again = [e.id for e in translate(raw("dft_p03_charge_and_credit.hl7"))]
    later = TranslationContext("his-charges", "live", "raw.his-charges/99", datetime.now(UTC))
    resent = [e.id for e in translate(raw("dft_p03_charge_and_credit.hl7"), ctx=later)]
    other = TranslationContext("other-feed", "live", "raw.other-feed/7", RECEIVED)
    elsewhere = [e.id for e in translate(raw("dft_p03_charge_and_credit.hl7"), ctx=other)]
    assert first == again == resent
    assert len(set(first)) == 2 and not set(first) & set(elsewhere)
    renumbered = edit(raw("dft_p03_charge_and_credit.hl7"), "MSH", 10, "DFT0099")
    assert not set(first) & {e.id for e in translate(renumbered)}


def test_events_read_back_through_the_base_envelope() -> None:
    for name in ("dft_p03_charge_and_credit.hl7", "adt_a01.hl7"):
        for event in translate(raw(name)):
            again = CloudEvent.model_validate_json(event.to_json())
            assert again.to_json() == event.to_json()
            assert type(again.data) is type(event.data)


def test_events_match_their_json_schema() -> None:
    assert set(EVENT_CLASSES) == set(EVENT_MODELS) == {t.name for t in subjects.ALL_EVENT_TYPES}
    for name in ("dft_p03_charge_and_credit.hl7", "adt_a01.hl7", "adt_a02.hl7", "adt_a03.hl7"):
        for event in translate(raw(name)):
            schema = EVENT_CLASSES[event.type].model_json_schema(mode="serialization")
            jsonschema.validate(payload(event), schema)


def test_no_patient_data_in_events() -> None:
    for name in sorted(p.name for p in FIXTURES.glob("*.hl7")):
        try:
            events = translate(raw(name))
        except CanonicalError as exc:
            assert not [word for word in PATIENT_DATA if word in exc.reason]
            continue
        for event in events:
            assert not [word for word in PATIENT_DATA if word in event.to_json().decode()], name


# -- ADT --------------------------------------------------------------------------------------


def test_admission() -> None:
    (event,) = translate(raw("adt_a01.hl7"), "hl7v2.adt")
    assert isinstance(event, EncounterEvent) and isinstance(event.data, EncounterData)
    assert event.type == "org.ficus.patient.encounter.admitted.v1"
    assert event.nats_subject() == "canonical.patient.encounter.admitted"
    assert (event.subject, event.time) == ("ADT0001/PV1", "2024-03-01T08:00:00+00:00")
    assert payload(event)["data"] == {
        "control_id": "ADT0001",
        "trigger": "A01",
        "encounter_number": "VIS000900",
        "account_number": "ACCT000654",
        "patient_id": "MRN000321",
        "patient_class": "I",
        "location": {"point_of_care": "WARD3", "room": "301", "bed": "B", "facility": "NORTHCLINIC"},
        "prior_location": None,
        "attending_provider_id": "DOC0042",
        "hospital_service": "MED",
        "admit_time": "2024-03-01T07:45:00+00:00",
        "discharge_time": None,
        "event_time": "2024-03-01T08:00:00+00:00",
        "facility": "NORTHCLINIC",
    }


def test_transfer_carries_the_prior_location() -> None:
    (event,) = translate(raw("adt_a02.hl7"))
    data = payload(event)["data"]
    assert event.type == "org.ficus.patient.encounter.transferred.v1"
    assert data["location"] == {"point_of_care": "ICU", "room": "12", "bed": "1", "facility": "NORTHCLINIC"}
    assert data["prior_location"] == {"point_of_care": "WARD3", "room": "301", "bed": "B", "facility": "NORTHCLINIC"}


def test_discharge_time_with_its_own_offset() -> None:
    ctx = TranslationContext("his-adt", "live", "raw.his-adt/1", RECEIVED, "America/Chicago")
    (event,) = translate(raw("adt_a03.hl7"), ctx=ctx)
    data = payload(event)["data"]
    assert event.type == "org.ficus.patient.encounter.discharged.v1"
    assert data["discharge_time"] == "2024-03-04T11:30:00-05:00"
    assert data["admit_time"] == "2024-03-01T07:45:00-06:00"
    assert data["event_time"] == event.time == "2024-03-04T11:30:00-06:00"


def test_update_without_evn2_uses_msh7() -> None:
    (event,) = translate(raw("adt_a08.hl7"))
    assert event.type == "org.ficus.patient.encounter.updated.v1"
    assert payload(event)["data"]["event_time"] == "2024-03-01T08:05:00+00:00"
    no_time = edit(raw("adt_a08.hl7"), "MSH", 7, "")
    assert translate(no_time)[0].time == RECEIVED.isoformat()


@pytest.mark.parametrize(
    ("trigger", "action"),
    [("A04", "registered"), ("A11", "admission_cancelled"), ("A13", "discharge_cancelled")],
)
def test_other_triggers(trigger: str, action: str) -> None:
    (event,) = translate(edit(raw("adt_a01.hl7"), "MSH", 9, f"ADT^{trigger}^ADT_A01"))
    assert event.type == f"org.ficus.patient.encounter.{action}.v1"
    assert event.nats_subject() == f"canonical.patient.encounter.{action}"
    assert payload(event)["data"]["prior_location"] is None


def test_custom_delimiters_and_escapes() -> None:
    (event,) = translate(raw("adt_a01_custom_delimiters.hl7"))
    data = payload(event)["data"]
    assert (data["patient_id"], data["account_number"], data["encounter_number"]) == (
        "MRN$777",
        "ACCT@0777",
        "VISA0777",
    )
    assert data["location"]["point_of_care"] == "ER$BAY"
    assert (data["facility"], event.time) == ("NORTH*CLINIC", "2024-03-01T08:00:00+01:00")
    assert event.ficuscorrelation == "SYNTH#ADT^NORTH*CLINIC:ADT0101"


def test_adt_errors() -> None:
    adt = raw("adt_a01.hl7")
    assert translation_error(drop(adt, "PV1")).reason == "ADT^A01 has no PV1 segment"
    assert translation_error(drop(adt, "PID")).reason == "ADT^A01 has no PID segment"
    assert translation_error(edit(adt, "EVN", 2, "2024-03-01")).reason == "EVN-2 is not a valid HL7 timestamp"
    assert translation_error(edit(adt, "PV1", 44, "x")).reason == "PV1-44 is not a valid HL7 timestamp"


# -- registry and unsupported messages --------------------------------------------------------


def test_registry() -> None:
    assert set(MAPPINGS) == {"hl7v2", "hl7v2.adt", "hl7v2.dft_p03"}
    assert check_mapping("hl7v2.dft_p03").supported == {("DFT", "P03")}
    assert ("ADT", "A13") in check_mapping("hl7v2.adt").supported
    assert check_mapping("hl7v2").supported == check_mapping("hl7v2.adt").supported | {("DFT", "P03")}
    with pytest.raises(ValueError, match=r"unknown HL7 v2 mapping 'hl7v2\.nope'"):
        check_mapping("hl7v2.nope")


@pytest.mark.parametrize(
    ("data", "mapping", "code"),
    [
        (edit(raw("adt_a01.hl7"), "MSH", 9, "ADT^A28^ADT_A05"), "hl7v2", "201"),
        (edit(raw("adt_a01.hl7"), "MSH", 9, "ORU^R01"), "hl7v2", "200"),
        (raw("dft_p03_charge_and_credit.hl7"), "hl7v2.adt", "200"),
        (raw("adt_a01.hl7"), "hl7v2.dft_p03", "200"),
    ],
)
def test_unsupported_messages(data: bytes, mapping: str, code: str) -> None:
    with pytest.raises(UnsupportedMessageError) as caught:
        translate(data, mapping)
    assert caught.value.hl7_code == code
    assert caught.value.reason.endswith(f"is not handled by mapping {mapping}")
    assert (caught.value.message_type, caught.value.trigger) != ("", "")


def test_not_hl7() -> None:
    with pytest.raises(NotHl7Error):
        translate(b"ISA*00*          *00*")


def test_context_is_checked_at_configuration_time() -> None:
    with pytest.raises(ValueError):
        TranslationContext("x", "modern", "r", RECEIVED)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        TranslationContext("x", "live", "r", RECEIVED, "Mars/Olympus")
    naive = TranslationContext("x", "live", "r", datetime(2024, 1, 1, 12), "Europe/Berlin")
    assert naive.received_iso == "2024-01-01T12:00:00+01:00"


def test_subject_names() -> None:
    assert (
        subjects.subject_for("org.ficus.revenue.claim.adjudicated.v2", "live") == "canonical.revenue.claim.adjudicated"
    )
    assert subjects.subject_for(subjects.CHARGE_POSTED.name, "shadow") == "shadow.canonical.revenue.charge.posted"
    with pytest.raises(ValueError):
        subjects.subject_for("com.example.thing", "live")
