"""A streaming X12 tokenizer: bytes in, segments out, in constant memory.

The reader never holds more than one chunk (``CHUNK_SIZE`` bytes) plus one
partial segment: it decodes chunk by chunk, splits on the segment terminator and
keeps the unfinished tail for the next chunk. Delimiters come from the ISA
header, found by counting element separators rather than fixed offsets, so an
ISA whose fields are not padded to width still reads. A file that starts at ST
(no envelope) uses ``*`` / ``:`` and ``~``, or line ends when there is no ``~``.

Encodings: UTF-8 (with or without BOM) and UTF-16LE (with a BOM, or detected
from the NUL after ``I`` / ``S``). Whitespace around segments - CR, LF, CRLF and
the indentation of pretty-printed files - is dropped.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

__all__ = ["CHUNK_SIZE", "Delimiters", "Segment", "X12Reader", "X12SyntaxError", "is_segment_id"]

CHUNK_SIZE = 1 << 20
# ISA has 16 elements; its 16th separator is followed by ISA16 and the terminator.
_ISA_SEPARATORS = 16
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{1,2}")


class X12SyntaxError(ValueError):
    """The bytes are not X12: no ISA or ST at the start, or an unusable ISA header."""


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The separators of one file; ``repetition`` is None when ISA11 is ``U`` (4010)."""

    element: str = "*"
    component: str = ":"
    segment: str = "~"
    repetition: str | None = None


class Segment(NamedTuple):
    """One segment: ``elements[0]`` is the segment id, ``number`` its 1-based position in the file."""

    number: int
    elements: list[str]

    @property
    def id(self) -> str:
        """The segment id (``ISA``, ``CLP``...)."""
        return self.elements[0]

    def get(self, position: int) -> str:
        """Element ``position`` (1-based, as in ``CLP04``), ``""`` when absent."""
        elements = self.elements
        return elements[position] if position < len(elements) else ""


def is_segment_id(name: str) -> bool:
    """Whether ``name`` is a well-formed segment id (two or three upper-case alphanumerics)."""
    return _SEGMENT_ID.fullmatch(name) is not None


def _chunks(source: BinaryIO | Iterable[bytes], size: int) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is None:
        yield from source
        return
    while chunk := read(size):
        yield chunk


def _decoder_for(head: bytes) -> codecs.IncrementalDecoder:
    # X12 is ASCII by contract; replacing stray bytes keeps one bad byte from
    # failing a whole file - the segment it lands in fails validation instead.
    if head.startswith(codecs.BOM_UTF16_LE) or head[1:2] == b"\x00":
        return codecs.getincrementaldecoder("utf-16-le")(errors="replace")
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


def _delimiters(text: str, final: bool) -> Delimiters | None:
    """Delimiters from the start of ``text``; None when more text is needed."""
    if text.startswith("ISA"):
        sep = text[3:4]
        position = 3  # the first separator; 15 more to find
        for _ in range(_ISA_SEPARATORS - 1):
            position = text.find(sep, position + 1)
            if position < 0:
                break
        if position < 0 or position + 2 >= len(text):
            if final:
                raise X12SyntaxError("ISA header is incomplete: fewer than 16 elements")
            return None
        component, terminator = text[position + 1], text[position + 2]
        repetition = text.split(sep, 12)[11]
        rep = repetition if len(repetition) == 1 and not repetition.isalnum() else None
        return Delimiters(sep, component, terminator, rep)
    if text.startswith("ST"):
        if "~" in text:
            return Delimiters(text[2], ":", "~")
        if "\n" in text or final:
            return Delimiters(text[2], ":", "\n")
        return None
    if len(text) >= 3 or final:
        raise X12SyntaxError("not X12: the file starts with neither ISA nor ST")
    return None


class X12Reader:
    """Iterate the segments of an X12 byte stream.

    ``source`` is a binary file object (read in ``chunk_size`` pieces) or an
    iterable of bytes chunks. ``delimiters`` is set once the header was read.
    Iterating raises :class:`X12SyntaxError` when the start is not X12.
    """

    def __init__(self, source: BinaryIO | Iterable[bytes], *, chunk_size: int = CHUNK_SIZE) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self.delimiters: Delimiters | None = None

    def __iter__(self) -> Iterator[Segment]:
        index = 0
        for batch in self.batches():
            sep = self.element_separator
            for text in batch:
                index += 1
                yield Segment(index, text.split(sep))

    @property
    def element_separator(self) -> str:
        """The element separator, once the header was read."""
        assert self.delimiters is not None
        return self.delimiters.element

    def batches(self) -> Iterator[list[str]]:
        """The segments' texts (not split into elements), one list per chunk read; the n-th overall is number n.

        The translator's hot path: a list of strings per chunk costs one
        comprehension where a :class:`Segment` per segment costs a generator
        step and two objects. Strings also stay out of the garbage collector,
        which a chunk's worth of element lists would promote to its oldest
        generation, making full collections more frequent.
        """
        chunks = _chunks(self._source, self._chunk_size)
        decoder: codecs.IncrementalDecoder | None = None
        head = b""
        pending = ""
        for chunk in chunks:
            if decoder is None:
                # The encoding is guessed from the first 4 bytes, however small the chunks.
                head += chunk
                if len(head) < 4:
                    continue
                decoder, chunk = _decoder_for(head), head
            pending += decoder.decode(chunk)
            if self.delimiters is None:
                pending = pending.lstrip("\ufeff \t\r\n")
                self.delimiters = _delimiters(pending, final=False)
                if self.delimiters is None:
                    continue
            nul = "\x00" in pending
            parts = pending.split(self.delimiters.segment)
            pending = parts.pop()
            if batch := self._split(parts, nul):
                yield batch
        if decoder is None:
            decoder = _decoder_for(head)
            pending = decoder.decode(head)
        pending += decoder.decode(b"", final=True)
        if self.delimiters is None:
            pending = pending.lstrip("\ufeff \t\r\n\x00")
            if not pending:
                return
            self.delimiters = _delimiters(pending, final=True)
        if batch := self._split([pending], "\x00" in pending):
            yield batch

    @staticmethod
    def _split(parts: list[str], nul: bool) -> list[str]:
        # strip(): line breaks and indentation between segments, and the
        # NBSP/NUL padding some writers leave at the end of a file. NULs are
        # rare, so the second strip runs only for the chunks that have one.
        if nul:
            return [text for part in parts if (text := part.strip().strip("\x00"))]
        return [text for part in parts if (text := part.strip())]
