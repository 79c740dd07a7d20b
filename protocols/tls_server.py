"""A TCP server that runs each TLS handshake itself, so a refused handshake is seen and named.

``asyncio.start_server(ssl=...)`` hides a failed handshake (the connection callback is never
called, and nothing is logged outside debug mode), and ``StreamWriter.start_tls`` after a
plain accept loses the ClientHello on uvloop, which reads the socket before the callback
runs. So this server accepts sockets itself and hands each one, not yet read, to
``loop.connect_accepted_socket`` with the context current at that moment: a certificate
replaced on disk is served to the next connection, while open ones keep their session.

A handshake that fails (a plain-text client, an untrusted or expired certificate) or does
not finish within ``handshake_timeout`` goes to ``on_refused`` with the peer address and a
short reason, and the socket is closed: the connection callback never sees a byte of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

from protocols.tls import ssl_reason

log = logging.getLogger("ficus.tls")

ConnectionCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RefusedCallback = Callable[[str, int, str], None]
"""Called with (peer host, peer port, reason) for a handshake that failed or timed out."""

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
# How long a TLS close waits for the peer's close_notify before dropping the connection
# (asyncio's default, 30 s, would hold a shutdown that long for a silent peer).
SHUTDOWN_TIMEOUT: Final = 5.0
_ACCEPT_RETRY: Final = 1.0  # seconds between accepts after EMFILE and the like, as asyncio's server does
_BACKLOG: Final = 128


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening socket on (host, port); OSError as asyncio's bind would raise.

    ``reuse_port``: SO_REUSEPORT, so the worker processes of one Ficus each bind the port and
    the kernel spreads the connections among them."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio.start_server binds
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class TlsServer:
    """Accepts connections on one address and serves each over TLS once its handshake passed.

    ``context`` is called once per accepted connection (``ReloadingContext.fresh``).
    ``admit`` is asked before the handshake (False: the socket is closed at once, the
    caller counts it); :attr:`handshaking` says how many handshakes are under way, so a
    connection cap can include them.
    """

    def __init__(
        self,
        host: str,
        port: int,
        context: Callable[[], ssl.SSLContext],
        on_connection: ConnectionCallback,
        on_refused: RefusedCallback,
        *,
        admit: Callable[[str], bool] = lambda _host: True,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        reuse_port: bool = False,
    ) -> None:
        self._host = host
        self._reuse_port = reuse_port
        self._requested_port = port
        self._context = context
        self._on_connection = on_connection
        self._on_refused = on_refused
        self._admit = admit
        self._handshake_timeout = handshake_timeout
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: the loop keeps weak ones

    @property
    def handshaking(self) -> int:
        """Connections accepted whose handshake is not over yet."""
        return len(self._handshakes)

    @property
    def port(self) -> int:
        """The bound port; 0 when not listening."""
        if self._sock is None or self._sock.fileno() < 0:
            return 0
        port: int = self._sock.getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and start accepting; raises OSError when the address cannot be bound."""
        self._sock = bind(self._host, self._requested_port, reuse_port=self._reuse_port)
        self._acceptor = asyncio.create_task(self._accept(self._sock), name=f"tls-accept-{self.port}")

    def stop_accepting(self) -> None:
        """No new connections from now on (the listening socket closes at :meth:`close`)."""
        if self._acceptor is not None:
            self._acceptor.cancel()

    async def close(self) -> None:
        """Stop accepting, close the listening socket and drop the handshakes under way.

        Connections already handed to ``on_connection`` are the caller's to end.
        """
        self.stop_accepting()
        if self._acceptor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._sock is not None:
            self._sock.close()
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.wait(list(self._handshakes))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors, or a connection aborted before accept
                log.warning("tls server on port %d: accept failed (%s), retrying in %gs",
                            self.port, type(exc).__name__, _ACCEPT_RETRY)
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            host, port = str(address[0]), int(address[1])
            if not self._admit(host):
                conn.close()
                continue
            task = asyncio.create_task(self._serve(conn, host, port))
            self._handshakes.add(task)  # at once: the next admit() counts it
            self._tasks.add(task)
            task.add_done_callback(self._handshakes.discard)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, host: str, port: int) -> None:
        streams = await self._handshake(conn, host, port)
        task = asyncio.current_task()
        if task is not None:
            self._handshakes.discard(task)  # from here the connection is the caller's, not cancelled by close()
        if streams is not None:
            await self._on_connection(*streams)

    async def _handshake(
        self, conn: socket.socket, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The TLS streams of an accepted socket, or None (refused, reported, closed)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            conn.setblocking(False)
            async with asyncio.timeout(self._handshake_timeout):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self._context(),
                    # The loop's own timer is a backstop only: the timeout above names the cause.
                    ssl_handshake_timeout=self._handshake_timeout + 5, ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
                )
        except TimeoutError:
            conn.close()
            self._on_refused(host, port, f"no TLS handshake within {self._handshake_timeout:g}s")
            return None
        except ConnectionError as exc:  # e.g. a client that gave up on our certificate without an alert
            conn.close()
            self._on_refused(host, port, f"closed by the peer during the handshake ({type(exc).__name__})")
            return None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; the loop closed the transport
            conn.close()
            self._on_refused(host, port, ssl_reason(exc))
            return None
        except BaseException:
            conn.close()
            raise
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
