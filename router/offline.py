"""`ficus translate`: files to canonical events without NATS, for trying a feed before wiring it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from canonical.enrich import enrich
from canonical.errors import CanonicalError
from canonical.flat import FlatSpec
from canonical.hl7v2.batch import split_batch
from canonical.reference import ReferenceData
from canonical.translate import TranslationContext, translate_hl7
from router.file_units import file_units, sha256_of


def detect_format(head: bytes) -> str:
    """`x12-835` for X12 (ISA or ST first, UTF-16 too), else `hl7v2`, from a file's first bytes."""
    head = head[:64].lstrip(b"\xef\xbb\xbf\xff\xfe \r\n\t").replace(b"\x00", b"")
    return "x12-835" if head[:3] in (b"ISA", b"ST*", b"ST|") else "hl7v2"


def translate_stream_file(path: Path, fmt: str, flat: FlatSpec | None, interface: str, timezone: str,
                          out: TextIO, err: TextIO, reference: ReferenceData | None = None) -> int:
    """An 835, CSV or fixed-width file, streamed: events on `out`, one dead letter per bad unit on `err`."""
    ctx = TranslationContext(interface, "live", f"file://{path.resolve()}", datetime.now(UTC), timezone)
    sha = sha256_of(path) if fmt != "x12-835" else ""
    failed = 0
    with path.open("rb") as stream:
        for unit in file_units(stream, fmt, flat, ctx, name=path.name, sha256=sha, reference=reference):
            if unit.error is None:
                for event in unit.events:
                    out.write(event.to_json().decode() + "\n")
                continue
            failed += 1
            error = unit.error
            if fmt == "x12-835":
                letter: dict[str, object] = {
                    "file": str(path), "st_control": unit.st_control, "error": type(error).__name__,
                    "reason": error.reason, "locator": error.locator, "facility": error.facility,
                    "amount": None if error.amount is None else str(error.amount)}
            else:
                letter = {"file": str(path), "line": unit.line, "reason": error.reason}
            err.write(json.dumps(letter) + "\n")
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
            with path.open("rb") as fh:
                head = fh.read(64)
        except OSError as exc:
            err.write(f"{path}: cannot read: {exc.strerror}\n")
            failed += 1
            continue
        kind = fmt or detect_format(head)
        if kind in ("x12-835", "csv", "fixed-width"):
            # Streamed: a 1 GB export or remittance file is never held in memory.
            failed += translate_stream_file(path, kind, flat, interface, timezone, out, err, reference)
            continue
        for item in split_batch(path.read_bytes()):
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
