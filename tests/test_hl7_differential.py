"""Differential test: our HL7 reader against ``hl7.parse`` on the whole public corpus.

For every message of every corpus file (split with ``split_batch``) that ``hl7.parse``
can parse, every field position the mappings read must give the same value from
both parsers, escapes decoded.

Deliberate differences, handled here and documented in ``canonical.hl7v2``:

* a position that does not exist is ``""`` for us; ``hl7`` raises IndexError
  (for example component 2 of a field without components);
* escapes: ``\\.br\\`` is a newline for us (``hl7``: CR), ``\\H\\``/``\\N\\`` are dropped
  (``hl7``: "_"), unknown sequences are kept verbatim (``hl7``: removed), ``\\P\\`` is
  the truncation character; fields holding any escape other than
  ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` or ASCII ``\\Xhh\\`` are therefore not compared;
* ``hl7.parse`` strips whitespace around the whole message, so a value at the very
  end of the last segment may lose trailing blanks there; we keep the bytes;
* messages whose delimiters repeat a character (``MSH|^~\\\\&``) are refused by us
  (NotHl7Error) and ``hl7`` splits them somehow: nothing to compare.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest

from canonical.errors import CanonicalError
from canonical.hl7v2.batch import split_batch
from canonical.hl7v2.reader import Hl7Message, MshHeader, decode_text, peek_header
from tests.conftest import corpus_root

# (segment, field, repetition, component, subcomponent): what adt.py / dft.py / the header read.
Position = tuple[str, int, int, int, int]
_MSH: list[Position] = [("MSH", f, 1, 1, 1) for f in (3, 4, 5, 6, 7, 10, 11, 12, 15, 16, 18)]
_MSH += [("MSH", 9, 1, c, 1) for c in (1, 2, 3)]
_ADT: list[Position] = [
    ("EVN", 2, 1, 1, 1),
    ("PID", 3, 1, 1, 1),
    ("PID", 18, 1, 1, 1),
    *[("PV1", f, 1, 1, 1) for f in (2, 7, 10, 19, 44, 45)],
    *[("PV1", f, 1, c, 1) for f in (3, 6) for c in (1, 2, 3, 4)],
]
_FT1: list[Position] = [
    *[("FT1", f, 1, 1, 1) for f in (2, 3, 4, 5, 6, 10, 11, 12, 13, 20, 21)],
    ("FT1", 11, 1, 1, 2),
    *[("FT1", f, 1, c, 1) for f in (7, 25) for c in (1, 2, 3)],
]
POSITIONS = _MSH + _ADT + _FT1
HEADER_FIELDS: dict[str, Position] = {
    "sending_application": ("MSH", 3, 1, 1, 1),
    "sending_facility": ("MSH", 4, 1, 1, 1),
    "receiving_application": ("MSH", 5, 1, 1, 1),
    "receiving_facility": ("MSH", 6, 1, 1, 1),
    "timestamp": ("MSH", 7, 1, 1, 1),
    "message_type": ("MSH", 9, 1, 1, 1),
    "trigger": ("MSH", 9, 1, 2, 1),
    "structure": ("MSH", 9, 1, 3, 1),
    "control_id": ("MSH", 10, 1, 1, 1),
    "processing_id": ("MSH", 11, 1, 1, 1),
    "version": ("MSH", 12, 1, 1, 1),
    "accept_ack_type": ("MSH", 15, 1, 1, 1),
    "application_ack_type": ("MSH", 16, 1, 1, 1),
    "charset": ("MSH", 18, 1, 1, 1),
}
_ESCAPE = re.compile(r"\\([^\\]*)\\")
_SAME_IN_BOTH = re.compile(r"[FSTRE]|X(?:[0-7][0-9A-Fa-f])+")


def corpus_files() -> list[Path]:
    root = corpus_root()
    return sorted(p for p in (root / "hl7").rglob("*") if p.is_file()) if root else []


FILES = corpus_files()


def file_id(path: Path | None) -> str:
    return "/".join(path.parts[-2:]) if path else "no-corpus"


class Theirs:
    """hl7's value at a position, with each hl7 segment list looked up once."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message
        self.by_name: dict[str, list[hl7.Segment]] = {}

    def __call__(self, pos: Position, occurrence: int) -> str:
        segment, field, rep, comp, sub = pos
        if segment not in self.by_name:
            try:
                self.by_name[segment] = list(self.message.segments(segment))
            except KeyError:
                self.by_name[segment] = []
        found = self.by_name[segment]
        if occurrence > len(found):
            return ""
        try:
            return str(found[occurrence - 1].extract_field(occurrence, field, rep, comp, sub))
        except IndexError:
            return ""  # absent: hl7 raises, we answer ""


def comparable(ours: Hl7Message, pos: Position, occurrence: int) -> bool:
    """False when the raw field holds an escape the two parsers decode differently."""
    seg = ours.segment(pos[0], occurrence)
    raw = seg.field(pos[1]) if seg else ""
    return _comparable_raw(raw, ours.delimiters.escape)


def _comparable_raw(raw: str, escape: str) -> bool:
    if escape != "\\":
        return "\\" not in raw and escape not in raw
    if raw.count("\\") % 2:
        return False  # an unterminated escape: we keep it verbatim, hl7 drops it
    return all(_SAME_IN_BOTH.fullmatch(m) for m in _ESCAPE.findall(raw))


def parsed_pairs(path: Path) -> Iterator[tuple[int, str, MshHeader, Hl7Message, hl7.Message]]:
    """(index, text, header, our message, hl7 message) for each message both can read."""
    for item in split_batch(path.read_bytes()):
        try:
            header = peek_header(item.raw)
            text, codec = decode_text(item.raw, header)
            ours = Hl7Message(text, hex_codec=codec)
        except CanonicalError:
            continue
        try:
            message = hl7.parse(text)
        except Exception:  # noqa: BLE001 - "messages hl7.parse can parse" is the contract
            continue
        yield item.index, text, header, ours, message


@pytest.mark.parametrize("path", FILES or [None], ids=file_id)
def test_reader_matches_hl7_parse(path: Path | None) -> None:
    if path is None:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    mismatches = []
    for index, _text, _header, ours, message in parsed_pairs(path):
        theirs = Theirs(message)
        for pos in POSITIONS:
            for occurrence in range(1, len(ours.segments(pos[0])) + 1):
                if not comparable(ours, pos, occurrence):
                    continue
                mine = ours.get(pos[0], pos[1], pos[2], pos[3], pos[4], occurrence)
                expected = theirs(pos, occurrence)
                if mine != expected and mine.rstrip() != expected:
                    mismatches.append((index, pos, occurrence, mine, expected))
    assert mismatches == []


@pytest.mark.parametrize("path", FILES or [None], ids=file_id)
def test_header_matches_hl7_parse(path: Path | None) -> None:
    if path is None:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    mismatches = []
    for item in split_batch(path.read_bytes()):
        try:
            header = peek_header(item.raw)
        except CanonicalError:
            continue
        # The header is read as latin-1, so compare against hl7 on the latin-1 text.
        try:
            message = hl7.parse(item.raw.decode("latin-1").lstrip("\ufeff\xef\xbb\xbf"))
        except Exception:  # noqa: BLE001 - only messages hl7.parse can parse are compared
            continue
        theirs = Theirs(message)
        for name, pos in HEADER_FIELDS.items():
            msh = message.segment("MSH")
            raw_field = str(msh[pos[1]]) if pos[1] < len(msh) else ""
            if not _comparable_raw(raw_field, header.delimiters.escape):
                continue
            if getattr(header, name) != theirs(pos, 1):
                mismatches.append((item.index, name, getattr(header, name), theirs(pos, 1)))
        assert header.field_sep == str(message.segment("MSH")[1])
        assert header.encoding_chars == str(message.segment("MSH")[2])
    assert mismatches == []


@pytest.mark.parametrize("path", FILES or [None], ids=file_id)
def test_every_field_matches_hl7_parse(path: Path | None) -> None:
    """Beyond what the mappings read: the first repetitions, components and
    subcomponents of every field of every segment, including escaped values."""
    if path is None:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    mismatches = []
    for index, _text, _header, ours, message in parsed_pairs(path):
        theirs = Theirs(message)
        seen: dict[str, int] = {}
        for name in ours.names():
            occurrence = seen[name] = seen.get(name, 0) + 1
            seg = ours.segment(name, occurrence)
            assert seg is not None
            for field in range(1, seg.text.count(ours.delimiters.field) + 2):
                for pos in _leaves(name, field):
                    if not comparable(ours, pos, occurrence):
                        continue
                    mine = ours.get(*pos, occurrence=occurrence)
                    expected = theirs(pos, occurrence)
                    if mine != expected and mine.rstrip() != expected:
                        mismatches.append((index, pos, occurrence, mine[:40], expected[:40]))
    assert mismatches == []


def _leaves(name: str, field: int) -> Iterator[Position]:
    for rep in (1, 2):
        for comp in (1, 2, 3):
            for sub in (1, 2):
                yield (name, field, rep, comp, sub)


def test_the_corpus_exercises_the_positions() -> None:
    """Guard against a vacuous pass: the comparisons above really see values."""
    if not FILES:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    seen: dict[str, int] = {}
    for path in FILES:
        for _index, _text, _header, ours, _message in parsed_pairs(path):
            for pos in POSITIONS:
                if ours.get(*pos[:5]):
                    seen[f"{pos[0]}-{pos[1]}"] = seen.get(f"{pos[0]}-{pos[1]}", 0) + 1
    for key in ("MSH-9", "PID-3", "PID-18", "PV1-3", "PV1-19", "FT1-7", "FT1-11", "EVN-2"):
        assert seen.get(key, 0) > 0, key
