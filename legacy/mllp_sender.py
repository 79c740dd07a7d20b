"""MLLP client to the legacy interface engine: forward exact bytes, return the exact reply.

The legacy path must keep working byte for byte, so nothing here parses or rewrites the
message: the payload goes out exactly as received, and the engine's reply comes back
exactly as the engine sent it, for the router to hand to the original sender.

The one thing checked is that the reply belongs to the message: MSA-2 must equal the
MSH-10 we sent, byte for byte (no trimming, no unescaping: engines echo the field as
sent, so ``\\F\\``, ``\\X41\\``, ``ID^2`` or a trailing space must compare as sent).
A reply that arrives after its timeout must never be taken for the next message's
(Mirth #1441), so any timeout, error or mismatch closes the connection
it happened on; the next send reconnects.

Error tree (``destination`` is the sender's name, ``reason`` a short text, no content):

* :class:`LegacyUnavailable` -- retryable: cannot connect, connection lost, no reply in
  time. If the message was already written the engine may have processed it, so a
  retry can duplicate (MLLP is at-least-once).
* :class:`LegacyAckMismatch` -- the reply is not about this message (MSA-2 differs, or
  there is no MSA segment). The engine's state for this message is unknown.
* :class:`LegacyError` itself -- give up: the payload cannot be framed (it contains an
  MLLP block byte), the reply is over ``max_message_bytes``, or the sender is closed.

This module does not import ``wrappers``: the few framing lines it needs are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

logger = logging.getLogger("ficus.legacy")

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\x0d"
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
_READ_SIZE: Final = 65536

# Backoff between connect attempts once the engine has refused twice in a row: sends
# in between fail at once instead of each waiting for its own connect to fail.
_BACKOFF_FIRST: Final = 0.1
_BACKOFF_MAX: Final = 2.0


class LegacyError(Exception):
    """Root of the legacy sender's errors; raised as such, it means "do not retry"."""

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"{destination}: {reason}")
        self.destination = destination
        self.reason = reason


class LegacyUnavailable(LegacyError):
    """The engine could not be reached or did not answer in time: retry later."""


class LegacyAckMismatch(LegacyError):
    """The reply's MSA-2 is not the control id sent (``received`` None: no MSA-2)."""

    def __init__(self, destination: str, expected: str, received: str | None) -> None:
        reason = "reply has no MSA segment" if received is None else "MSA-2 mismatch"
        super().__init__(destination, reason)
        self.expected = expected
        self.received = received


@dataclass(slots=True)
class SenderStats:
    """Counters since the sender was created; ``last_error`` never holds content."""

    sent: int = 0
    acked: int = 0
    failures: int = 0
    reconnects: int = 0
    last_error: str | None = None


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in an MLLP frame: ``<SB> payload <EB> <CR>``."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class FrameTooLarge(ValueError):
    """An incoming frame exceeds the configured maximum size."""


class MalformedFrame(ValueError):
    """A frame with a stray block byte inside its payload (``reason`` has no content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The end-of-frame rule is the listener's (wrappers/mllp_framing.py, whose docstring
# explains it); this module keeps its own copy of the few lines, and
# tests/test_mllp_frame_ends.py holds both to one table of cases.
_NEXT_FRAME: Final = START_BLOCK + b"MSH"
_CR_BYTE: Final = CARRIAGE_RETURN[0]
END_GRACE_SECONDS: Final = 0.5
"""How long an ``<EB>`` that is the last byte received waits for a ``<CR>`` (or more)."""


def _new_frame_at(data: bytearray, at: int) -> bool | None:
    """``<SB>`` at ``at`` starts a message (True), is data (False), or undecided (None)."""
    seen = bytes(data[at : at + len(_NEXT_FRAME)])
    if seen == _NEXT_FRAME:
        return True
    return None if _NEXT_FRAME.startswith(seen) else False


def _frame_end_at(data: bytearray, at: int) -> bool | None:
    """``<EB>`` at ``at`` ends the frame (True), is a stray byte (False), or undecided (None)."""
    if at + 1 == len(data):
        return None
    if data[at + 1] == _CR_BYTE:
        return True
    return _new_frame_at(data, at + 1)


async def read_frame(
    reader: asyncio.StreamReader, buffer: bytearray, max_size: int, *, end_grace: float = END_GRACE_SECONDS
) -> bytes:
    """Read one MLLP frame from ``reader`` and return its payload.

    ``buffer`` belongs to the connection and persists between calls: bytes read past
    the frame stay in it, except the ``<CR>`` right after ``<EB>``, which is dropped.
    Bytes before the start block are skipped. ``<EB><CR>`` ends a frame, so does
    ``<EB><SB>MSH`` (the next frame), and so does an ``<EB>`` that is the last byte
    received when nothing more comes within ``end_grace`` seconds (or at EOF).

    Raises ``asyncio.IncompleteReadError`` at EOF, :class:`FrameTooLarge` over
    ``max_size``, :class:`MalformedFrame` (after consuming the whole frame) when a
    stray ``<EB>``, or an ``<SB>`` not followed by ``MSH``, is inside the payload, and
    ``ValueError`` if an ``<EB>`` comes before any start block.
    """
    start = -1  # index of the frame's start block in buffer
    scan = 0  # next byte to judge: linear even for large frames read in many pieces
    reason: str | None = None
    while True:
        if start < 0:
            start = buffer.find(START_BLOCK, scan)
            limit = len(buffer) if start < 0 else start
            if buffer.find(END_BLOCK, scan, limit) >= 0:
                raise ValueError("MLLP frame without start block")
            scan = len(buffer) if start < 0 else start + 1
        if start >= 0:
            end_block = buffer.find(END_BLOCK, scan)
            inner = buffer.find(START_BLOCK, scan, len(buffer) if end_block < 0 else end_block)
            if inner >= 0:
                verdict = _new_frame_at(buffer, inner)
                if verdict is not None:
                    if verdict:  # the sender restarted: the newer frame supersedes
                        start, reason = inner, None
                    elif reason is None:
                        reason = f"0x0B inside the payload at byte {inner - start - 1}"
                    scan = inner + 1
                    continue
                scan = inner  # undecided: judge it again with more bytes
            elif end_block >= 0:
                verdict = _frame_end_at(buffer, end_block)
                if verdict is False:
                    if reason is None:
                        reason = f"0x1C inside the payload at byte {end_block - start - 1}"
                    scan = end_block + 1
                    continue
                if verdict:
                    return _take_frame(buffer, start, end_block, reason, max_size)
                scan = end_block
            else:
                scan = len(buffer)
        if len(buffer) - max(start, 0) - 1 > max_size + len(_NEXT_FRAME):
            raise FrameTooLarge(f"frame over {max_size} bytes")
        awaiting_end = start >= 0 and scan == len(buffer) - 1 and buffer[scan:] == END_BLOCK
        chunk = await _read_more(reader, end_grace if awaiting_end else None)
        if chunk is None or (not chunk and awaiting_end):
            # Nothing followed the final <EB> in time, or the engine closed after it.
            return _take_frame(buffer, start, scan, reason, max_size)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(buffer), None)
        buffer += chunk


async def _read_more(reader: asyncio.StreamReader, grace: float | None) -> bytes | None:
    """The next read; None when ``grace`` is given and nothing arrived within it."""
    if grace is None:
        return await reader.read(_READ_SIZE)
    try:
        async with asyncio.timeout(grace):
            return await reader.read(_READ_SIZE)
    except TimeoutError:
        return None


def _take_frame(buffer: bytearray, start: int, end_block: int, reason: str | None, max_size: int) -> bytes:
    """Cut the frame ending at ``end_block`` (and its <CR>) out of ``buffer``; return its payload."""
    payload = bytes(buffer[start + 1 : end_block])
    del buffer[: end_block + 2 if buffer[end_block + 1 : end_block + 2] == CARRIAGE_RETURN else end_block + 1]
    if len(payload) > max_size:
        raise FrameTooLarge(f"frame over {max_size} bytes")
    if reason is not None:
        raise MalformedFrame(reason)
    return payload


def ack_control_id(reply: bytes) -> bytes | None:
    """MSA-2 of an HL7 reply as raw bytes, or None if there is no MSH or MSA segment.

    Deliberately tiny: the field separator is the byte after ``MSH``; segments may end
    with ``\\r`` or ``\\n``.
    """
    body = reply.lstrip()
    if not body.startswith(b"MSH") or len(body) < 4:
        return None
    separator = body[3:4]
    for segment in body.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA" + separator):
            fields = segment.split(separator)
            return fields[2] if len(fields) > 2 else b""
    return None


def _same_control_id(received: bytes, expected: str) -> bool:
    """Compare MSA-2 with the MSH-10 sent (its latin-1 text), exactly."""
    try:
        return received == expected.encode("latin-1")
    except UnicodeEncodeError:  # not the latin-1 view of a field's bytes: never equal
        return False


class _Slot:
    """One pooled connection, used by one send at a time; opened lazily."""

    __slots__ = ("buffer", "reader", "used", "writer")

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = bytearray()  # bytes read past the last reply frame
        self.used = False  # connected at least once: the next connect is a reconnect

    def reusable(self) -> bool:
        """Connected, not closed by the engine, and nothing unsolicited received.

        Bytes left over after the last reply are a reply to nothing we are waiting
        for (late, duplicated): never risk matching them to the next message.
        """
        reader, writer = self.reader, self.writer
        if reader is None or writer is None or self.buffer:
            return False
        return not (writer.is_closing() or reader.at_eof() or reader.exception())

    def drop(self) -> None:
        """Close the connection so nothing still in flight on it can be read later."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.buffer = bytearray()


class MllpSender:
    """A small pool of MLLP connections to one legacy destination."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        connections: int = 1,
        connect_timeout: float = 5,
        ack_timeout: float = 30,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """Configure the pool; connections are opened lazily by :meth:`send`.

        ``max_message_bytes`` bounds the reply; outgoing payloads are never cut.
        """
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.name = name
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._max_message_bytes = max_message_bytes
        self._slots = [_Slot() for _ in range(connections)]
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            self._idle.put_nowait(slot)
        self._connect_failures = 0
        self._retry_at = 0.0
        self._closed = False
        self._stats = SenderStats()

    @property
    def stats(self) -> SenderStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats)

    async def send(self, payload: bytes, control_id: str) -> bytes:
        """Forward ``payload`` exactly, framed; return the engine's reply payload exactly.

        ``control_id`` is the message's MSH-10 exactly as sent, as the latin-1 text of
        its bytes (``MshHeader.control_id_raw``); the reply's MSA-2 must equal it. Waits
        for a free pooled connection first. Raises the errors of the module docstring.
        """
        if START_BLOCK in payload or END_BLOCK in payload:
            unframeable = LegacyError(self.name, "payload contains an MLLP block byte")
            self._record_failure(unframeable)
            raise unframeable
        slot = await self._idle.get()
        try:
            if self._closed:  # checked after the wait: close() may have run meanwhile
                raise LegacyError(self.name, "sender is closed")
            return await self._send_on(slot, payload, control_id)
        except LegacyError as exc:
            self._record_failure(exc)
            raise
        finally:
            self._idle.put_nowait(slot)

    async def close(self) -> None:
        """Close every connection; sends in flight fail with LegacyUnavailable."""
        self._closed = True
        writers = [slot.writer for slot in self._slots if slot.writer is not None]
        for slot in self._slots:
            slot.drop()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _record_failure(self, exc: LegacyError) -> None:
        """Count a failure; keep its type and reason (never content) as last_error."""
        self._stats.failures += 1
        self._stats.last_error = f"{type(exc).__name__}: {exc.reason}"

    async def _send_on(self, slot: _Slot, payload: bytes, control_id: str) -> bytes:
        """One exchange on one slot; on any failure, even cancellation, drop the slot."""
        reader, writer = await self._connected(slot)
        completed = False
        try:
            reply = await self._exchange(reader, writer, slot.buffer, payload)
            received = ack_control_id(reply)
            if received is None or not _same_control_id(received, control_id):
                shown = None if received is None else received.decode("utf-8", "replace")
                raise LegacyAckMismatch(self.name, control_id, shown)
            completed = True
        finally:
            if not completed:
                slot.drop()
        self._stats.acked += 1
        return reply

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buffer: bytearray,
        payload: bytes,
    ) -> bytes:
        """Write one frame and read one reply frame, translating transport errors."""
        try:
            async with asyncio.timeout(self._ack_timeout):
                writer.write(frame(payload))
                self._stats.sent += 1
                await writer.drain()
                return await read_frame(reader, buffer, self._max_message_bytes)
        except TimeoutError:
            raise LegacyUnavailable(self.name, f"no reply within {self._ack_timeout}s") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
            raise LegacyUnavailable(self.name, reason) from exc
        except FrameTooLarge as exc:
            reason = f"reply over {self._max_message_bytes} bytes"
            raise LegacyError(self.name, reason) from exc
        except ValueError as exc:
            raise LegacyUnavailable(self.name, "malformed reply frame") from exc

    async def _connected(self, slot: _Slot) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The slot's open connection, connecting (or reconnecting) if needed."""
        if slot.reader is not None and slot.writer is not None and slot.reusable():
            return slot.reader, slot.writer
        if slot.writer is not None:
            # Closed by the engine while idle, or unsolicited bytes: nothing of this
            # message was sent on it yet, so reconnecting is safe.
            logger.info("legacy %s: dropping a stale connection", self.name)
            slot.drop()
        reader, writer = await self._open_connection()
        if slot.used:
            self._stats.reconnects += 1
        slot.used = True
        slot.reader, slot.writer = reader, writer
        return reader, writer

    async def _open_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > 0:
            raise LegacyUnavailable(self.name, f"engine down, next connect in {wait:.2f}s")
        try:
            async with asyncio.timeout(self._connect_timeout):
                streams = await asyncio.open_connection(self._host, self._port)
        except OSError as exc:  # includes TimeoutError and ConnectionRefusedError
            self._note_connect_failure(loop.time())
            reason = f"connect to {self._host}:{self._port} failed ({type(exc).__name__})"
            raise LegacyUnavailable(self.name, reason) from exc
        if self._connect_failures:
            logger.info("legacy %s: connected again after %d failures", self.name, self._connect_failures)
        self._connect_failures = 0
        self._retry_at = 0.0
        return streams

    def _note_connect_failure(self, now: float) -> None:
        """Back off exponentially from the second consecutive failure on."""
        self._connect_failures += 1
        if self._connect_failures >= 2:
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._connect_failures - 2))
            self._retry_at = now + delay
        if self._connect_failures in (1, 10) or self._connect_failures % 100 == 0:
            logger.warning("legacy %s: connect failed %d time(s) in a row", self.name, self._connect_failures)
