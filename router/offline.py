"""`ficus translate`: files to canonical events without NATS, for trying a feed before wiring it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from canonical.enrich import enrich
from canonical.envelope import CloudEvent
from canonical.errors import CanonicalError, TranslationError
from canonical.flat import FlatSpec, LayoutError, translate_flat
from canonical.hl7v2.batch import split_batch
from canonical.reference import ReferenceData
from canonical.translate import TranslationContext, translate_hl7
from canonical.x12.remit835 import translate_835


def detect_format(data: bytes) -> str:
    """`x12-835` for X12 (ISA or ST first, UTF-16 too), else `hl7v2`."""
    head = data[:64].lstrip(b"\xef\xbb\xbf\xff\xfe \r\n\t").replace(b"\x00", b"")
    return "x12-835" if head[:3] in (b"ISA", b"ST*", b"ST|") else "hl7v2"


def translate_x12(path: Path, interface: str, timezone: str, out: TextIO, err: TextIO,
                  reference: ReferenceData | None = None) -> int:
    """One 835 file: events of balanced transactions, dead letters of the others."""
    ctx = TranslationContext(interface, "live", f"file://{path.resolve()}", datetime.now(UTC), timezone)
    failed = 0
    with path.open("rb") as stream:
        for result in translate_835(stream, ctx, source_name=path.name):
            error = result.error
            events: list[CloudEvent] = []
            if error is None and result.events is not None:
                try:
                    events = enrich(list(result.events), reference) if reference else list(result.events)
                except TranslationError as exc:
                    error = exc
            if error is not None:
                failed += 1
                err.write(json.dumps({
                    "file": str(path), "st_control": result.st_control, "error": type(error).__name__,
                    "reason": error.reason, "locator": error.locator, "facility": error.facility,
                    "amount": None if error.amount is None else str(error.amount),
                }) + "\n")
                continue
            for event in events:
                out.write(event.to_json().decode() + "\n")
    return failed


def translate_flat_file(path: Path, flat: FlatSpec, interface: str, timezone: str, out: TextIO, err: TextIO,
                        reference: ReferenceData | None = None) -> int:
    """A CSV or fixed-width file: one line of JSON per event, one per bad record on `err`."""
    ctx = TranslationContext(interface, "live", f"file://{path.resolve()}", datetime.now(UTC), timezone)
    failed = 0
    unit = hashlib.sha256(path.read_bytes()).hexdigest()
    with path.open("rb") as stream:
        try:
            for outcome in translate_flat(stream, flat, ctx, unit=unit):
                error, events = outcome.error, outcome.events
                if error is None and reference:
                    try:
                        events = enrich(events, reference)
                    except TranslationError as exc:
                        error = exc
                if error is not None:
                    failed += 1
                    err.write(json.dumps({"file": str(path), "line": outcome.line, "reason": error.reason}) + "\n")
                    continue
                for event in events:
                    out.write(event.to_json().decode() + "\n")
        except LayoutError as exc:
            err.write(json.dumps({"file": str(path), "line": None, "reason": exc.reason}) + "\n")
            return failed + 1
    return failed


def translate_files(
    files: list[Path], *, fmt: str, mapping: str, interface: str, timezone: str,
    encoding: str, fallback: str | None, out: TextIO, err: TextIO, reference: ReferenceData | None = None,
    flat: FlatSpec | None = None,
) -> int:
    """Writes events as JSON lines to `out`, dead letters to `err`; returns how many failed.

    `fmt` None detects the format of each file from its first bytes.
    """
    failed = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            err.write(f"{path}: cannot read: {exc.strerror}\n")
            failed += 1
            continue
        if fmt in ("csv", "fixed-width") and flat is not None:
            failed += translate_flat_file(path, flat, interface, timezone, out, err, reference)
            continue
        if (fmt or detect_format(data)) == "x12-835":
            failed += translate_x12(path, interface, timezone, out, err, reference)
            continue
        for item in split_batch(data):
            ctx = TranslationContext(interface, "live", f"file://{path.resolve()}#L{item.line}",
                                     datetime.now(UTC), timezone)
            try:
                result = translate_hl7(item.raw, mapping, ctx, encoding=encoding, fallback=fallback)
                events = enrich(result.events, reference) if reference else result.events
            except CanonicalError as exc:
                failed += 1
                err.write(json.dumps({
                    "file": str(path), "line": item.line, "message": item.index + 1,
                    "control_id": getattr(exc, "control_id", None), "error": type(exc).__name__,
                    "reason": exc.reason,
                }) + "\n")
                continue
            for event in events:
                out.write(event.to_json().decode() + "\n")
    return failed
