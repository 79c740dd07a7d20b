"""Splitting files of HL7 v2 messages: synthetic edge cases, then real corpus files."""

from __future__ import annotations

from pathlib import Path

import pytest

from canonical.hl7v2.batch import BatchItem, split_batch
from canonical.hl7v2.reader import peek_header

A = b"MSH|^~\\&|APP|FAC|||20240101||ADT^A01|A1|P|2.5"
B = b"MSH|^~\\&|APP|FAC|||20240101||ADT^A08|B2|P|2.5"


def items(data: bytes) -> list[tuple[int, int, bytes]]:
    return [(i.index, i.line, i.raw) for i in split_batch(data)]


@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n"], ids=["cr", "lf", "crlf"])
def test_messages_are_split_on_msh_with_any_terminator(end: bytes) -> None:
    data = end.join([A, b"PID|1", B, b"PID|2", b"PV1|1"]) + end
    assert items(data) == [(0, 1, A + b"\rPID|1\r"), (1, 3, B + b"\rPID|2\rPV1|1\r")]


def test_mixed_terminators_and_no_final_terminator() -> None:
    assert items(A + b"\rPID|1\nPV1|1\r\nOBX|1") == [(0, 1, A + b"\rPID|1\rPV1|1\rOBX|1\r")]


def test_bom_blank_lines_inside_and_between_messages() -> None:
    data = b"\xef\xbb\xbf" + A + b"\r\nPID|1\r\n\r\nPV1|1\r\n\r\n\r\n" + B + b"\r\n"
    assert items(data) == [(0, 1, A + b"\rPID|1\rPV1|1\r"), (1, 7, B + b"\r")]


def test_batch_envelope_segments_are_dropped() -> None:
    data = b"\n".join([b"FHS|^~\\&|X", b"BHS|^~\\&|X", A, b"PID|1", B, b"BTS|2", b"FTS|1", b""])
    assert items(data) == [(0, 3, A + b"\rPID|1\r"), (1, 5, B + b"\r")]


def test_text_framing_and_mllp_bytes_written_into_files() -> None:
    data = b"[SOM]" + A + b"\r\nPID|1[EOM][CR]\r\n\x0b" + B + b"\rPV1|1\x1c\r"
    assert items(data) == [(0, 1, A + b"\rPID|1\r"), (1, 3, B + b"\rPV1|1\r")]


def test_comments_before_and_between_messages_are_skipped() -> None:
    data = b"/*\n * sample file\n */\n" + A + b"\nPID|1\n\n// next one\n" + B + b"\n\n/* end */"
    assert items(data) == [(0, 4, A + b"\rPID|1\r"), (1, 8, B + b"\r")]


def test_a_damaged_line_inside_a_message_stays_with_it() -> None:
    data = A + b"\nOBX|1|TX|X||text that was hard-\nwrapped here|F\nOBX|2|TX"
    assert items(data) == [(0, 1, A + b"\rOBX|1|TX|X||text that was hard-\rwrapped here|F\rOBX|2|TX\r")]


def test_segment_lines_need_the_message_field_separator() -> None:
    custom = b"MSH^~|\\&^APP^FAC^^^2024^^ADT~A24^C3^T^2.4"
    data = custom + b"\r\nEVN^A24\r\nPID^1\r\n\r\nnot|a segment\r\n"
    assert items(data) == [(0, 1, custom + b"\rEVN^A24\rPID^1\r")]


@pytest.mark.parametrize("data", [b"", b"\r\n  \r\n", b"no message here\n", b"PID|1||orphan\r"])
def test_data_without_msh_yields_one_item_to_reject(data: bytes) -> None:
    assert list(split_batch(data)) == [BatchItem(0, 1, data)]


def test_bare_msh_is_a_message() -> None:
    assert items(b"MSH|\n") == [(0, 1, b"MSH|\r")]


def test_split_is_lazy() -> None:
    it = split_batch(A + b"\r" + B + b"\r")
    assert next(it).raw.startswith(A)


# -- real files ---------------------------------------------------------------------------


def corpus_file(corpus: Path, name: str) -> bytes:
    return (corpus / "hl7" / name).read_bytes()


def test_hapi_commented_file(corpus: Path) -> None:
    found = list(split_batch(corpus_file(corpus, "hapi-hl7v2/messages.txt")))
    assert len(found) == 18
    assert [i.line for i in found[:4]] == [4, 13, 22, 26]
    assert all(i.raw.startswith(b"MSH|") and b"//" not in i.raw and b"/*" not in i.raw for i in found)
    assert peek_header(found[2].raw).message_type == "ACK"


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("mirth-connect/TestADT.txt", 124),
        ("mirth-connect/batch01.hl7", 3),
        ("mirth-connect/hl7.txt", 1),
        ("hapi-hl7v2/example_oml_o21.hl7", 13),
        ("prime-reportstream/sample-batch-pdi-20210608-0001.hl7", 20),
        ("prime-reportstream/batch_message.hl7", 2),
        ("node-hl7-complete/dft-example.hl7", 2),
        ("hl7-dotnetcore/Sample-ADT.txt", 1),
        ("trusted-intermediary/empty.hl7", 1),
        ("hapi-hl7v2/uuencoded.txt", 1),
    ],
)
def test_corpus_message_counts(corpus: Path, name: str, count: int) -> None:
    assert len(list(split_batch(corpus_file(corpus, name)))) == count


def test_envelope_and_framing_leave_only_messages(corpus: Path) -> None:
    for name in ("prime-reportstream/Example-hl7-file.hl7", "mirth-connect/hl7.txt"):
        (item,) = split_batch(corpus_file(corpus, name))
        assert item.raw.startswith(b"MSH|") and b"[EOM]" not in item.raw
        assert b"\rBTS" not in item.raw and b"\rFTS" not in item.raw


def test_blank_line_inside_a_message_keeps_it_whole(corpus: Path) -> None:
    (item,) = split_batch(corpus_file(corpus, "hl7-dotnetcore/Sample-ADT.txt"))
    assert item.raw.split(b"\r")[-2].startswith(b"PV1|")


def test_every_corpus_file_splits(corpus: Path) -> None:
    for path in sorted((corpus / "hl7").rglob("*")):
        if path.is_file():
            found = list(split_batch(path.read_bytes()))
            assert found, path
            assert [i.index for i in found] == list(range(len(found)))
            assert all(i.raw.endswith(b"\r") for i in found if i.raw.startswith(b"MSH"))
