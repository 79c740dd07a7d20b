"""Split a file of HL7 v2 messages into single raw messages.

Files found in the wild hold one message or many, with CR, LF, CRLF or mixed line
ends, optional FHS/BHS ... BTS/FTS envelopes, blank lines (between messages and,
sometimes, inside one), comment lines, MLLP control bytes or ``[SOM]``/``[EOM]``
placeholders written as text, and hard-wrapped or otherwise damaged lines.

Rules, in order, for each line:

* MLLP bytes (0x0b, 0x1c), a UTF-8 BOM, ``[SOM]`` and trailing ``[EOM]``/``[CR]``/``[LF]``
  are removed, then leading whitespace;
* a blank line is skipped (it may sit inside a message: the message goes on);
* ``MSH`` starts a new message; ``FHS``/``BHS``/``BTS``/``FTS`` end the current one
  and are dropped;
* a segment line (``ABC<field separator>...``) belongs to the current message;
* any other line is kept with the current message when it directly follows it
  (hard-wrapped text: the translator sees, and may reject, what was sent), and is
  dropped when it comes before the first MSH or after a blank line (comments,
  headers, garbage between messages).

Nothing is repaired: a message's ``raw`` is its lines joined by CR, ending with CR.
Data without any MSH yields exactly one item holding the data as given, so the
caller can reject it with a reason instead of seeing nothing.

:func:`split_stream` applies the same rules to a file read in chunks (a batch file of
any size is never held in memory whole); :func:`envelope_of` reads the FHS and BHS a
batch acknowledgement answers (canonical/hl7v2/batch_ack.py).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["BatchItem", "Envelope", "envelope_of", "split_batch", "split_stream"]

_BOM = b"\xef\xbb\xbf"
_ENVELOPE = frozenset((b"FHS", b"BHS", b"BTS", b"FTS"))
_TEXT_FRAMING_TAIL = (b"[EOM]", b"[CR]", b"[LF]")


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One message of a file: 0-based ``index``, 1-based ``line`` of its MSH, ``raw`` bytes."""

    index: int
    line: int
    raw: bytes


@dataclass(slots=True)
class _Open:
    line: int
    field_sep: bytes
    lines: list[bytes]
    after_blank: bool = False

    def item(self, index: int) -> BatchItem:
        return BatchItem(index, self.line, b"\r".join(self.lines) + b"\r")


def split_batch(data: bytes) -> Iterator[BatchItem]:
    """Yield every message in ``data`` (see the module docstring for the rules)."""
    count = yield from _split(_normalised(data))
    if count == 0:
        yield BatchItem(0, 1, data)


READ_CHUNK = 1 << 20
"""Bytes read at a time by :func:`split_stream`."""
NO_MSH_HEAD = 64 * 1024
"""How much of a file without any MSH its one item holds (what the translator rejects)."""


def split_stream(stream: BinaryIO, chunk: int = READ_CHUNK) -> Iterator[BatchItem]:
    """:func:`split_batch` over a binary file, read ``chunk`` bytes at a time: the same items.

    A file without any MSH yields one item holding its first bytes (the stream is seekable: a
    file), so it is rejected with a reason like :func:`split_batch`'s."""
    count = yield from _split(_stream_lines(stream, chunk))
    if count == 0:
        stream.seek(0)
        yield BatchItem(0, 1, stream.read(NO_MSH_HEAD))


def _normalised(data: bytes) -> list[bytes]:
    """Lines on CR, LF or CRLF (one terminator), as split_batch always cut them."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def _stream_lines(stream: BinaryIO, chunk: int) -> Iterator[bytes]:
    """The lines :func:`_normalised` cuts from the whole stream, read a chunk at a time: a CR at
    the end of a chunk waits for the next one (CRLF split across two chunks is one line end)."""
    carry = b""
    while block := stream.read(chunk):
        data = carry + block
        held = b""
        if data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        lines = _normalised(data)
        carry = lines.pop() + held  # the last line is not complete yet
        yield from lines
    yield from _normalised(carry)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The first FHS and BHS of a file (``None`` when absent), as sent (latin-1 view)."""

    fhs: str | None = None
    bhs: str | None = None


def envelope_of(head: bytes) -> Envelope:
    """The FHS and BHS lines that come before the first MSH in ``head`` (a file's first bytes)."""
    found: dict[bytes, str] = {}
    for raw in _normalised(head):
        line = _clean(raw)
        kind = line[:3]
        if kind == b"MSH":
            break
        if kind in (b"FHS", b"BHS") and line[3:4] and not line[3:4].isalnum() and kind not in found:
            found[kind] = line.decode("latin-1")
    return Envelope(found.get(b"FHS"), found.get(b"BHS"))


def _split(lines: Iterable[bytes]) -> Generator[BatchItem, None, int]:
    """The messages of ``lines``; returns how many (``yield from``)."""
    current: _Open | None = None
    count = 0
    for number, line in enumerate(lines, 1):
        line = _clean(line)
        head = line[:3]
        if head == b"MSH":
            if current is not None:
                yield current.item(count)
                count += 1
            current = _Open(number, line[3:4], [line])
        elif not line.strip():
            if current is not None:
                current.after_blank = True
        elif head in _ENVELOPE and not line[3:4].isalnum():
            if current is not None:
                yield current.item(count)
                count += 1
            current = None
        elif current is not None:
            _add_line(current, line)
    if current is not None:
        yield current.item(count)
        count += 1
    return count


def _add_line(current: _Open, line: bytes) -> None:
    if _is_segment(line, current.field_sep):
        current.lines.append(line)
        current.after_blank = False
    elif not current.after_blank:
        current.lines.append(line)  # damaged line directly inside a message: keep it


def _clean(line: bytes) -> bytes:
    line = line.strip(b"\x0b\x1c")
    if line.startswith(_BOM):
        line = line[3:]
    if line.startswith(b"[SOM]"):
        line = line[5:]
    while line.endswith(_TEXT_FRAMING_TAIL):
        line = line[: line.rindex(b"[")]
    return line.lstrip(b" \t\x0b\x0c\x1c")


def _is_segment(line: bytes, field_sep: bytes) -> bool:
    head = line[:3]
    return (
        len(head) == 3
        and head[:1].isalpha()
        and head.isalnum()
        and head.upper() == head
        and line[3:4] in (field_sep, b"")
    )
