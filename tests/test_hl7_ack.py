"""HL7 acknowledgements: structure checked with hl7.parse, error segments, bytes, codes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import hl7
import pytest

from canonical.errors import NotHl7Error, TranslationError, UnsupportedMessageError
from canonical.hl7v2.ack import AckError, ack_code, ack_error_for, build_ack, next_control_id
from canonical.hl7v2.reader import peek_header

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hl7"
NOW = datetime(2024, 3, 5, 14, 30, 7, tzinfo=UTC)


def header_of(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parsed(ack: bytes) -> hl7.Message:
    assert ack.endswith(b"\r") and b"\n" not in ack
    return hl7.parse(ack.decode("latin-1"))


def test_accept_ack_swaps_sender_and_receiver_and_echoes_msh10() -> None:
    header = peek_header(header_of("dft_p03_charge_and_credit.hl7"))
    ack = build_ack(header, "AA", now=NOW, ack_control_id="ACK0001")
    msg = parsed(ack)
    assert str(msg.segment("MSH")[3]) == "FICUS" and str(msg.segment("MSH")[4]) == "ERP"
    assert str(msg.segment("MSH")[5]) == "SYNTH_HIS" and str(msg.segment("MSH")[6]) == "NORTHCLINIC"
    assert msg.extract_field("MSH", 1, 7) == "20240305143007"
    assert str(msg.segment("MSH")[9]) == "ACK^P03^ACK"
    assert msg.extract_field("MSH", 1, 10) == "ACK0001"
    assert (msg.extract_field("MSH", 1, 11), msg.extract_field("MSH", 1, 12)) == ("P", "2.5.1")
    assert msg.extract_field("MSH", 1, 18) == "UNICODE UTF-8"
    assert str(msg.segment("MSA")) == "MSA|AA|DFT0001"
    assert ack_code(ack) == ("AA", "DFT0001")
    assert len(ack.split(b"\r")) == 3  # MSH, MSA and the final empty piece


def test_ack_uses_the_inbound_delimiters() -> None:
    header = peek_header(header_of("adt_a01_custom_delimiters.hl7"))
    ack = build_ack(header, "AE", text="bad | value", now=NOW, ack_control_id="X1")
    assert ack.startswith(b"MSH#*!@$#FICUS#ERP#SYNTH@F@ADT#NORTH@S@CLINIC#20240305143007##ACK*A01*ACK#X1#P#2.4\r")
    assert b"\rMSA#AE#ADT0101#bad | value\r" in ack
    assert ack_code(ack) == ("AE", "ADT0101")


def test_text_is_escaped() -> None:
    header = peek_header(header_of("adt_a01.hl7"))
    ack = build_ack(header, "AR", text="a|b^c&d~e\\f\ng")
    assert b"MSA|AR|ADT0001|a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0A\\g\r" in ack
    assert parsed(ack).extract_field("MSA", 1, 3) == "a|b^c&d~e\\f\ng"


def test_error_segment_v25_style() -> None:
    header = peek_header(header_of("dft_p03_charge_and_credit.hl7"))
    error = AckError("102", "FT1[2]-11 extended amount is not a decimal", "FT1[2]-11")
    ack = build_ack(header, "AE", text="rejected", error=error, now=NOW)
    err = parsed(ack).segment("ERR")
    assert str(err) == ("ERR||FT1^2^11|102^Data type error^HL70357|E||||FT1[2]-11 extended amount is not a decimal")


def test_error_segment_before_v25_uses_err1() -> None:
    header = peek_header(header_of("dft_p03_cp1252.hl7"))  # version 2.3
    ack = build_ack(header, "AR", error=AckError("200", "DFT^P11 unsupported"), now=NOW)
    assert ack.split(b"\r")[2] == b"ERR|^^^200&Unsupported message type&HL70357"


def test_error_without_locator_and_unknown_code() -> None:
    header = peek_header(header_of("adt_a01.hl7"))
    ack = build_ack(header, "AE", error=AckError("999", "odd"), now=NOW)
    assert ack.split(b"\r")[2] == b"ERR|||999^^HL70357|E||||odd"


def test_generic_ack_for_what_is_not_hl7() -> None:
    ack = build_ack(None, "AR", text="message does not start with an MSH segment", now=NOW, ack_control_id="G1")
    assert ack == (b"MSH|^~\\&|||||20240305143007||ACK|G1|P|2.5\rMSA|AR||message does not start with an MSH segment\r")
    assert ack_code(ack) == ("AR", "")


def test_header_bytes_are_echoed_exactly_and_text_in_the_declared_charset() -> None:
    raw = header_of("dft_p03_cp1252.hl7")  # MSH-4 "SÜDKLINIK" in windows-1252, MSH-18 8859/1
    header = peek_header(raw)
    ack = build_ack(header, "AE", text="Gebühr fehlt", now=NOW)
    assert b"|SYNTH_HIS|S\xdcDKLINIK|" in ack  # receiving app/facility of the ACK
    assert b"|Geb\xfchr fehlt\r" in ack
    assert ack.split(b"\r")[0].endswith(b"|8859/1")


def test_ascii_only_when_nothing_is_declared() -> None:
    ack = build_ack(None, "AR", text="Zoë")
    assert ack.split(b"\r")[1] == b"MSA|AR||Zo?"


def test_fresh_control_ids_are_unique_and_fit_msh10() -> None:
    ids = {next_control_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 20 for i in ids)
    header = peek_header(header_of("adt_a01.hl7"))
    first, second = build_ack(header, "AA"), build_ack(header, "AA")
    assert parsed(first).extract_field("MSH", 1, 10) != parsed(second).extract_field("MSH", 1, 10)


def test_default_time_is_now_in_utc() -> None:
    before = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    stamp = parsed(build_ack(None, "CA")).extract_field("MSH", 1, 7)
    assert before <= stamp <= datetime.now(UTC).strftime("%Y%m%d%H%M%S")


@pytest.mark.parametrize("code", ["AA", "AE", "AR", "CA", "CE", "CR"])
def test_every_acknowledgement_code(code: str) -> None:
    assert ack_code(build_ack(None, code))[0] == code


def test_unknown_acknowledgement_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        build_ack(None, "OK")


def test_ack_code_tolerates_mllp_framing_and_lf() -> None:
    assert ack_code(b"\x0bMSH|^~\\&|A|B|C|D|1||ACK|9|P|2.3\nMSA|CA|M-1\n\x1c\r") == ("CA", "M-1")


@pytest.mark.parametrize("payload", [b"", b"garbage", b"MSH|^~\\&|A|B|C|D|1||ACK|9|P|2.3\rERR|x\r"])
def test_ack_code_rejects_what_is_no_ack(payload: bytes) -> None:
    with pytest.raises(NotHl7Error):
        ack_code(payload)


def test_ack_error_for_each_error_kind() -> None:
    assert ack_error_for(NotHl7Error("empty message")) == AckError("100", "empty message")
    unsupported = UnsupportedMessageError("x", message_type="ORU", trigger="R01")
    assert ack_error_for(unsupported).code == "200"
    failed = TranslationError(
        "FT1[1]-6 transaction type is missing", control_id="C", locator="FT1[1]-6", amount=Decimal("1"), hl7_code="101"
    )
    assert ack_error_for(failed) == AckError("101", "FT1[1]-6 transaction type is missing", "FT1[1]-6")
