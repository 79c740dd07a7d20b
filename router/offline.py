"""`ficus translate`: files to canonical events without NATS, for trying a feed before wiring it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from canonical.translate import TranslationContext, translate_hl7

from canonical.errors import CanonicalError
from canonical.hl7v2.batch import split_batch


def translate_files(
    files: list[Path], *, fmt: str, mapping: str, interface: str, timezone: str,
    encoding: str, fallback: str | None, out: TextIO, err: TextIO,
) -> int:
    """Writes events as JSON lines to `out`, dead letters to `err`; returns how many failed."""
    failed = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            err.write(f"{path}: cannot read: {exc.strerror}\n")
            failed += 1
            continue
        for item in split_batch(data):
            ctx = TranslationContext(interface, "live", f"file://{path.resolve()}#L{item.line}",
                                     datetime.now(UTC), timezone)
            try:
                result = translate_hl7(item.raw, mapping, ctx, encoding=encoding, fallback=fallback)
            except CanonicalError as exc:
                failed += 1
                err.write(json.dumps({
                    "file": str(path), "line": item.line, "message": item.index + 1,
                    "control_id": getattr(exc, "control_id", None), "error": type(exc).__name__,
                    "reason": exc.reason,
                }) + "\n")
                continue
            for event in result.events:
                out.write(event.to_json().decode() + "\n")
    return failed
