"""MLLP listener: accept connections, decode frames, call a handler, write its reply.

No HL7 knowledge lives here: a frame is opaque bytes and the reply is whatever the
handler returns. The shape follows Google's ``mllpreceiver``: the reply (the ACK) is
written only after the handler returned, and the handler is where durable storage
happens, so an ACK is late by construction.

Per connection, frames are handled strictly one at a time and in order; frames that
arrived pipelined in one read are all answered, in order. One task per connection (the
one ``asyncio.start_server`` creates) does everything; nothing is spawned per frame.

Nothing here logs payload bytes or message content: only the interface name, the peer
address, the connection id and exception type names.

Issue 10 hardening, all counted in :class:`ListenerStats`:

* A frame with a stray block byte inside (see ``protocols.mllp``) is never
  handed to the handler: ``on_malformed`` gets its whole bytes and the reason, and its
  reply is written in order with the others. Without ``on_malformed`` it is unanswered.
* An ``<EB>`` that is the last byte received waits ``end_grace`` seconds for a ``<CR>``;
  if none comes (a sender that omits it and waits for its ACK) the frame ends there.
* ``max_connections`` bounds the open connections per listener: one beyond it is
  accepted and closed at once (counted in ``refused``, logged at most every 10 s), so
  idle or hostile peers cannot use up the process's file descriptors; connections
  already open keep working, and new ones are accepted again once some close.
* A peer that goes away (reset, or closed) before its reply is written costs one log
  line (interface, connection id, peer, exception type) and no traceback, on the
  stdlib loop and on uvloop (whose transport raises RuntimeError on such a write).

Issue 13, TLS: given ``tls`` (a function returning the context for the next connection,
e.g. ``ReloadingContext.fresh``), connections are accepted by ``protocols.tls_server`` and
handed to the same code once their handshake passed. A plain-text client, an untrusted
client certificate or a handshake that does not finish within ``handshake_timeout`` is
refused before any byte reaches the decoder: one WARNING line (interface, peer address,
OpenSSL's reason), counted in ``tls_refused``. Handshakes under way count towards
``max_connections``. The verified client certificate's subject travels on :class:`Peer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from protocols.mllp import (
    END_GRACE_SECONDS,
    DecodedItem,
    FrameDecoder,
    Malformed,
    Oversize,
    frame,
    read_some,
)
from protocols.tls import peer_subject
from protocols.tls_server import DEFAULT_HANDSHAKE_TIMEOUT, TlsServer

logger = logging.getLogger("ficus.mllp")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 120.0
"""Seconds without traffic before a connection is closed. Was 600: with a connection cap,
an idle peer holds a slot; two minutes outlasts any pause between messages of a busy feed
(and any ACK wait, since a connection inside its handler is never idle), and MLLP senders
reconnect by themselves when a quiet connection was closed."""
DEFAULT_MAX_CONNECTIONS = 128
DEFAULT_END_GRACE = END_GRACE_SECONDS
_REFUSED_LOG_EVERY = 10.0  # seconds between two "connections refused" log lines


@dataclass(frozen=True, slots=True)
class Peer:
    """The remote end of one accepted connection."""

    host: str
    port: int
    connection_id: int
    """Unique per listener, increasing; ties log lines of one connection together."""
    cert_subject: str | None = None
    """The verified client certificate's subject (RFC 4514, bounded); None without mutual TLS."""


class MessageHandler(Protocol):
    """Called once per received frame, in order, never concurrently per connection.

    Returns the reply payload (unframed; the listener frames it) or None for no reply.
    The reply is written only after this returns, so store the message durably before
    returning. Raising closes the connection without a reply: the sender will retry.
    """

    async def __call__(self, payload: bytes, peer: Peer) -> bytes | None:
        """Handle one payload exactly as received; return the reply payload or None."""
        ...


OversizeHandler = Callable[[Peer, int], Awaitable[bytes | None]]
"""Called with (peer, payload size) for a frame over the size limit; returns a reply."""

MalformedHandler = Callable[[Peer, bytes, str], Awaitable[bytes | None]]
"""Called with (peer, whole frame bytes, reason) for a frame with a stray block byte
inside; returns a reply (never a positive one: the payload is not a whole message)."""


@dataclass(slots=True)
class ListenerStats:
    """Counters since the listener was created. Never holds message content."""

    connections_open: int = 0
    connections_total: int = 0
    frames_in: int = 0
    """Frames handed to the handler (oversize frames are counted apart)."""
    replies_out: int = 0
    junk_bytes: int = 0
    """Bytes received outside any frame, dropped."""
    oversize: int = 0
    aborted_frames: int = 0
    """Connections that ended (peer disconnect, idle close) with a partial frame."""
    restarted_frames: int = 0
    """Partial frames abandoned because the sender started a new frame inside them."""
    malformed: int = 0
    """Frames with a stray 0x1C or 0x0B inside, given to ``on_malformed``, not the handler."""
    idle_closed: int = 0
    handler_errors: int = 0
    refused: int = 0
    """Connections closed at once because ``max_connections`` were already open."""
    peer_resets: int = 0
    """Connections the peer reset or closed while a read or a reply write was under way."""
    tls_refused: int = 0
    """TLS connections whose handshake failed or timed out: never read, never counted above."""


class _HandlerFailed(Exception):
    """Internal: the handler raised (already logged); close the connection unanswered."""


class _PeerGone(ConnectionError):
    """Internal: the transport closed under a reply write (uvloop raises RuntimeError)."""


class _Connection:
    """Per-connection state, read by the idle sweeper and by close()."""

    __slots__ = ("busy", "cancelled_by_close", "decoder", "last_active", "peer", "task", "writer")

    def __init__(self, peer: Peer, writer: asyncio.StreamWriter, max_size: int) -> None:
        self.peer = peer
        self.writer = writer
        self.decoder = FrameDecoder(max_size)
        self.busy = False  # inside a handler or writing a reply: never idle-closed then
        self.last_active = asyncio.get_running_loop().time()
        self.task = asyncio.current_task()
        self.cancelled_by_close = False  # close() gave up waiting and cancelled the task


class MllpListener:
    """An MLLP server for one interface; use as an async context manager."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        handler: MessageHandler,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        on_oversize: OversizeHandler | None = None,
        on_malformed: MalformedHandler | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        end_grace: float = DEFAULT_END_GRACE,
        read_size: int = 65536,
        tls: Callable[[], ssl.SSLContext] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        reuse_port: bool = False,
    ) -> None:
        """Configure the listener; nothing is bound until :meth:`start`.

        ``port`` 0 binds an ephemeral port (see :attr:`port`). Oversize frames are
        answered with ``on_oversize``'s reply, malformed ones with ``on_malformed``'s,
        or not answered at all when the handler is None. ``idle_timeout`` None keeps
        idle connections open forever. ``tls``: serve TLS only, each connection with
        the context it returns at accept time (see the module docstring). ``reuse_port``:
        SO_REUSEPORT, so the worker processes of one Ficus bind the same port and the kernel
        spreads the connections among them.
        """
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.name = name
        self._host = host
        self._requested_port = port
        self._handler = handler
        self._max_message_bytes = max_message_bytes
        self._idle_timeout = idle_timeout
        self._on_oversize = on_oversize
        self._on_malformed = on_malformed
        self._max_connections = max_connections
        self._end_grace = end_grace
        self._read_size = read_size
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._reuse_port = reuse_port
        self._tls_server: TlsServer | None = None
        self._refused_unlogged = 0
        self._refused_log_at = 0.0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: dict[int, _Connection] = {}
        self._next_id = 0
        self._closing = False
        self._stats = ListenerStats()

    @property
    def port(self) -> int:
        """The bound port (the actual one when constructed with port 0); 0 when not listening."""
        if self._tls_server is not None:
            return self._tls_server.port
        if self._server is None or not self._server.sockets:
            return 0
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def stats(self) -> ListenerStats:
        """A snapshot of the counters, including those of live connections."""
        live = self._connections.values()
        return dataclasses.replace(
            self._stats,
            connections_open=len(self._connections),
            junk_bytes=self._stats.junk_bytes + sum(c.decoder.junk_bytes for c in live),
            restarted_frames=self._stats.restarted_frames + sum(c.decoder.restarted_frames for c in live),
        )

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None or self._tls_server is not None:
            raise RuntimeError(f"listener {self.name} already started")
        if self._tls is None:
            self._server = await asyncio.start_server(self._on_connect, self._host, self._requested_port,
                                                      reuse_port=self._reuse_port or None)
        else:
            self._tls_server = TlsServer(
                self._host, self._requested_port, self._tls, self._serve_connection, self._tls_refused,
                admit=self._admit, handshake_timeout=self._handshake_timeout, reuse_port=self._reuse_port,
            )
            await self._tls_server.start()
        if self._idle_timeout is not None:
            self._sweeper = asyncio.create_task(self._sweep_idle(self._idle_timeout))
        logger.info(
            "mllp listener %s on %s:%d%s (max %d connections)",
            self.name, self._host, self.port, " over TLS" if self._tls else "", self._max_connections,
        )

    async def close(self, drain_timeout: float = 10) -> None:
        """Stop accepting, let in-flight frames finish and reply, then close everything.

        New connections are refused at once. A connection inside its handler finishes
        that frame and writes its reply; frames received but not yet started are
        dropped without a reply (the sender retries them). Connections still busy
        after ``drain_timeout`` seconds are cancelled.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()  # before any await: refuse new connections now
        if self._tls_server is not None:
            self._tls_server.stop_accepting()
            await self._tls_server.close()  # handshakes under way are dropped: nothing was read
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for conn in self._connections.values():
            if not conn.busy:
                conn.writer.close()  # wakes its pending read with EOF
        await self._wait_connections(drain_timeout)
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("mllp listener %s closed", self.name)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _wait_connections(self, drain_timeout: float) -> None:
        """Wait for connection tasks to end; cancel the ones still busy after the timeout."""
        tasks = [c.task for c in self._connections.values() if c.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
        if not pending:
            return
        logger.warning(
            "mllp listener %s: %d connection(s) still busy after %.1fs, cancelling",
            self.name,
            len(pending),
            drain_timeout,
        )
        for conn in self._connections.values():
            if conn.task in pending:
                conn.cancelled_by_close = True
                conn.task.cancel()
        await asyncio.wait(pending)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection from accept to close (the task start_server made)."""
        if len(self._connections) >= self._max_connections:
            self._refuse(writer)
            return
        await self._serve_connection(reader, writer)

    def _admit(self, host: str) -> bool:
        """TLS: whether an accepted socket may start its handshake (the connection cap)."""
        assert self._tls_server is not None
        if len(self._connections) + self._tls_server.handshaking < self._max_connections:
            return True
        self._note_refused(host)
        return False

    def _tls_refused(self, host: str, port: int, reason: str) -> None:
        if self._closing:
            return  # close() dropped a handshake under way: not the peer's doing
        self._stats.tls_refused += 1
        logger.warning("mllp %s: TLS connection from %s:%d refused, nothing read (%s)", self.name, host, port, reason)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one admitted connection (after its handshake, for TLS) until it ends."""
        conn = self._register(writer)
        try:
            if not self._closing:
                await self._serve(conn, reader)
        except ConnectionError as exc:
            # The peer reset or closed under a read or a reply write: one line, no
            # traceback; the sender resends whatever it has no ACK for.
            self._stats.peer_resets += 1
            logger.info(
                "mllp %s conn %d from %s:%d: connection reset or closed by peer (%s)",
                self.name,
                conn.peer.connection_id,
                conn.peer.host,
                conn.peer.port,
                type(reader.exception() or exc).__name__,  # the transport's own cause when known
            )
        except asyncio.CancelledError:
            if not conn.cancelled_by_close:
                raise
            # Our own cancel from close(): end the task normally, since on 3.11 asyncio
            # logs a cancelled start_server connection task as an unhandled error.
        finally:
            self._unregister(conn)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Close a connection over the limit at once; log at most every few seconds."""
        writer.transport.abort()  # frees the descriptor now, no lingering close
        peername = writer.get_extra_info("peername") or ("?", 0)
        self._note_refused(str(peername[0]))

    def _note_refused(self, host: str) -> None:
        """Count a connection refused over the cap; log at most every few seconds."""
        self._stats.refused += 1
        self._refused_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now < self._refused_log_at:
            return
        logger.warning(
            "mllp %s: %d connections open (max_connections); refused %d new connection(s), latest from %s",
            self.name,
            len(self._connections),
            self._refused_unlogged,
            host,
        )
        self._refused_unlogged = 0
        self._refused_log_at = now + _REFUSED_LOG_EVERY

    def _register(self, writer: asyncio.StreamWriter) -> _Connection:
        self._next_id += 1
        peername = writer.get_extra_info("peername") or ("?", 0)
        subject = peer_subject(writer.get_extra_info("ssl_object"))
        peer = Peer(host=str(peername[0]), port=int(peername[1]), connection_id=self._next_id, cert_subject=subject)
        conn = _Connection(peer, writer, self._max_message_bytes)
        self._connections[peer.connection_id] = conn
        self._stats.connections_total += 1
        logger.debug("mllp %s conn %d open from %s:%d", self.name, self._next_id, *peername[:2])
        return conn

    def _unregister(self, conn: _Connection) -> None:
        """Fold the connection's decoder counters into the totals and forget it."""
        del self._connections[conn.peer.connection_id]
        decoder = conn.decoder
        self._stats.junk_bytes += decoder.junk_bytes
        self._stats.restarted_frames += decoder.restarted_frames
        if decoder.awaiting_end:
            # Ended (close, reset) inside the grace: the frame was never answered.
            self._stats.aborted_frames += 1
        if decoder.in_frame:
            self._stats.aborted_frames += 1
            logger.info(
                "mllp %s conn %d from %s closed mid-frame",
                self.name,
                conn.peer.connection_id,
                conn.peer.host,
            )
        logger.debug("mllp %s conn %d closed", self.name, conn.peer.connection_id)

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Read, decode and answer until EOF, a handler error, or listener close."""
        loop = asyncio.get_running_loop()
        decoder = conn.decoder
        while True:
            data = await read_some(reader, self._read_size, self._end_grace if decoder.awaiting_end else None)
            if self._closing:
                return  # on close: received-but-unstarted frames are dropped, unanswered
            if data is None or (not data and decoder.awaiting_end):
                items = decoder.accept_end()  # nothing followed the final <EB>: it ends the frame
            elif not data:
                return
            else:
                conn.last_active = loop.time()
                items = decoder.feed(data)
            if items:
                conn.busy = True
                keep_going = await self._answer_all(conn, items)
                conn.busy = False
                conn.last_active = loop.time()
                if not keep_going:
                    return
            if not data:
                return  # EOF right after a frame ended by the grace rule, now answered


    async def _answer_all(self, conn: _Connection, items: list[DecodedItem]) -> bool:
        """Answer decoded items in order; False when the connection must close."""
        writer = conn.writer
        for item in items:
            try:
                reply = await self._reply_for(conn, item)
            except _HandlerFailed:
                return False
            if reply is not None:
                self._write(writer, frame(reply))
                await writer.drain()
                self._stats.replies_out += 1
            if self._closing:
                return False  # the in-flight frame is answered; the rest are dropped
        return True

    @staticmethod
    def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write a reply; _PeerGone when the peer already reset or closed the connection."""
        if writer.transport.is_closing():
            raise _PeerGone("transport closed before the reply was written")
        try:
            writer.write(data)
        except RuntimeError as exc:  # uvloop: "unable to perform operation ... handler is closed"
            if not writer.transport.is_closing():
                raise
            raise _PeerGone("transport closed while the reply was written") from exc

    async def _reply_for(self, conn: _Connection, item: DecodedItem) -> bytes | None:
        """The reply for one item (None: no reply); _HandlerFailed if the handler raised."""
        if isinstance(item, Oversize):
            return await self._reply_oversize(conn, item.size)
        if isinstance(item, Malformed):
            return await self._reply_malformed(conn, item)
        self._stats.frames_in += 1
        try:
            return await self._handler(item, conn.peer)
        # The handler is the caller's code: whatever it raises, this frame is not
        # stored, so close without an ACK and let the sender retry. Logged, not hidden;
        # the message (which may carry PHI) and the exception text are deliberately not.
        except Exception as exc:  # noqa: BLE001
            self._stats.handler_errors += 1
            logger.error(
                "mllp %s conn %d from %s:%d: handler raised %s; closing without reply",
                self.name,
                conn.peer.connection_id,
                conn.peer.host,
                conn.peer.port,
                type(exc).__name__,
            )
            raise _HandlerFailed from None

    async def _reply_oversize(self, conn: _Connection, size: int) -> bytes | None:
        self._stats.oversize += 1
        logger.warning(
            "mllp %s conn %d from %s: frame of %d bytes over limit %d discarded",
            self.name,
            conn.peer.connection_id,
            conn.peer.host,
            size,
            self._max_message_bytes,
        )
        if self._on_oversize is None:
            return None
        return await self._on_oversize(conn.peer, size)

    async def _reply_malformed(self, conn: _Connection, item: Malformed) -> bytes | None:
        self._stats.malformed += 1
        logger.warning(
            "mllp %s conn %d from %s: malformed frame of %d bytes (%s), not handled as a message",
            self.name,
            conn.peer.connection_id,
            conn.peer.host,
            len(item.payload),
            item.reason,
        )
        if self._on_malformed is None:
            return None
        return await self._on_malformed(conn.peer, item.payload, item.reason)

    async def _sweep_idle(self, idle_timeout: float) -> None:
        """Close connections with no traffic for ``idle_timeout`` seconds.

        One sweeper per listener instead of a timer per read keeps the per-frame path
        free of timer churn; the price is closing up to a quarter timeout late.
        """
        loop = asyncio.get_running_loop()
        interval = min(max(idle_timeout / 4, 0.01), 5.0)
        while True:
            await asyncio.sleep(interval)
            deadline = loop.time() - idle_timeout
            for conn in list(self._connections.values()):
                if not conn.busy and conn.last_active < deadline:
                    self._close_idle(conn)

    def _close_idle(self, conn: _Connection) -> None:
        conn.busy = True  # never counted twice while the close completes
        self._stats.idle_closed += 1
        logger.info(
            "mllp %s conn %d from %s idle, closing",
            self.name,
            conn.peer.connection_id,
            conn.peer.host,
        )
        conn.writer.close()
