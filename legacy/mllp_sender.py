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
* :class:`LegacyTlsError` -- the TLS handshake with the engine failed (a certificate
  from a CA other than the pinned one, expired, for another name; our client
  certificate refused). Nothing of the message was written. Not cured by retrying at
  once, but counted as a failed connect, so the backoff below applies.
* :class:`LegacyError` itself -- give up: the payload cannot be framed (it contains an
  MLLP block byte), the reply is over ``max_message_bytes``, or the sender is closed.

TLS (issue 13): given ``tls`` (a function returning the client context for the next
connection, e.g. ``ReloadingContext.fresh`` over ``protocols.tls.client_context``, which
trusts only the configured CA), every connection is TLS, its name checked against
``server_hostname`` (default: the host connected to).

Framing is the listener's codec (``protocols.mllp``): the reply is read by a
:class:`~protocols.mllp.FrameReader` over the same decoder, so both ends apply one
end-of-frame rule. This module does not import ``wrappers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from protocols.backoff import Backoff
from protocols.mllp import END_BLOCK, START_BLOCK, FrameReader, FrameTooLarge, frame
from protocols.tls import ssl_reason

logger = logging.getLogger("ficus.legacy")

DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

# Backoff (full jitter) between connect attempts once the engine has refused twice in a
# row: sends in between fail at once instead of each waiting for its own connect to fail.
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


class LegacyTlsError(LegacyError):
    """The TLS handshake with the engine failed; ``reason`` says why (OpenSSL's words)."""


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

    __slots__ = ("frames", "reader", "used", "writer")

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.frames: FrameReader | None = None  # reply frames; holds what came past the last one
        self.used = False  # connected at least once: the next connect is a reconnect

    def reusable(self) -> bool:
        """Connected, not closed by the engine, and nothing unsolicited received.

        Bytes left over after the last reply are a reply to nothing we are waiting
        for (late, duplicated): never risk matching them to the next message.
        """
        reader, writer, frames = self.reader, self.writer, self.frames
        if reader is None or writer is None or frames is None or frames.leftover:
            return False
        return not (writer.is_closing() or reader.at_eof() or reader.exception())

    def drop(self) -> None:
        """Close the connection so nothing still in flight on it can be read later."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.frames = None


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
        tls: Callable[[], ssl.SSLContext] | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """Configure the pool; connections are opened lazily by :meth:`send`.

        ``max_message_bytes`` bounds the reply; outgoing payloads are never cut. ``tls``
        and ``server_hostname``: see the module docstring.
        """
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.name = name
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._max_message_bytes = max_message_bytes
        self._tls = tls
        self._server_hostname = server_hostname
        self._slots = [_Slot() for _ in range(connections)]
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            self._idle.put_nowait(slot)
        self._connect_failures = 0
        self._backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
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
        frames, writer = await self._connected(slot)
        completed = False
        try:
            reply = await self._exchange(frames, writer, payload)
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

    async def _exchange(self, frames: FrameReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
        """Write one frame and read one reply frame, translating transport errors."""
        try:
            async with asyncio.timeout(self._ack_timeout):
                writer.write(frame(payload))
                self._stats.sent += 1
                await writer.drain()
                return await frames.read()
        except TimeoutError:
            raise LegacyUnavailable(self.name, f"no reply within {self._ack_timeout}s") from None
        except ssl.SSLError as exc:
            # TLS 1.3: the engine refuses our client certificate after our side saw the
            # handshake end, so its alert arrives here, before anything was processed.
            raise LegacyTlsError(self.name, f"TLS refused by the engine ({ssl_reason(exc)})") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
            raise LegacyUnavailable(self.name, reason) from exc
        except FrameTooLarge as exc:
            reason = f"reply over {self._max_message_bytes} bytes"
            raise LegacyError(self.name, reason) from exc
        except ValueError as exc:  # MalformedFrame: a stray block byte inside the reply
            raise LegacyUnavailable(self.name, "malformed reply frame") from exc

    async def _connected(self, slot: _Slot) -> tuple[FrameReader, asyncio.StreamWriter]:
        """The slot's open connection, connecting (or reconnecting) if needed."""
        if slot.frames is not None and slot.writer is not None and slot.reusable():
            return slot.frames, slot.writer
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
        slot.frames = FrameReader(reader, self._max_message_bytes)
        return slot.frames, writer

    async def _open_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > 0:
            raise LegacyUnavailable(self.name, f"engine down, next connect in {wait:.2f}s")
        try:
            async with asyncio.timeout(self._connect_timeout):
                streams = await self._connect()
        except ssl.SSLError as exc:  # before OSError, of which it is one
            # One log line per failed message is the pipeline's; none here.
            self._note_connect_failure(loop.time(), quiet=True)
            reason = f"TLS handshake with {self._host}:{self._port} failed ({ssl_reason(exc)})"
            raise LegacyTlsError(self.name, reason) from exc
        except OSError as exc:  # includes TimeoutError and ConnectionRefusedError
            self._note_connect_failure(loop.time())
            reason = f"connect to {self._host}:{self._port} failed ({type(exc).__name__})"
            raise LegacyUnavailable(self.name, reason) from exc
        if self._connect_failures:
            logger.info("legacy %s: connected again after %d failures", self.name, self._connect_failures)
        self._connect_failures = 0
        self._backoff.reset()
        self._retry_at = 0.0
        return streams

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._tls is None:
            return await asyncio.open_connection(self._host, self._port)
        return await asyncio.open_connection(
            self._host, self._port, ssl=self._tls(), server_hostname=self._server_hostname or self._host,
            ssl_handshake_timeout=self._connect_timeout,
        )

    def _note_connect_failure(self, now: float, *, quiet: bool = False) -> None:
        """Back off (full jitter) from the second consecutive failure on: the first is
        retried at once, as an engine restart usually costs one refused connect."""
        self._connect_failures += 1
        if self._connect_failures >= 2:
            self._retry_at = now + self._backoff.next_delay()
        if quiet:
            return
        if self._connect_failures in (1, 10) or self._connect_failures % 100 == 0:
            logger.warning("legacy %s: connect failed %d time(s) in a row", self.name, self._connect_failures)
