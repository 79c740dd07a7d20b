"""Bounding and neutralising text that leaves Ficus in logs, ACKs, dead letters and the API.

Reasons are written without field values (see :mod:`canonical.errors`); identifiers such
as control ids may appear, but a sender controls them: they can be 5,000 characters long
or carry a newline that forges a log line. These two functions are the one place that
decides how such text is shown, and they are applied where text leaves (dead letters, ERR
segments, stats, parity samples, log lines).

Both are idempotent (applying them twice changes nothing) and never return more than
``limit`` characters.
"""

from __future__ import annotations

from hashlib import sha256

__all__ = ["MAX_ID", "MAX_REASON", "bounded_id", "safe_reason"]

#: Longest identifier shown (control id, sender, facility), after escaping.
MAX_ID = 40
#: Longest reason shown (dead letters, ERR-8, last error, parity details).
MAX_REASON = 240


def _escape(text: str) -> str:
    # Non-printable characters (CR, LF, ESC, C1 controls, U+2028...) become visible escapes.
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    # A short hash of the whole keeps two long values that share a prefix apart.
    tail = "...#" + sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return text[: max(0, limit - len(tail))] + tail


def bounded_id(value: str, limit: int = MAX_ID) -> str:
    """An identifier as it may be logged or stored: escaped, at most ``limit`` characters."""
    if len(value) <= limit and value.isprintable():
        return value  # the usual control id: no work
    return _cut(_escape(value), limit)


def safe_reason(text: str, limit: int = MAX_REASON) -> str:
    """A reason as it may go into an ERR segment, a dead letter or a log: escaped, bounded."""
    if len(text) <= limit and text.isprintable():
        return text
    return _cut(_escape(text), limit)
