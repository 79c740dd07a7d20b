"""The units of a file (an 835 transaction, a CSV or fixed-width record) as events or errors.

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
from canonical.errors import TranslationError
from canonical.flat import FlatRecord, FlatSpec, LayoutError, translate_flat
from canonical.reference import ReferenceData
from canonical.x12.remit835 import translate_835


@dataclass(frozen=True)
class Unit:
    """One record (or 835 transaction) of a file: its events, or why it has none.

    `line` is the record's first line (flat files), `st_control` the transaction's ST02 (835).
    """

    index: int
    locator: str
    events: list[CloudEvent]
    error: TranslationError | None = None
    line: int | None = None
    st_control: str | None = None


def file_units(
    stream: BinaryIO, fmt: str, flat: FlatSpec | None, ctx: TranslationContext, *, name: str, sha256: str,
    reference: ReferenceData | None,
) -> Iterator[Unit]:
    """Every unit of a file in order; a file its layout cannot read is one unit in error."""
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


def _enriched(unit: Unit, reference: ReferenceData | None, where: str) -> Unit:
    """The unit with ERP fields from the reference tables; an unmapped value puts it in error.

    Every error reason names the file and the record once: the translators' reasons start
    with ``where`` already ("x.csv line 4: ..."); the enrichment's do not, so they get it.
    """
    if unit.error is not None:
        return Unit(unit.index, unit.locator, [], unit.error, unit.line, unit.st_control)
    if reference is None:
        return unit
    try:
        return Unit(unit.index, unit.locator, enrich(unit.events, reference), None, unit.line, unit.st_control)
    except TranslationError as exc:
        if not exc.reason.startswith(where):
            exc.reason = f"{where}: {exc.reason}"
            exc.args = (exc.reason,)
        return Unit(unit.index, unit.locator, [], exc, unit.line, unit.st_control)


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
