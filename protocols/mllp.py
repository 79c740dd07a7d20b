"""MLLP framing: byte-level encoding and incremental decoding, no HL7 parsing.

A frame on the wire is ``<SB> payload <EB> <CR>`` (``0x0B ... 0x1C 0x0D``). Decoding is
kept apart from parsing (python-hl7's ``readblock``/``readmessage`` split, Google's
``mllp`` package): this module only finds payload boundaries and hands back the exact
payload bytes. The one codec of the process: the listener (``wrappers.mllp_listener``)
feeds :class:`FrameDecoder` itself; the legacy sender and the simulated engine read one
frame at a time with :class:`FrameReader`, a thin loop over the same decoder.

The end-of-frame rule (issue 10 item 3; ``tests/test_mllp_frame_ends.py`` holds the
decoder and :class:`FrameReader` to one table of cases):

* ``<EB><CR>`` ends a frame.
* ``<EB>`` directly followed by ``<SB>MSH`` ends a frame: a pipelining sender that omits
  the ``<CR>``. The next frame starts at that ``<SB>``.
* ``<EB>`` as the last byte received so far: the decoder cannot tell yet, and waits
  (:attr:`FrameDecoder.awaiting_end`). The caller waits a short grace for the next byte
  and, if none comes, calls :meth:`FrameDecoder.accept_end` -- a sender that omits the
  ``<CR>`` and waits for its ACK keeps working, one grace later.
* Any other ``<EB>`` is a lone ``0x1C`` inside the payload, which MLLP forbids. The frame
  is *malformed*: the decoder reads on to the real end and returns a :class:`Malformed`
  marker carrying the whole frame's bytes and a reason (a byte offset, never content).
  Before, the payload was cut at the stray byte and the tail dropped as junk -- a
  truncated message that was then acknowledged.
* ``<SB>`` inside a frame followed by ``MSH`` means the sender restarted mid-frame: the
  partial frame is abandoned (counted in :attr:`FrameDecoder.restarted_frames`) and a new
  one starts. A ``<SB>`` followed by anything else is data inside a field: the frame is
  malformed as above (before, the message's start was silently dropped).

What the rule cannot see: a payload containing ``0x1C 0x0D`` is indistinguishable from a
frame end; its tail arrives outside any frame and is counted as junk.

Other leniency, on purpose: bytes outside a frame (before a start block, or between
frames) are dropped and counted in :attr:`FrameDecoder.junk_bytes`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final, TypeAlias

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\x0d"
NEXT_FRAME: Final = START_BLOCK + b"MSH"
"""What must follow a ``<SB>`` inside a frame (or an ``<EB>`` without ``<CR>``) for it to
count as the start of a new message rather than payload data."""

END_GRACE_SECONDS: Final = 0.5
"""How long an ``<EB>`` that is the last byte received waits for a ``<CR>`` (or more)."""
DEFAULT_READ_SIZE: Final = 65536

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


@dataclass(frozen=True, slots=True)
class Malformed:
    """Marker for a complete frame with a stray block byte inside its payload.

    ``payload`` is every byte between the start block and the real end (stray bytes
    included), to be kept as received; ``reason`` names the first stray byte and its
    offset, never content. Never to be acknowledged positively or forwarded.
    """

    payload: bytes
    reason: str


DecodedItem: TypeAlias = bytes | Oversize | Malformed
"""One item out of :meth:`FrameDecoder.feed`: a payload, or an Oversize/Malformed marker."""


def after_start_is_new_frame(data: bytes | bytearray, at: int) -> bool | None:
    """Whether the ``<SB>`` at ``data[at]`` starts a message (True), is payload data
    (False), or cannot be told yet because ``data`` ends too soon (None)."""
    seen = data[at : at + len(NEXT_FRAME)]
    if seen == NEXT_FRAME:
        return True
    return None if NEXT_FRAME.startswith(seen) else False


def after_end_is_frame_end(data: bytes | bytearray, at: int) -> bool | None:
    """Whether the ``<EB>`` at ``data[at]`` ends the frame (True), is a lone ``0x1C``
    inside the payload (False), or cannot be told yet (None: nothing, or only the start
    of a next frame, follows it)."""
    if at + 1 == len(data):
        return None
    if data[at + 1] == _CR_BYTE:
        return True
    return after_start_is_new_frame(data, at + 1)


class FrameDecoder:
    """Incremental MLLP decoder: feed it reads, get back complete payloads in order.

    Cost is linear in the bytes fed whatever the read sizes (one byte per read works):
    a frame that arrives whole inside one read is sliced out without extra copies; a
    frame spread over several reads is accumulated in a ``bytearray``. The few bytes
    that need a look further than the read reaches (at most ``<EB><SB>MS``) are carried
    over to the next read.
    """

    __slots__ = (
        "_buf",
        "_carry",
        "_reason",
        "_size",
        "_state",
        "junk_bytes",
        "malformed",
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
        self.malformed = 0
        """Complete frames returned as :class:`Malformed`."""
        self._state = _IDLE
        self._buf = bytearray()
        self._size = 0  # payload bytes taken so far in the current frame (buffered or discarded)
        self._carry = b""  # undecided bytes at the end of the last read, seen again first
        self._reason: str | None = None  # why the current frame is malformed, if it is

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not ended (partial data pending)."""
        return self._state != _IDLE

    @property
    def discarding(self) -> bool:
        """True while the current frame is over ``max_size`` (it will come out as Oversize)."""
        return self._state == _DISCARDING

    @property
    def awaiting_end(self) -> bool:
        """True when the last byte fed is an ``<EB>`` that may end the frame.

        The caller waits a short grace for more bytes; if none come, it calls
        :meth:`accept_end`.
        """
        return self._carry == END_BLOCK

    def accept_end(self) -> list[DecodedItem]:
        """Take the pending ``<EB>`` as the end of the frame (nothing followed it in time)."""
        if not self.awaiting_end:
            return []
        self._carry = b""
        return [self._finish_frame(b"", 0, 0)]

    def feed(self, data: bytes) -> list[DecodedItem]:
        """Consume one read; return the payloads (or markers) it completed."""
        out: list[DecodedItem] = []
        if self._carry and data:
            data, self._carry = self._carry + data, b""
        pos = 0
        end = len(data)
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
        self._reason = None
        if self._buf:
            # A fresh object rather than clear(): lets a large buffer's memory go.
            self._buf = bytearray()

    def _consume_frame(self, data: bytes, pos: int, out: list[DecodedItem]) -> int:
        """Take frame bytes from ``data[pos:]``; return the position to resume from.

        ``data[pos:scan]`` are frame bytes already judged but not yet taken: they are
        taken in one piece, so a frame inside one read is a single slice.
        """
        scan = pos
        end = len(data)
        while True:
            end_block = data.find(END_BLOCK, scan)
            stop = end if end_block < 0 else end_block
            start = data.find(START_BLOCK, scan, stop)
            if start >= 0:
                verdict = after_start_is_new_frame(data, start)
                if verdict is None:
                    return self._carry_from(data, pos, start)
                if verdict:
                    # Sender restarted mid-frame: what we hold is an orphan; never deliver it.
                    self.restarted_frames += 1
                    self._begin_frame()
                    return start + 1
                self._mark_malformed("0x0B", start - pos)
                scan = start + 1
                continue
            if end_block < 0:
                self._take(data, pos, end)
                return end
            verdict = after_end_is_frame_end(data, end_block)
            if verdict is None:
                return self._carry_from(data, pos, end_block)
            if verdict:
                out.append(self._finish_frame(data, pos, end_block))
                is_cr = data[end_block + 1] == _CR_BYTE
                return end_block + 2 if is_cr else end_block + 1
            self._mark_malformed("0x1C", end_block - pos)
            scan = end_block + 1

    def _carry_from(self, data: bytes, pos: int, at: int) -> int:
        """Take ``data[pos:at]``; keep ``data[at:]`` to be judged with the next read."""
        self._take(data, pos, at)
        self._carry = data[at:]
        return len(data)

    def _mark_malformed(self, byte: str, offset: int) -> None:
        if self._reason is None:
            self._reason = f"{byte} inside the payload at byte {self._size + offset}"

    def _take(self, data: bytes, pos: int, stop: int) -> None:
        """Add ``data[pos:stop]`` to the current frame (or just count it when discarding)."""
        self._size += stop - pos
        if self._state == _IN_FRAME and self._size > self.max_size:
            self._state = _DISCARDING
            self._buf = bytearray()
        if self._state == _IN_FRAME and stop > pos:
            self._buf += memoryview(data)[pos:stop]

    def _finish_frame(self, data: bytes, pos: int, end_block: int) -> DecodedItem:
        """Build the item for the frame whose last payload byte is before ``end_block``; go idle."""
        size = self._size + end_block - pos
        state, reason = self._state, self._reason
        self._state = _IDLE
        self._reason = None
        if state == _DISCARDING or size > self.max_size:
            self.oversize += 1
            self._buf = bytearray()
            return Oversize(size)
        if not self._buf:
            payload = data[pos:end_block]  # fast path: the whole frame was in this read
        else:
            self._buf += memoryview(data)[pos:end_block]
            payload = bytes(self._buf)
            self._buf = bytearray()
        if reason is None:
            return payload
        self.malformed += 1
        return Malformed(payload, reason)


class FrameTooLarge(ValueError):
    """An incoming frame exceeds the configured maximum size."""


class MalformedFrame(ValueError):
    """A frame with a stray block byte inside its payload (``reason`` has no content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def read_some(reader: asyncio.StreamReader, size: int, grace: float | None) -> bytes | None:
    """The next read of at most ``size`` bytes (``b""`` at EOF); with ``grace``, None when
    nothing arrived within ``grace`` seconds (an ``<EB>`` is waiting for what follows)."""
    if grace is None:
        return await reader.read(size)
    try:
        async with asyncio.timeout(grace):
            return await reader.read(size)
    except TimeoutError:
        return None


class FrameReader:
    """One frame at a time from a :class:`asyncio.StreamReader`, through a :class:`FrameDecoder`.

    For a peer that answers one frame per request (the legacy sender reading its ACK, the
    simulated engine reading a message). Frames decoded past the one returned wait for
    the next :meth:`read`; :attr:`leftover` says whether there are any. An ``<EB>`` that
    is the last byte received ends its frame once nothing follows within ``end_grace``
    seconds, or at EOF -- the listener's rule.
    """

    __slots__ = ("_end_grace", "_pending", "_read_size", "_reader", "decoder")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        max_size: int,
        *,
        end_grace: float = END_GRACE_SECONDS,
        read_size: int = DEFAULT_READ_SIZE,
    ) -> None:
        """Read from ``reader``; payloads over ``max_size`` bytes raise :class:`FrameTooLarge`."""
        self.decoder = FrameDecoder(max_size)
        self._reader = reader
        self._end_grace = end_grace
        self._read_size = read_size
        self._pending: deque[DecodedItem] = deque()

    @property
    def leftover(self) -> bool:
        """Frames (or part of one) received past the last frame returned.

        Bytes outside any frame do not count: the decoder drops them, so they can never be
        read as a frame later.
        """
        return bool(self._pending) or self.decoder.in_frame

    async def read(self) -> bytes:
        """The next frame's payload.

        Raises ``asyncio.IncompleteReadError`` at EOF (``partial`` empty),
        :class:`FrameTooLarge` as soon as the frame passes ``max_size`` (without reading
        the rest: the stream is then out of step, close it), :class:`MalformedFrame`
        (after the whole frame) for a stray block byte inside it.
        """
        item = await self.read_item()
        if isinstance(item, Oversize):
            raise FrameTooLarge(f"frame over {self.decoder.max_size} bytes")
        if isinstance(item, Malformed):
            raise MalformedFrame(item.reason)
        return item

    async def read_item(self) -> DecodedItem:
        """The next decoded item; :class:`Oversize` as soon as a frame passes ``max_size``."""
        decoder = self.decoder
        while not self._pending:
            if decoder.discarding:
                return Oversize(decoder.max_size + 1)  # the rest is not worth waiting for
            waiting = decoder.awaiting_end
            data = await read_some(self._reader, self._read_size, self._end_grace if waiting else None)
            if data is None or (not data and waiting):
                self._pending.extend(decoder.accept_end())  # nothing followed the final <EB>
            elif not data:
                raise asyncio.IncompleteReadError(b"", None)
            else:
                self._pending.extend(decoder.feed(data))
        return self._pending.popleft()
