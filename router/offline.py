"""`ficus translate`: files to canonical events without NATS, for trying a feed before wiring it."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from canonical.enrich import enrich
from canonical.errors import CanonicalError, TranslationError
from canonical.flat import FlatSpec
from canonical.hl7v2.batch import split_batch
from canonical.hl7v2.reader import peek_header
from canonical.reference import ReferenceData
from canonical.safe_text import bounded_id
from canonical.translate import Hl7Mapping, TranslationContext, translate_hl7
from router.file_units import file_units, sha256_of
from router.progress import Progress

DETECT_BYTES = 64 * 1024
"""How much of a file format detection reads."""

# A line that starts an HL7 v2 message or batch, after what files in the wild put before it
# (MLLP bytes, a BOM, `[SOM]` written as text, blanks); comment lines may come first.
_HL7_LINE = re.compile(rb"(?:^|[\r\n])(?:\xef\xbb\xbf|[\x0b\x1c \t]|\[SOM\])*(?:MSH|FHS|BHS)[^A-Za-z0-9\r\n]")

UNDETECTED = ("format not detected: no MSH, FHS or BHS segment (HL7 v2) and no ISA or ST first (X12 835) in the "
              "first 64 KB; name the format: --format csv or --format fixed-width with -c CONFIG --interface IFACE "
              "(the interface's layout), or --format hl7v2 / --format x12-835")


def detect_format(head: bytes) -> str | None:
    """`x12-835` for X12 (ISA or ST first, UTF-16 too), `hl7v2` when a line starts with MSH, FHS or
    BHS, None when neither (a CSV or fixed-width file names its format), from a file's first bytes."""
    text = head.replace(b"\x00", b"")  # UTF-16 text, read as bytes
    first = text[:64].lstrip(b"\xef\xbb\xbf\xff\xfe \r\n\t")
    if first[:3] in (b"ISA", b"ST*", b"ST|"):
        return "x12-835"
    return "hl7v2" if _HL7_LINE.search(text) else None


def _control_id(raw: bytes) -> str | None:
    """MSH-10 of a raw message, bounded and escaped (an identifier, safe to print); None without one."""
    try:
        return bounded_id(peek_header(raw).control_id) or None
    except CanonicalError:
        return None


def translate_stream_file(path: Path, fmt: str, flat: FlatSpec | None, interface: str, timezone: str,
                          out: TextIO, err: TextIO, reference: ReferenceData | None = None,
                          progress: bool | None = False) -> int:
    """An 835, CSV or fixed-width file, streamed: events on `out`, one dead letter per bad unit on `err`.

    `progress` (see `translate_files`) counts the bytes of the file read so far.
    """
    ctx = TranslationContext(interface, "live", f"file://{path.resolve()}", datetime.now(UTC), timezone)
    sha = sha256_of(path) if fmt != "x12-835" else ""
    failed = 0
    with path.open("rb") as stream, Progress(os.fstat(stream.fileno()).st_size, "bytes", err, label=path.name,
                                             enabled=progress) as shown:
        for unit in file_units(stream, fmt, flat, ctx, name=path.name, sha256=sha, reference=reference):
            # The readers read ahead (835: 1 MiB chunks), so this runs a little ahead of the units.
            shown.update(stream.tell())
            if unit.error is None:
                for event in unit.events:
                    out.write(event.to_json().decode() + "\n")
                continue
            failed += 1
            shown.clear()  # dead letters share its terminal line
            error = unit.error
            if fmt == "x12-835" and isinstance(error, TranslationError):  # 835 errors always are
                letter: dict[str, object] = {
                    "file": str(path), "st_control": unit.st_control, "error": type(error).__name__,
                    "reason": error.reason, "locator": error.locator, "facility": error.facility,
                    "amount": None if error.amount is None else str(error.amount)}
            else:
                letter = {"file": str(path), "line": unit.line, "reason": error.reason}
            err.write(json.dumps(letter) + "\n")
    return failed


def translate_files(
    files: list[Path], *, fmt: str, mapping: str | Hl7Mapping, interface: str, timezone: str,
    encoding: str, fallback: str | None, out: TextIO, err: TextIO, reference: ReferenceData | None = None,
    flat: FlatSpec | None = None, progress: bool | None = False,
) -> int:
    """Writes events as JSON lines to `out`, dead letters to `err`; returns how many failed.

    `fmt` None detects the format of each file from its first bytes. `progress` None shows each
    file's progress on `err` when it is a terminal (router.progress), True always, False never.
    """
    failed = 0
    for path in files:
        try:
            with path.open("rb") as fh:
                head = fh.read(DETECT_BYTES)
        except OSError as exc:
            err.write(json.dumps({"file": str(path), "error": type(exc).__name__,
                                  "reason": f"cannot read: {exc.strerror or type(exc).__name__}"}) + "\n")
            failed += 1
            continue
        kind = fmt or detect_format(head)
        if kind is None:
            reason = "empty file" if not head.strip() else UNDETECTED
            err.write(json.dumps({"file": str(path), "error": "FormatNotDetected", "reason": reason}) + "\n")
            failed += 1
            continue
        if kind in ("x12-835", "csv", "fixed-width"):
            # Streamed: a 1 GB export or remittance file is never held in memory.
            failed += translate_stream_file(path, kind, flat, interface, timezone, out, err, reference, progress)
            continue
        with Progress(None, "messages", err, label=path.name, enabled=progress) as shown:
            for item in split_batch(path.read_bytes()):
                shown.advance()
                ctx = TranslationContext(interface, "live", f"file://{path.resolve()}#L{item.line}",
                                         datetime.now(UTC), timezone)
                try:
                    result = translate_hl7(item.raw, mapping, ctx, encoding=encoding, fallback=fallback)
                    events = enrich(result.events, reference) if reference else result.events
                except CanonicalError as exc:
                    failed += 1
                    shown.clear()
                    err.write(json.dumps({
                        "file": str(path), "line": item.line, "message": item.index + 1,
                        "control_id": bounded_id(getattr(exc, "control_id", "") or "") or _control_id(item.raw),
                        "error": type(exc).__name__,
                        "reason": exc.reason,
                    }) + "\n")
                    continue
                for event in events:
                    out.write(event.to_json().decode() + "\n")
    return failed
