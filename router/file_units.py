"""The units of a file (an 835 transaction, a CSV or fixed-width record, an HL7 v2 message of a
file or FHS/BHS batch) as events or errors.

One generator for the file pipeline and `ficus translate`, so both read, translate and enrich
a file the same way: streaming, one unit at a time, never the whole file in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from canonical.context import TranslationContext
from canonical.enrich import enrich
from canonical.envelope import CloudEvent
from canonical.errors import CanonicalError, TranslationError
from canonical.flat import FlatRecord, FlatSpec, LayoutError, translate_flat
from canonical.hl7v2.batch import envelope_of, split_stream
from canonical.hl7v2.reader import MshHeader, peek_header
from canonical.reference import ReferenceData
from canonical.safe_text import bounded_id
from canonical.translate import Hl7Mapping, translate_hl7
from canonical.x12.remit835 import translate_835


@dataclass(frozen=True)
class Hl7Spec:
    """How an interface translates the HL7 v2 messages of its files (as an MLLP interface would)."""

    mapping: str | Hl7Mapping = "hl7v2"  # a name, or the interface's site map compiled in
    encoding: str = "utf-8"
    fallback: str | None = "windows-1252"


@dataclass(slots=True)
class Unit:
    """One record (or 835 transaction, or HL7 message) of a file: its events, or why it has none.

    `line` is the record's first line (flat files; an HL7 message's MSH), `st_control` the
    transaction's ST02 (835), `header` an HL7 message's MSH when it has one (its ACK, route
    facility, sender and message type). Never changed once made; not frozen only because a
    frozen dataclass takes 3-4 us more to make, once per record of every file.
    """

    index: int
    locator: str
    events: list[CloudEvent]
    error: CanonicalError | None = None
    line: int | None = None
    st_control: str | None = None
    header: MshHeader | None = None

    @property
    def facility(self) -> str | None:
        """The facility known before translation (MSH-4), else the error's (835, flat records)."""
        if self.header is not None and self.header.sending_facility:
            return self.header.sending_facility
        return getattr(self.error, "facility", None)

    @property
    def message_type(self) -> str | None:
        """An HL7 message's MSH-9 for its dead letter, when it has the shape of a code."""
        h = self.header
        if h is None or not _code_like(h.message_type) or not (not h.trigger or _code_like(h.trigger)):
            return None
        return f"{h.message_type}^{h.trigger}" if h.trigger else h.message_type


def file_units(
    stream: BinaryIO, fmt: str, flat: FlatSpec | None, ctx: TranslationContext, *, name: str, sha256: str,
    reference: ReferenceData | None, hl7: Hl7Spec | None = None,
) -> Iterator[Unit]:
    """Every unit of a file in order; a file its layout cannot read is one unit in error."""
    if fmt == "hl7v2":
        yield from _hl7_units(stream, hl7 or Hl7Spec(), ctx, name, reference)
        return
    if fmt == "x12-835":
        for i, result in enumerate(translate_835(stream, ctx, source_name=name)):
            events = list(result.events) if result.error is None and result.events is not None else []
            unit = Unit(i, f"ST {result.st_control or '?'}", events, result.error, st_control=result.st_control)
            # 835 reasons say "ST 0001 of x.835: ..." or "x.835: ..." themselves.
            yield _enriched(unit, reference, f"ST {result.st_control or '?'} of {name}")
        return
    if fmt == "gl-export":  # the legacy GL export carries no events: it is GL parity's reference
        return
    assert flat is not None

    def locate(record: FlatRecord) -> str:
        return f"{name} line {record.line}"

    try:
        for outcome in translate_flat(stream, flat, ctx, unit=sha256, locate=locate):
            where = f"{name} line {outcome.line}"
            yield _enriched(Unit(outcome.index, where, outcome.events, outcome.error, line=outcome.line),
                            reference, where)
    except LayoutError as exc:
        yield Unit(0, "file", [], TranslationError(f"{name}: {exc.reason}", control_id="", locator="file"))


def _hl7_units(stream: BinaryIO, spec: Hl7Spec, ctx: TranslationContext, name: str,
               reference: ReferenceData | None) -> Iterator[Unit]:
    """Each message of an HL7 v2 file (FHS/BHS envelopes dropped: canonical/hl7v2/batch.py) as a
    unit of its own: translated by the interface's mapping, enriched, or in error alone.

    A control id (MSH-10) already used by an earlier message of the same sender in the file is
    refused: its events would carry that message's ids (and be dropped as its duplicates). The
    check covers the whole file on every read, a resume after a crash included."""
    seen: dict[tuple[str, str], int] = {}
    for item in split_stream(stream):
        if not item.raw.startswith(b"MSH") and _empty_batch(item.raw):
            return  # FHS/BHS ... BTS|0: a sender with nothing to send, not a bad file
        where = f"{name} message {item.index + 1}"
        locator = f"{where} (line {item.line})"
        header: MshHeader | None = None
        try:
            header = peek_header(item.raw)
            first = seen.setdefault((header.sender, header.control_id), item.index + 1)
            if header.control_id and first != item.index + 1:
                raise TranslationError(
                    f"MSH-10 control id {bounded_id(header.control_id)} repeats message {first} of the file: its "
                    "events would carry that message's ids", control_id=header.control_id, locator="MSH-10",
                    facility=header.sending_facility or None, hl7_code="205")
            result = translate_hl7(item.raw, spec.mapping, ctx, encoding=spec.encoding, fallback=spec.fallback,
                                   header=header)
        except CanonicalError as exc:
            exc.reason = f"{where}: {exc.reason}"
            exc.args = (exc.reason,)
            yield Unit(item.index, locator, [], exc, item.line, header=header)
            continue
        unit = Unit(item.index, locator, result.events, None, item.line, header=header)
        yield _enriched(unit, reference, where)


def _empty_batch(head: bytes) -> bool:
    """Whether a file without any MSH (its first bytes: split_stream's one item) is a batch
    envelope holding no message."""
    envelope = envelope_of(head)
    return envelope.fhs is not None or envelope.bhs is not None


def _code_like(value: str) -> bool:
    return len(value) <= 8 and value.isascii() and value.isalnum()


def _enriched(unit: Unit, reference: ReferenceData | None, where: str) -> Unit:
    """The unit with ERP fields from the reference tables; an unmapped value puts it in error.

    Every error reason names the file and the record once: the translators' reasons start
    with ``where`` already ("x.csv line 4: ..."); the enrichment's do not, so they get it.
    """
    if unit.error is not None:
        return Unit(unit.index, unit.locator, [], unit.error, unit.line, unit.st_control, unit.header)
    if reference is None:
        return unit
    try:
        return Unit(unit.index, unit.locator, enrich(unit.events, reference), None, unit.line, unit.st_control,
                    unit.header)
    except TranslationError as exc:
        if not exc.reason.startswith(where):
            exc.reason = f"{where}: {exc.reason}"
            exc.args = (exc.reason,)
        return Unit(unit.index, unit.locator, [], exc, unit.line, unit.st_control, unit.header)


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
