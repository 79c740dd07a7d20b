"""translate_835 on synthetic fixtures: events, balancing, dead letters, determinism."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from canonical.context import TranslationContext
from canonical.envelope import event_id
from canonical.x12 import TransactionResult, translate_835

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "x12"
CTX = TranslationContext("payer-835", "live", "raw.payer-835/1", datetime(2024, 10, 16, 8, 0, tzinfo=UTC))
PREFIX = "org.ficus.claims."


def run(data: bytes, name: str = "test.835") -> list[TransactionResult]:
    return list(translate_835(io.BytesIO(data), CTX, source_name=name))


def fixture(name: str) -> list[TransactionResult]:
    return run((FIXTURES / name).read_bytes(), name)


def payloads(result: TransactionResult) -> list[tuple[str, dict[str, object]]]:
    assert result.error is None and result.events is not None
    out = []
    for event in result.events:
        doc = json.loads(event.to_json())
        out.append((doc["type"].removeprefix(PREFIX), doc["data"]))
    return out


def test_balanced_two_claims_with_plb() -> None:
    [result] = fixture("balanced_2claims_plb.835")
    events = payloads(result)
    assert Counter(t for t, _ in events) == {
        "remittance.received.v1": 1,
        "claim.adjudicated.v1": 2,
        "service_line.adjudicated.v1": 1,
        "adjustment.recorded.v1": 3,
        "denial.recorded.v1": 1,
        "provider_adjustment.recorded.v1": 1,
    }
    remit = events[0][1]
    assert remit["amount"] == "140.00" and remit["handling_code"] == "I" and remit["payment_method"] == "ACH"
    assert remit["payment_date"] == "2024-10-16" and remit["trace_number"] == "EFT0001"
    assert remit["payer_id"] == "PAYER99" and remit["payee_npi"] == "1234567893" and remit["payee_tin"] == "987654321"
    assert remit["total_paid"] == "150.00" and remit["total_provider_adjustment"] == "10.00"
    claims = [d for t, d in events if t == "claim.adjudicated.v1"]
    assert [c["paid"] for c in claims] == ["150.00", "0"]
    assert claims[1]["denied"] is True and claims[1]["remark_codes"] == ["MA130"]
    line = next(d for t, d in events if t == "service_line.adjudicated.v1")
    assert (
        line["procedure_code"] == "99213" and line["modifiers"] == ["25"] and line["line_control_number"] == "LINE0001"
    )
    assert line["service_date"] == "2024-09-01" and line["remark_codes"] == ["N130"]
    denial = next(d for t, d in events if t == "denial.recorded.v1")
    assert denial["reason_codes"] == ["CO-50"]
    plb = next(d for t, d in events if t == "provider_adjustment.recorded.v1")
    assert plb["adjustments"] == [{"reason_code": "WO", "reference": "OVERPAY1", "amount": "10.00"}]
    # Totals in events equal the BPR: sum(paid) - sum(PLB) == BPR02.
    paid = sum(Decimal(str(c["paid"])) for c in claims)
    assert paid - Decimal(str(plb["total"])) == Decimal(str(remit["amount"]))


def test_envelope_subjects_and_deterministic_ids() -> None:
    first = [e for r in fixture("balanced_2claims_plb.835") for e in r.events or ()]
    again = [e for r in fixture("balanced_2claims_plb.835") for e in r.events or ()]
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == len(first)
    # The emitter inlines event_id for speed: both must give the same ids.
    sender, _, control = first[0].ficuscorrelation.rpartition(":")
    expected = [event_id(CTX.interface, sender, control, e.type, n) for n, e in enumerate(first, 1)]
    assert [e.id for e in first] == expected
    assert first[0].nats_subject() == "canonical.claims.remittance.received"
    assert first[0].ficusfacility == "1234567893" and first[0].ficuscorrelation.endswith("000000101/7/0001")


def test_reversal_keeps_signs_and_nets_out() -> None:
    [result] = fixture("reversal_pair.835")
    claims = [d for t, d in payloads(result) if t == "claim.adjudicated.v1"]
    assert [(c["status_code"], c["paid"], c["reversal"]) for c in claims] == [
        ("22", "-250.00", True),
        ("1", "240.00", False),
        ("1", "100.00", False),
    ]
    adjustments = [d for t, d in payloads(result) if t == "adjustment.recorded.v1"]
    assert adjustments[0]["amount"] == "-50.00" and adjustments[0]["reversal"] is True


def test_unbalanced_transaction_is_dead_lettered_whole() -> None:
    [result] = fixture("unbalanced.835")
    assert result.events is None and result.error is not None
    assert result.error.reason == "ST 0001 of unbalanced.835: BPR02 150.00 != sum(CLP04) 150.00 - PLB 10.00"
    assert result.error.amount == Decimal("150.00") and result.error.facility == "1234567893"
    assert result.error.control_id == "0001"


def _tx(*body: str, st: str = "0001") -> str:
    segs = [f"ST*835*{st}", *body]
    return "~".join([*segs, f"SE*{len(segs) + 1}*{st}"]) + "~"


def test_claim_out_of_balance_names_the_figures() -> None:
    data = _tx("BPR*I*90*C*CHK", "LX*1", "CLP*PCN9*1*100*90*0*12", "CAS*CO*45*5")
    [result] = run(data.encode())
    assert result.error is not None
    assert "ST 0001 of test.835: claim 1 (CLP01 PCN9, segment 4): CLP03 100 - CAS 5 != CLP04 90" in result.error.reason


def test_one_bad_transaction_does_not_stop_the_next() -> None:
    good = _tx("BPR*I*10*C*CHK", "CLP*A*1*10*10*0*12", st="0002")
    bad = _tx("BPR*I*10*C*CHK", "CLP*A*1*ten*10*0*12", st="0001")
    results = run((bad + good).encode())
    assert [r.st_control for r in results] == ["0001", "0002"]
    assert results[0].error is not None and "CLP03 is not a number (segment 3)" in results[0].error.reason
    assert results[1].error is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "test.835: empty file"),
        (b"GARBAGE*1~", "test.835: not X12"),
        (b"ST*837*0001~BHT*0019~SE*3*0001~", "ST 0001 of test.835: not an 835: ST01 837"),
        (b"ST*835*0001~BPR*I*1*C*CHK~", "ST 0001 of test.835: missing SE at end of file"),
        (b"ST*835*0001~BPR*I*1*C*CHK~bad>id*1~SE*4*0001~", "broken segment id (segment 3)"),
        (b"ST*835*0001~BPR*I*1*C*CHK~SE*9*0001~", "SE01 9 != 3 segments"),
        (b"ST*835*0001~BPR*I*1*C*CHK" + b"*" * 12 + b"2024~SE*3*0001~", "BPR16 is not a CCYYMMDD date"),
        (b"ST*835*0001~TRN*1*X~SE*3*0001~", "no BPR segment"),
        (b"ST*835*0001~BPR*I*1*C*CHK~CAS*CO*45*1~SE*4*0001~", "CAS outside a claim"),
    ],
)
def test_malformed_input_gives_error_results(data: bytes, reason: str) -> None:
    results = run(data)
    assert results and all(r.events is None for r in results)
    assert any(r.error is not None and reason in r.error.reason for r in results), [r.error for r in results]


@pytest.mark.parametrize(("svc01", "qualifier", "code", "modifiers"), [
    ("HC:99213:25", "HC", "99213", ["25"]),  # the declared separator (':' without an envelope)
    ("HC>55669", "HC", "55669", []),  # '>' under ':' (seen in the corpus): the code is kept
    ("HC>55669>59", "HC", "55669", ["59"]),
    ("ZZ", "ZZ", None, []),  # a bare qualifier: nothing to split
    ("A>B>C", "A>B>C", None, []),  # not a two-character qualifier and '>': not guessed
])
def test_svc01_components(svc01: str, qualifier: str, code: str | None, modifiers: list[str]) -> None:
    data = _tx("BPR*I*10*C*CHK", "CLP*A*1*10*10*0*12", f"SVC*{svc01}*10*10")
    [result] = run(data.encode())
    assert result.error is None and result.events is not None
    [line] = [p for t, p in payloads(result) if t.endswith("service_line.adjudicated.v1")]
    assert (line["procedure_qualifier"], line["procedure_code"], line["modifiers"]) == (qualifier, code, modifiers)
