"""The X12 tokenizer: delimiters, encodings, whitespace, chunk boundaries."""

from __future__ import annotations

import codecs
import io

import pytest

from canonical.x12.reader import Delimiters, X12Reader, X12SyntaxError

ISA = "ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *241015*1200*^*00501*000000001*0*P*:~"
BODY = "GS*HP*S*R*20241015*1200*1*X*005010X221A1~ST*835*0001~BPR*I*1.00*C*CHK~SE*3*0001~GE*1*1~IEA*1*000000001~"


def ids(data: bytes, chunk_size: int = 1 << 20) -> list[str]:
    return [seg.id for seg in X12Reader(io.BytesIO(data), chunk_size=chunk_size)]


def test_delimiters_from_fixed_width_isa() -> None:
    reader = X12Reader(io.BytesIO((ISA + BODY).encode()))
    segments = list(reader)
    assert reader.delimiters == Delimiters("*", ":", "~", "^")
    assert [s.id for s in segments] == ["ISA", "GS", "ST", "BPR", "SE", "GE", "IEA"]
    assert [s.number for s in segments] == list(range(1, 8))
    assert segments[3].get(2) == "1.00" and segments[3].get(9) == ""


def test_isa_not_fixed_width_and_4010_repetition() -> None:
    isa = "ISA*00* *00* *ZZ*NVMED *ZZ*99999999*180613*1230*U*00401*100000300*0*P*>~"
    reader = X12Reader(io.BytesIO((isa + BODY).encode()))
    assert len(list(reader)) == 7
    assert reader.delimiters == Delimiters("*", ">", "~", None)


def test_non_default_separators() -> None:
    isa = ISA.replace("*", "|").replace("~", "_")
    data = isa + BODY.replace("*", "|").replace("~", "_")
    assert ids(data.encode()) == ["ISA", "GS", "ST", "BPR", "SE", "GE", "IEA"]


def test_crlf_indentation_and_bom() -> None:
    pretty = "\r\n  ".join(seg + "~" for seg in (ISA + BODY).split("~") if seg)
    assert ids(codecs.BOM_UTF8 + pretty.encode()) == ["ISA", "GS", "ST", "BPR", "SE", "GE", "IEA"]


@pytest.mark.parametrize("bom", [codecs.BOM_UTF16_LE, b""])
def test_utf16le(bom: bytes) -> None:
    assert ids(bom + (ISA + BODY).encode("utf-16-le")) == ["ISA", "GS", "ST", "BPR", "SE", "GE", "IEA"]


def test_no_envelope_with_tilde_or_newlines() -> None:
    assert ids(b"ST*835*1~BPR*I*1*C*CHK~SE*3*1~") == ["ST", "BPR", "SE"]
    assert ids(b"ST*835*1\nBPR*I*1*C*CHK\r\nSE*3*1\n") == ["ST", "BPR", "SE"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_chunk_boundaries_do_not_matter(size: int) -> None:
    pretty = "".join(seg + "~\r\n    " for seg in (ISA + BODY).split("~") if seg)
    data = codecs.BOM_UTF16_LE + pretty.encode("utf-16-le")
    whole = [s.elements for s in X12Reader(io.BytesIO(data))]
    split = [s.elements for s in X12Reader(io.BytesIO(data), chunk_size=size)]
    assert split == whole
    assert [e[0] for e in whole] == ["ISA", "GS", "ST", "BPR", "SE", "GE", "IEA"]


def test_iterable_of_chunks_same_as_file() -> None:
    data = (ISA + BODY).encode()
    chunks = [data[i : i + 5] for i in range(0, len(data), 5)]
    assert [s.elements for s in X12Reader(chunks)] == [s.elements for s in X12Reader(io.BytesIO(data))]


@pytest.mark.parametrize("data", [b"MSH|^~\\&|", b"ISA*00*short~", b"hello world"])
def test_not_x12(data: bytes) -> None:
    with pytest.raises(X12SyntaxError):
        list(X12Reader(io.BytesIO(data)))


def test_empty_input_yields_nothing() -> None:
    assert list(X12Reader(io.BytesIO(b""))) == []
