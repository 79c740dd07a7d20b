"""MLLP framing: pure byte-level encoding and incremental decoding, no I/O, no HL7.

A frame on the wire is ``<SB> payload <EB> <CR>`` (``0x0B ... 0x1C 0x0D``). Decoding is
kept apart from parsing (python-hl7's ``readblock``/``readmessage`` split, Google's
``mllp`` package): this module only finds payload boundaries and hands back the exact
payload bytes.

Leniency, on purpose:

* Bytes outside a frame (before a start block, or between frames) are dropped and
  counted in :attr:`FrameDecoder.junk_bytes`.
* ``<EB>`` alone ends a frame: some senders omit the trailing ``<CR>``. The ``<CR>`` is
  swallowed when present (even if it arrives in the next read) and never counted as
  junk. The cost is that a payload can never contain ``0x1C`` -- the MLLP spec forbids
  it anyway -- and a frame is delivered as soon as ``<EB>`` arrives, without waiting
  for a ``<CR>`` that may never come.
* ``<SB>`` inside a frame means the sender restarted mid-frame: the partial frame is
  abandoned (counted in :attr:`FrameDecoder.restarted_frames`) and a new one starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\x0d"

_CR_BYTE: Final = CARRIAGE_RETURN[0]

# Decoder states: outside any frame, accumulating a frame, skipping an oversize frame.
_IDLE: Final = 0
_IN_FRAME: Final = 1
_DISCARDING: Final = 2


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in an MLLP frame: ``<SB> payload <EB> <CR>``."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True, slots=True)
class Oversize:
    """Marker for a complete frame whose payload exceeded ``max_size`` and was discarded.

    ``size`` is the full payload length in bytes. It stands in the decoder's output at
    the position the frame would have had, so a caller can answer it (e.g. with a NAK)
    in order with the frames around it.
    """

    size: int


DecodedItem: TypeAlias = bytes | Oversize
"""One item out of :meth:`FrameDecoder.feed`: a payload, or an :class:`Oversize` marker."""


class FrameDecoder:
    """Incremental MLLP decoder: feed it reads, get back complete payloads in order.

    Cost is linear in the bytes fed whatever the read sizes (one byte per read works):
    a frame that arrives whole inside one read is sliced out without extra copies; a
    frame spread over several reads is accumulated in a ``bytearray``.
    """

    __slots__ = (
        "_buf",
        "_size",
        "_skip_cr",
        "_state",
        "junk_bytes",
        "max_size",
        "oversize",
        "restarted_frames",
    )

    def __init__(self, max_size: int) -> None:
        """Create a decoder accepting payloads of at most ``max_size`` bytes."""
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self.max_size = max_size
        self.junk_bytes = 0
        """Bytes dropped because they were outside any frame."""
        self.oversize = 0
        """Complete frames discarded for exceeding ``max_size``."""
        self.restarted_frames = 0
        """Partial frames abandoned because a new start block arrived inside them."""
        self._state = _IDLE
        self._buf = bytearray()
        self._size = 0  # payload bytes seen so far in the current frame
        self._skip_cr = False  # an <EB> ended the previous read: swallow a leading <CR>

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not ended (partial data pending)."""
        return self._state != _IDLE

    def feed(self, data: bytes) -> list[DecodedItem]:
        """Consume one read; return the payloads (or Oversize markers) it completed."""
        out: list[DecodedItem] = []
        pos = 0
        end = len(data)
        if self._skip_cr and end:
            self._skip_cr = False
            if data[0] == _CR_BYTE:
                pos = 1
        while pos < end:
            pos = self._seek_start(data, pos) if self._state == _IDLE else self._consume_frame(data, pos, out)
        return out

    def _seek_start(self, data: bytes, pos: int) -> int:
        """Skip to just past the next start block, counting what is skipped as junk."""
        start = data.find(START_BLOCK, pos)
        if start < 0:
            self.junk_bytes += len(data) - pos
            return len(data)
        self.junk_bytes += start - pos
        self._begin_frame()
        return start + 1

    def _begin_frame(self) -> None:
        self._state = _IN_FRAME
        self._size = 0
        if self._buf:
            # A fresh object rather than clear(): lets a large buffer's memory go.
            self._buf = bytearray()

    def _consume_frame(self, data: bytes, pos: int, out: list[DecodedItem]) -> int:
        """Take frame bytes from ``data[pos:]``; return the position to resume from."""
        end_block = data.find(END_BLOCK, pos)
        stop = len(data) if end_block < 0 else end_block
        restart = data.find(START_BLOCK, pos, stop)
        if restart >= 0:
            # Sender restarted mid-frame: what we hold is an orphan; never deliver it.
            self.restarted_frames += 1
            self._begin_frame()
            return restart + 1
        self._size += stop - pos
        if self._state == _IN_FRAME and self._size > self.max_size:
            self._state = _DISCARDING
            self._buf = bytearray()
        if end_block < 0:
            if self._state == _IN_FRAME:
                self._buf += memoryview(data)[pos:stop]
            return stop
        out.append(self._finish_frame(data, pos, end_block))
        return self._after_end_block(data, end_block)

    def _finish_frame(self, data: bytes, pos: int, end_block: int) -> DecodedItem:
        """Build the item for the frame ending at ``end_block`` and go idle."""
        state = self._state
        self._state = _IDLE
        if state == _DISCARDING:
            self.oversize += 1
            return Oversize(self._size)
        if not self._buf:
            return data[pos:end_block]  # fast path: the whole frame was in this read
        self._buf += memoryview(data)[pos:end_block]
        payload = bytes(self._buf)
        self._buf = bytearray()
        return payload

    def _after_end_block(self, data: bytes, end_block: int) -> int:
        """Swallow the <CR> that normally follows <EB>, here or at the next read."""
        after = end_block + 1
        if after == len(data):
            self._skip_cr = True
            return after
        return after + 1 if data[after] == _CR_BYTE else after
