"""Streaming readers for flat files (CSV, fixed-width) and their translation to events.

Memory stays constant whatever the file size: the stream is read one physical
line at a time (at most :data:`MAX_LINE_BYTES` held), each line decoded on its own
so one undecodable line becomes one error record instead of ending the file.
Problems with a line (encoding, quoting, column count, length) come back as a
:class:`FlatRecord` with ``error`` so the router dead-letters that line and goes
on; problems with the file itself (a header without a mapped column) raise
:class:`LayoutError` before any record is read.

Encodings must be ASCII-compatible (UTF-8, Latin-1, cp1252...): lines are split
on the byte ``\\n`` before decoding. Fixed-width positions count characters.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, BinaryIO, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent
from canonical.errors import CanonicalError, TranslationError
from canonical.records import FieldSpec, RecordMapping, map_record

__all__ = [
    "MAX_LINE_BYTES",
    "CsvLayout",
    "FixedWidthLayout",
    "FlatOutcome",
    "FlatRecord",
    "FlatSpec",
    "Layout",
    "LayoutError",
    "check_layout",
    "read_records",
    "translate_flat",
]

#: Longest physical line read; a longer one is an error record (and is skipped in bounded chunks).
MAX_LINE_BYTES = 1 << 20
_CONFIG = ConfigDict(frozen=True, extra="forbid")


class LayoutError(CanonicalError, ValueError):
    """The file as a whole does not fit its layout (no header, a mapped column absent...)."""


def _line_encoding(name: str) -> str:
    try:
        codecs.lookup(name)
    except LookupError as exc:
        raise ValueError(f"unknown encoding {name!r}") from exc
    try:
        ascii_compatible = b"\r\n,;|\t\"'".decode(name) == "\r\n,;|\t\"'"
    except UnicodeDecodeError:
        ascii_compatible = False
    if not ascii_compatible:
        raise ValueError(f"encoding {name!r} is not ASCII-compatible (UTF-16/32 files are not supported)")
    return name


class CsvLayout(BaseModel):
    """A delimited file. Without a header, ``columns`` names the columns (else fields use ``index``)."""

    model_config = _CONFIG

    kind: Literal["csv"]
    delimiter: str = Field(",", min_length=1, max_length=1)
    quotechar: str = Field('"', min_length=1, max_length=1)
    header: bool = True
    columns: list[str] | None = None
    encoding: str = "utf-8"
    skip_lines: int = Field(0, ge=0, description="lines before the header (or the first record)")

    _encoding = field_validator("encoding")(_line_encoding)

    @model_validator(mode="after")
    def _columns_without_header(self) -> Self:
        if self.header and self.columns is not None:
            raise ValueError("columns is for files without a header (header = false)")
        return self


class FixedWidthLayout(BaseModel):
    """A fixed-width file, one record per line; fields use ``start`` (1-based) and ``length``."""

    model_config = _CONFIG

    kind: Literal["fixed-width"]
    encoding: str = "utf-8"
    skip_lines: int = Field(0, ge=0)
    record_length: int | None = Field(None, ge=1, description="exact characters per line, when checked")

    _encoding = field_validator("encoding")(_line_encoding)


#: A flat file layout, chosen by ``kind``.
Layout = Annotated[CsvLayout | FixedWidthLayout, Field(discriminator="kind")]


def check_layout(layout: CsvLayout | FixedWidthLayout, fields: Sequence[FieldSpec]) -> list[str]:
    """Every way ``fields`` cannot be read with ``layout`` (empty when they fit)."""
    problems: list[str] = []
    for spec in fields:
        where = f"field {spec.field!r}"
        if isinstance(layout, FixedWidthLayout):
            if spec.column is not None or spec.index is not None:
                problems.append(f"{where}: fixed-width fields use start and length, not column or index")
            elif layout.record_length is not None and (spec.start or 0) + (spec.length or 0) - 1 > layout.record_length:
                problems.append(f"{where}: ends after record_length {layout.record_length}")
            continue
        if spec.start is not None:
            problems.append(f"{where}: start/length are for fixed-width files")
        elif not layout.header and spec.column is not None and spec.column not in (layout.columns or []):
            problems.append(f"{where}: column {spec.column!r} is not in columns (no header)")
    return problems


class FlatSpec(BaseModel):
    """An interface's flat-file config: how to read the file and how records become events."""

    model_config = _CONFIG

    layout: Layout
    mapping: RecordMapping

    @model_validator(mode="after")
    def _fits(self) -> Self:
        problems = check_layout(self.layout, self.mapping.fields)
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True, slots=True)
class FlatRecord:
    """One record: ``line`` where it starts (1-based), ``index`` its 0-based position.

    Exactly one of ``values`` (raw strings by canonical field) and ``error`` (why
    the line could not be read, no values quoted) is set.
    """

    line: int
    index: int
    values: dict[str, str] | None
    error: str | None


@dataclass(frozen=True, slots=True)
class _Bad:
    """An unreadable line: why, and a stand-in text that keeps CSV quoting intact."""

    line: int
    reason: str
    text: str = "\n"


class _Lines:
    """Physical lines of a binary stream, decoded one by one; ``number`` is the last line's."""

    def __init__(self, stream: BinaryIO, encoding: str) -> None:
        self._stream = stream
        self._encoding = encoding
        self._bom = codecs.lookup(encoding).name.startswith("utf-8")
        self.number = 0

    def __iter__(self) -> Iterator[str | _Bad]:
        while raw := self._stream.readline(MAX_LINE_BYTES + 1):
            self.number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest without holding it
                    raw = self._stream.readline(MAX_LINE_BYTES)
                yield _Bad(self.number, f"line {self.number}: longer than {MAX_LINE_BYTES} bytes")
                continue
            try:
                text = raw.decode(self._encoding)
            except UnicodeDecodeError as exc:
                # The replaced text still has its delimiters and quotes, so a bad line inside a
                # quoted field fails that record only instead of leaving the quote open.
                reason = f"line {self.number}: not valid {self._encoding} at byte {exc.start + 1}"
                yield _Bad(self.number, reason, raw.decode(self._encoding, errors="replace"))
                continue
            if self.number == 1 and self._bom:
                text = text.removeprefix("\ufeff")
            yield text


def read_records(stream: BinaryIO, layout: CsvLayout | FixedWidthLayout, fields: Sequence[FieldSpec]) -> Iterator[
    FlatRecord
]:
    """The records of a flat file, lazily; raises :class:`LayoutError` now if the file cannot fit.

    Skips ``skip_lines`` and blank lines, reads the header (CSV) before returning,
    so a missing column fails here rather than after some records were handed out.
    """
    problems = check_layout(layout, fields)
    if problems:
        raise LayoutError("; ".join(problems))
    lines = _Lines(stream, layout.encoding)
    source = iter(lines)
    for _ in range(layout.skip_lines):
        if next(source, None) is None:
            break
    if isinstance(layout, FixedWidthLayout):
        return _fixed_width(source, lines, layout, fields)
    return _CsvReader(source, lines, layout).records(fields)


class _CsvReader:
    """csv.reader over decoded lines; undecodable lines are set aside and reported in order."""

    def __init__(self, source: Iterator[str | _Bad], lines: _Lines, layout: CsvLayout) -> None:
        self._lines = lines
        self._bad: list[_Bad] = []
        self._layout = layout
        # strict: a stray quote is an error record, not a silently merged field.
        self._reader = csv.reader(self._feed(source), delimiter=layout.delimiter, quotechar=layout.quotechar,
                                  strict=True)

    def _feed(self, source: Iterable[str | _Bad]) -> Iterator[str]:
        for item in source:
            if isinstance(item, _Bad):
                self._bad.append(item)
                yield item.text
            else:
                yield item

    def _rows(self) -> Iterator[tuple[int, list[str] | None, str | None]]:
        """(start line, cells or None, error or None) of each non-blank record."""
        while True:
            start = self._lines.number + 1
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self._bad.clear()
                yield start, None, f"line {start}: malformed CSV ({exc})"
                continue
            if self._bad:  # the record contains an undecodable line: the whole record is bad
                bad, self._bad = self._bad[0], []
                yield bad.line, None, bad.reason
            elif "".join(row).strip():  # some cell is not blank
                yield start, row, None

    def records(self, fields: Sequence[FieldSpec]) -> Iterator[FlatRecord]:
        rows = self._rows()
        names = self._layout.columns
        if self._layout.header:
            names = self._header(rows)
        plan = _csv_plan(fields, names)
        expected = len(names) if names is not None else max((i for _, i in plan), default=-1) + 1
        return _csv_records(rows, plan, expected, exact=names is not None)

    def _header(self, rows: Iterator[tuple[int, list[str] | None, str | None]]) -> list[str]:
        first = next(rows, None)
        if first is None:
            raise LayoutError("no header line")
        _, cells, error = first
        if cells is None:
            raise LayoutError(f"header unreadable: {error}")
        return [c.strip() for c in cells]


def _csv_plan(fields: Sequence[FieldSpec], names: list[str] | None) -> list[tuple[str, int]]:
    """(canonical field, column position) for each field read from the file."""
    positions: dict[str, int] = {}
    folded: dict[str, int] = {}
    for i, name in enumerate(names or []):
        positions.setdefault(name, i)
        folded.setdefault(name.casefold(), i)
    plan: list[tuple[str, int]] = []
    missing: list[str] = []
    for spec in fields:
        if spec.index is not None:
            plan.append((spec.field, spec.index))
        elif spec.column is not None:
            found = positions.get(spec.column, folded.get(spec.column.casefold()))
            if found is None:
                missing.append(spec.column)
            else:
                plan.append((spec.field, found))
    if missing:
        raise LayoutError(f"header lacks mapped columns: {', '.join(missing)}")
    return plan


def _csv_records(
    rows: Iterator[tuple[int, list[str] | None, str | None]], plan: list[tuple[str, int]], expected: int, *, exact: bool
) -> Iterator[FlatRecord]:
    for index, (line, cells, error) in enumerate(rows):
        if cells is None:
            yield FlatRecord(line, index, None, error)
        elif len(cells) != expected if exact else len(cells) < expected:
            yield FlatRecord(line, index, None, f"line {line}: {len(cells)} columns, expected {expected}")
        else:
            yield FlatRecord(line, index, {field: cells[i] for field, i in plan}, None)


def _fixed_width(
    source: Iterator[str | _Bad], lines: _Lines, layout: FixedWidthLayout, fields: Sequence[FieldSpec]
) -> Iterator[FlatRecord]:
    slices = [(s.field, s.start - 1, s.start - 1 + s.length) for s in fields if s.start and s.length]
    # A line shorter than the end of its last required field has lost data (not just trailing blanks).
    needed = max((s.start + s.length - 1 for s in fields if s.start and s.length and s.required), default=0)
    index = 0
    for item in source:
        if isinstance(item, _Bad):
            yield FlatRecord(item.line, index, None, item.reason)
        else:
            text = item.rstrip("\r\n")
            if not text.strip():
                continue
            error = _length_error(len(text), layout.record_length, needed, lines.number)
            values = None if error else {field: text[a:b] for field, a, b in slices}
            yield FlatRecord(lines.number, index, values, error)
        index += 1


def _length_error(length: int, record_length: int | None, needed: int, line: int) -> str | None:
    if record_length is not None and length != record_length:
        return f"line {line}: {length} characters, expected {record_length}"
    if length < needed:
        return f"line {line}: {length} characters, mapped fields need {needed}"
    return None


@dataclass(frozen=True, slots=True)
class FlatOutcome:
    """What one record of a file became: its events, or the error to dead-letter it with."""

    line: int
    index: int
    events: list[CloudEvent]
    error: TranslationError | None


def translate_flat(
    stream: BinaryIO,
    spec: FlatSpec,
    ctx: TranslationContext,
    *,
    unit: str,
    locate: Callable[[FlatRecord], str] = lambda r: f"line {r.line}",
) -> Iterator[FlatOutcome]:
    """Read and map every record of a file; raises :class:`LayoutError` when the file cannot fit.

    ``unit`` identifies the file (its SHA-256): with each record's key or index it
    makes event ids that a re-read of the same file reproduces.
    """
    records = read_records(stream, spec.layout, spec.mapping.fields)
    return _outcomes(records, spec.mapping, ctx, unit, locate)


def _outcomes(
    records: Iterator[FlatRecord],
    mapping: RecordMapping,
    ctx: TranslationContext,
    unit: str,
    locate: Callable[[FlatRecord], str],
) -> Iterator[FlatOutcome]:
    for record in records:
        locator = locate(record)
        if record.values is None:
            # The readers say "line N: why"; the reason names the record as `locate` does, once.
            why = (record.error or "unreadable").removeprefix(f"line {record.line}: ")
            error = TranslationError(f"{locator}: {why}", control_id=f"{unit}:{record.index}", locator=locator)
            yield FlatOutcome(record.line, record.index, [], error)
            continue
        try:
            events = map_record(record.values, mapping, ctx, unit=unit, index=record.index, locator=locator)
        except TranslationError as exc:
            yield FlatOutcome(record.line, record.index, [], exc)
        else:
            yield FlatOutcome(record.line, record.index, events, None)
