"""The HL7 v2 reader: header peek, delimiters and escapes, lazy message, charsets, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from canonical.errors import NotHl7Error, TranslationError
from canonical.hl7v2.charsets import codec_for_charset, decode_candidates, encode_codec
from canonical.hl7v2.escapes import DEFAULT_DELIMITERS, Delimiters, delimiters_for, escape, unescape
from canonical.hl7v2.reader import Hl7Message, decode_message, decode_text, peek_header
from canonical.timestamps import hl7_to_datetime, hl7_to_instant, hl7_to_iso

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hl7"

MSH = (
    b"MSH|^~\\&|APP^1.2.3^ISO|FAC|RAPP|RFAC|20240305143000||DFT^P03^DFT_P03|CTRL1|P^T|2.5.1^USA"
    b"|||AL|NE||8859/1~UNICODE UTF-8"
)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# -- peek_header -----------------------------------------------------------------------


def test_peek_header_reads_every_msh_field() -> None:
    h = peek_header(MSH + b"\rEVN|P03\r")
    assert (h.field_sep, h.encoding_chars) == ("|", "^~\\&")
    assert (h.sending_application, h.sending_facility) == ("APP", "FAC")
    assert (h.receiving_application, h.receiving_facility) == ("RAPP", "RFAC")
    assert h.timestamp == "20240305143000"
    assert (h.message_type, h.trigger, h.structure) == ("DFT", "P03", "DFT_P03")
    assert (h.control_id, h.processing_id, h.version) == ("CTRL1", "P", "2.5.1")
    assert (h.accept_ack_type, h.application_ack_type) == ("AL", "NE")
    assert h.charset == "8859/1"  # first repetition only
    assert h.enhanced
    assert h.sender == "APP^FAC"


def test_original_mode_header_is_not_enhanced() -> None:
    h = peek_header(b"MSH|^~\\&|A|F|||20240101||ADT^A01|1|P|2.3\r")
    assert not h.enhanced
    assert (h.accept_ack_type, h.application_ack_type, h.charset, h.structure) == ("", "", "", "")


@pytest.mark.parametrize(
    "prefix",
    [b"", b"\xef\xbb\xbf", b"\r\n\r\n", b"  \t", b"\x0b", b"\xef\xbb\xbf\n\x0b"],
    ids=["plain", "bom", "blank-lines", "blanks", "mllp-start", "bom-and-more"],
)
@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n", b""], ids=["cr", "lf", "crlf", "none"])
def test_peek_header_tolerates_prefixes_and_terminators(prefix: bytes, end: bytes) -> None:
    h = peek_header(prefix + b"MSH|^~\\&|A|F|||20240101||ADT^A01|C9|P|2.5" + end + (b"PID|1" if end else b""))
    assert (h.message_type, h.trigger, h.control_id, h.version) == ("ADT", "A01", "C9", "2.5")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"\xef\xbb\xbf \r\n", "empty message"),
        (b"PID|1||X\r", "message does not start with an MSH segment"),
        (b"hello world", "message does not start with an MSH segment"),
        (b"MSH", "MSH-1 field separator is missing"),
        (b"MSH|\n", "MSH-2 encoding characters are missing"),
        (b"MSH||A|F|||x||ADT^A01|1|P|2.5", "MSH-2 encoding characters are missing"),
        (b"MSH|^~\\\\&|A|F|||x||ADT^A01|1|P|2.5", "MSH-1/MSH-2 delimiters are ambiguous (a character repeats)"),
        (b"MSH|0~00||0|||||000|||2.8", "MSH-2 encoding characters contain a non-delimiter character"),
        (b"MSH|^~\\&#!|A|F", "MSH-2 encoding characters are more than 5 characters"),
        (b"MSHA^~\\&|A", "MSH-1 field separator is missing or not a delimiter character"),
        (b"MSH|^~\\&|A|F|||x|||1|P|2.5", "MSH-9 message type is missing"),
        (b"MSH|^~\\&|A|F|||x||^A01|1|P|2.5", "MSH-9 message type is missing"),
    ],
)
def test_peek_header_rejects_what_is_not_hl7(raw: bytes, reason: str) -> None:
    with pytest.raises(NotHl7Error) as caught:
        peek_header(raw)
    assert caught.value.reason == reason == str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_peek_header_never_fails_on_non_ascii_bytes() -> None:
    h = peek_header(b"MSH|^~\\&|APP|S\xdcD\xff|||2024||ADT^A01|\xe9|P|2.5\r")
    assert h.sending_facility == "S\xdcD\xff"  # latin-1 view of the bytes sent
    assert h.control_id == "\xe9"


def test_header_with_non_default_delimiters_and_escapes() -> None:
    h = peek_header(fixture("adt_a01_custom_delimiters.hl7"))
    assert (h.field_sep, h.encoding_chars) == ("#", "*!@$")
    assert h.delimiters == Delimiters("#", "*", "!", "@", "$")
    assert (h.sending_application, h.sending_facility) == ("SYNTH#ADT", "NORTH*CLINIC")
    assert (h.message_type, h.trigger, h.version) == ("ADT", "A01", "2.4")
    assert h.timestamp == "20240301080500+0100"


def test_header_with_five_encoding_characters() -> None:
    h = peek_header(b"MSH|^~\\&#|LAB|FAC|||20240101||OML^O21^OML_O21|X1|P|2.5.1\r")
    assert h.encoding_chars == "^~\\&#"
    assert h.delimiters.truncation == "#"
    assert h.structure == "OML_O21"


def test_old_three_character_msh2_gets_the_default_subcomponent() -> None:
    assert delimiters_for("|", "^~}") == Delimiters("|", "^", "~", "}", "&")
    assert delimiters_for("|", "^") == DEFAULT_DELIMITERS
    assert delimiters_for("^", "~|\\&") == Delimiters("^", "~", "|", "\\", "&")


# -- escapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain", "plain"),
        ("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F", "A|B^C&D~E\\F"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\H\\bold\\N\\ normal", "bold normal"),
        ("\\X0D\\\\X0A\\", "\r\n"),
        ("caf\\XC3A9\\", "café"),
        ("keep \\Z99\\ and \\C2842\\", "keep \\Z99\\ and \\C2842\\"),
        ("open \\F and more", "open \\F and more"),
        ("bad hex \\XZZ\\", "bad hex \\XZZ\\"),
        ("empty \\\\ seq", "empty \\\\ seq"),
    ],
)
def test_unescape(raw: str, expected: str) -> None:
    assert unescape(raw, DEFAULT_DELIMITERS, "utf-8") == expected


def test_hex_bytes_that_do_not_decode_fall_back_to_latin1() -> None:
    assert unescape("\\XE9\\", DEFAULT_DELIMITERS, "utf-8") == "é"


def test_unescape_uses_the_message_delimiters() -> None:
    d = Delimiters("#", "*", "!", "@", "$", "%")
    assert unescape("a@F@b@S@c@T@d@R@e@E@f@P@g\\F\\", d) == "a#b*c$d!e@f%g\\F\\"


def test_truncation_escape_without_truncation_character_is_kept() -> None:
    assert unescape("x\\P\\y", DEFAULT_DELIMITERS) == "x\\P\\y"


def test_escape_round_trips_every_delimiter_and_line_breaks() -> None:
    text = "a|b^c&d~e\\f\rg\nh"
    escaped = escape(text, DEFAULT_DELIMITERS)
    assert escaped == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\g\\X0A\\h"
    assert unescape(escaped, DEFAULT_DELIMITERS) == text
    assert escape("nothing special", DEFAULT_DELIMITERS) == "nothing special"


# -- Hl7Message -------------------------------------------------------------------------

MESSAGE = (
    "MSH|^~\\&|APP|FAC|||20240101||ADT^A01^ADT_A01|C1|P|2.5\r"
    "PID|1||ID1^^^HOSP&1.2&ISO^MR~ID2^^^SSA^SS||NAME^GIVEN\r"
    "\r"
    "OBX|1|TX|CODE||first\r\n"
    "OBX|2|TX|CODE||second\\T\\part\n"
    'PV1|1|""|  WARD  ^101\r'
)


def test_msh_field_numbering_follows_hl7() -> None:
    msg = Hl7Message(MESSAGE)
    assert msg.get("MSH", 1) == "|"
    assert msg.get("MSH", 2) == "^~\\&"
    assert msg.get("MSH", 2, component=2) == ""
    assert msg.get("MSH", 3) == "APP"
    assert msg.get("MSH", 9) == "ADT"
    assert msg.get("MSH", 9, component=2) == "A01"
    assert msg.get("MSH", 9, component=3) == "ADT_A01"
    assert msg.get("MSH", 10) == "C1"


def test_get_by_repetition_component_subcomponent_and_occurrence() -> None:
    msg = Hl7Message(MESSAGE)
    assert msg.get("PID", 3) == "ID1"
    assert msg.get("PID", 3, 2) == "ID2"
    assert msg.get("PID", 3, 2, 5) == "SS"
    assert msg.get("PID", 3, 1, 4) == "HOSP"
    assert msg.get("PID", 3, 1, 4, 2) == "1.2"
    assert msg.get("OBX", 5) == "first"
    assert msg.get("OBX", 5, occurrence=2) == "second&part"
    assert msg.get("PV1", 3) == "  WARD  "


@pytest.mark.parametrize(
    "where",
    [("PID", 99), ("PID", 3, 3), ("PID", 3, 1, 9), ("PID", 3, 1, 4, 4), ("ZZZ", 1), ("PID", 0, 2)],
)
def test_absent_positions_are_empty(where: tuple[str, int]) -> None:
    assert Hl7Message(MESSAGE).get(*where) == ""
    assert Hl7Message(MESSAGE).get("OBX", 5, occurrence=3) == ""


def test_segments_skip_blank_lines_and_accept_any_terminator() -> None:
    msg = Hl7Message(MESSAGE)
    assert msg.names() == ["MSH", "PID", "OBX", "OBX", "PV1"]
    assert len(msg) == 5
    assert [s.get(1) for s in msg.segments("OBX")] == ["1", "2"]
    assert msg.segments("NTE") == []
    assert msg.segment("PV1", 2) is None


def test_leaf_strips_blanks_and_reads_hl7_null_as_absent() -> None:
    pv1 = Hl7Message(MESSAGE).segment("PV1")
    assert pv1 is not None
    assert pv1.leaf(3) == "WARD"
    assert pv1.leaf(2) is None  # '""' means "no value"
    assert pv1.leaf(40) is None
    assert pv1.components(3, 3) == ["  WARD  ", "101", ""]


def test_segment_field_is_raw_and_field_zero_is_the_name() -> None:
    pid = Hl7Message(MESSAGE).segment("PID")
    assert pid is not None
    assert pid.field(0) == "PID"
    assert pid.field(3) == "ID1^^^HOSP&1.2&ISO^MR~ID2^^^SSA^SS"
    assert pid.repetitions(3) == 2
    assert pid.repetitions(4) == 0


def test_repr_never_shows_content() -> None:
    msg = Hl7Message(MESSAGE)
    assert "NAME" not in repr(msg) and "NAME" not in repr(msg.segment("PID"))


def test_damaged_lines_never_pass_for_segments() -> None:
    msg = Hl7Message("MSH|^~\\&|A|F|||1||ADT^A01|1|P|2.5\rPIDX|1\rPI\r4563-8EBD}|P|2.3\r")
    assert msg.names() == ["MSH", "PIDX", "PI", "4563-8EBD}"]
    assert msg.segment("PID") is None


def test_message_must_start_with_msh() -> None:
    with pytest.raises(NotHl7Error):
        Hl7Message("PID|1\rMSH|^~\\&|")
    with pytest.raises(NotHl7Error):
        Hl7Message("MSH\rPID|1")


def test_custom_delimiter_fixture_decodes_escapes() -> None:
    msg = Hl7Message(fixture("adt_a01_custom_delimiters.hl7").decode("ascii"))
    assert msg.get("PID", 3) == "MRN$777"
    assert msg.get("PID", 3, 1, 4, 2) == "LOCAL"
    assert msg.get("PID", 3, 2) == "ALT-1"
    assert msg.get("PID", 18) == "ACCT@0777"
    assert msg.get("PV1", 3) == "ER$BAY"
    assert msg.get("PV1", 19) == "VISA0777"
    assert msg.get("NTE", 3) == "First line\nSecond line bold done@Z1@ kept"


# -- charsets and decoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("ASCII", "ascii"),
        ("8859/1", "latin-1"),
        ("ISO IR100", "latin-1"),
        ("8859/15", "iso8859-15"),
        ("UNICODE UTF-8", "utf-8"),
        ("utf-8", "utf-8"),
        ("windows-1252", "cp1252"),
        ("", None),
        ("KLINGON", None),
    ],
)
def test_codec_for_charset(name: str, codec: str | None) -> None:
    assert codec_for_charset(name) == codec


def test_8859_1_is_read_as_windows_1252_first() -> None:
    assert decode_candidates("8859/1", "utf-8", "windows-1252") == ("cp1252", "latin-1", "utf-8", "windows-1252")
    assert decode_candidates("", "utf-8", None) == ("utf-8",)
    assert encode_codec("8859/1") == "latin-1"
    assert encode_codec("UNICODE") == "utf-8"  # never an ACK the receiver cannot read


def test_a_declared_charset_the_bytes_cannot_be_is_ignored() -> None:
    raw = b"MSH|^~\\&|A|F|||1||ADT^A01|1|P|2.5||||||UNICODE\rPID|1||X"
    assert decode_candidates("UNICODE", "utf-8", None) == ("utf-8",)
    assert decode_text(raw, peek_header(raw)) == (raw.decode("ascii"), "utf-8")


def test_windows_1252_fixture_declared_8859_1() -> None:
    raw = fixture("dft_p03_cp1252.hl7")
    header = peek_header(raw)
    assert header.charset == "8859/1"
    text, codec = decode_text(raw, header)
    assert codec == "cp1252"
    msg = Hl7Message(text, hex_codec=codec)
    assert msg.get("FT1", 7, component=2) == "Ärztliche Gebühr \u2013 Beratung"
    assert msg.get("MSH", 4) == "SÜDKLINIK"


def test_utf8_with_bom_and_unknown_charset_name_uses_the_default() -> None:
    raw = "\ufeffMSH|^~\\&|A|Fé|||1||ADT^A01|1|P|2.5||||||KLINGON\rPID|1||Zoë".encode()
    assert peek_header(raw).charset == "KLINGON"
    text = decode_message(raw, peek_header(raw))
    assert text.startswith("MSH|") and text.endswith("Zoë")


def test_undecodable_text_raises_a_translation_error_naming_msh18_not_its_value() -> None:
    raw = b"MSH|^~\\&|A|F|||1||ADT^A01|C7|P|2.5||||||ASCII\rPID|1||\xff\xfe"
    with pytest.raises(TranslationError) as caught:
        decode_message(raw, peek_header(raw), "utf-8", None)
    # MSH-18 as sent is a sender-controlled value: named, never quoted (issue 10 item 10).
    assert "MSH-18" in caught.value.reason and "ASCII" not in caught.value.reason
    assert "\\xff" not in caught.value.reason
    assert (caught.value.control_id, caught.value.locator) == ("C7", "MSH-18")
    assert decode_message(raw, peek_header(raw), "utf-8", "windows-1252").endswith("ÿþ")


# -- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tz", "iso"),
    [
        ("2024", "UTC", "2024"),
        ("202403", "UTC", "2024-03"),
        ("20240305", "UTC", "2024-03-05"),
        ("2024030514", "UTC", "2024-03-05T14:00:00+00:00"),
        ("202403051430", "Europe/Berlin", "2024-03-05T14:30:00+01:00"),
        ("20240705143015", "Europe/Berlin", "2024-07-05T14:30:15+02:00"),
        ("20240305143015.25", "UTC", "2024-03-05T14:30:15.250000+00:00"),
        ("202108181126+0215", "UTC", "2021-08-18T11:26:00+02:15"),
        ("20230101010000-0000", "America/Chicago", "2023-01-01T01:00:00+00:00"),
        ("20120918173931-0500", "UTC", "2012-09-18T17:39:31-05:00"),
    ],
)
def test_hl7_to_iso(value: str, tz: str, iso: str) -> None:
    assert hl7_to_iso(value, tz) == iso


@pytest.mark.parametrize(
    "value", ["", "Aug 15, 1942", "2024133", "20241301", "20240230", "20240305256000", "2024+2500"]
)
def test_invalid_timestamps(value: str) -> None:
    with pytest.raises(ValueError):
        hl7_to_iso(value, "UTC")


def test_date_only_as_an_instant_is_midnight_in_the_zone() -> None:
    assert hl7_to_datetime("20240305", "America/New_York") == datetime(2024, 3, 5, 5, tzinfo=UTC)
    assert hl7_to_instant("20240305", "UTC") == "2024-03-05T00:00:00+00:00"
