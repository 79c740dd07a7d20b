"""A stand-in for the legacy interface engine, for tests and the demo.

An MLLP server on 127.0.0.1 that records every payload exactly as received and
answers each with a small HL7 ACK built from the message's own MSH. Knobs for tests:
the ACK code, a reply delay, no reply at all, a wrong MSA-2, and stop/start on the
same port to play an engine restart. It is a simulator: simple over complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from types import TracebackType
from typing import Self

from protocols.mllp import FrameReader, frame

_MSH_FIELDS = 12  # MSH-1 .. MSH-12 as list items 0 .. 11 (item 1 is MSH-2)


def build_ack(message: bytes, ack_code: str = "AA", *, control_id: bytes | None = None) -> bytes:
    """An ACK for ``message``: MSH with sender and receiver swapped, ``MSA|code|MSH-10``.

    Uses the message's own separators; ``control_id`` overrides the MSA-2 echoed back.
    A message without MSH gets an ``AR`` with an empty MSA-2.
    """
    first_segment = message.replace(b"\n", b"\r").split(b"\r", 1)[0]
    if not first_segment.startswith(b"MSH") or len(first_segment) < 8:
        return b"MSH|^~\\&|||||||ACK||P|2.5\rMSA|AR|\r"
    sep = first_segment[3:4]
    fields = first_segment.split(sep)
    fields += [b""] * (_MSH_FIELDS - len(fields))
    component = fields[1][:1] or b"^"
    trigger = fields[8].split(component)[1:2]  # MSH-9.2, if any
    msh = [
        b"MSH", fields[1],
        fields[4], fields[5], fields[2], fields[3],  # MSH-3..6: swap sender and receiver
        fields[6], b"",  # MSH-7 reused so replies are deterministic; MSH-8 empty
        component.join([b"ACK", *trigger]),
        fields[9], fields[10], fields[11],
    ]  # fmt: skip
    echoed = fields[9] if control_id is None else control_id
    msa = [b"MSA", ack_code.encode("ascii"), echoed]
    return sep.join(msh) + b"\r" + sep.join(msa) + b"\r"


class SimulatedEngine:
    """An MLLP server answering every message with an ACK; use as an async context manager.

    The options are plain attributes and may be changed while it runs; each message
    uses the values current when it arrives.
    """

    def __init__(
        self,
        *,
        ack_code: str = "AA",
        delay: float = 0,
        reply: bool = True,
        wrong_control_id: bool = False,
        max_message_bytes: int = 16 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Configure the engine; :meth:`start` binds 127.0.0.1 on an ephemeral port.

        ``ssl_context``: serve MLLP over TLS with it (read at each start()).
        """
        self.ack_code = ack_code
        self.delay = delay
        self.reply = reply
        self.wrong_control_id = wrong_control_id
        self.ssl_context = ssl_context
        self.received: list[bytes] = []
        """Every payload received, exactly as bytes, in arrival order."""
        self.replies: list[bytes] = []
        """Every reply payload sent (unframed), in order."""
        self.connections_accepted = 0
        self._max_message_bytes = max_message_bytes
        self._port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port; kept across stop() so start() rebinds the same one."""
        if not self._port:
            raise RuntimeError("engine never started")
        return self._port

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1, on the previous port if there was one."""
        if self._server is not None:
            return
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port, ssl=self.ssl_context)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection, as an engine going down would."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Not task.cancel(): on 3.11 asyncio logs an error for a cancelled connection
        # task; closing the sockets and setting the event ends each task normally.
        self._stopping.set()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer the frames of one connection in order until it closes."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        self.connections_accepted += 1
        try:
            await self._answer_frames(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: normal for a simulator
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer_frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(reader, self._max_message_bytes)
        while True:
            try:
                payload = await frames.read()
            except ValueError:
                return  # unframeable input: hang up, like a strict engine would
            self.received.append(payload)
            if self.delay and await self._stopped_within(self.delay):
                return
            if not self.reply:
                continue
            reply = self._ack_for(payload)
            self.replies.append(reply)
            writer.write(frame(reply))
            await writer.drain()

    async def _stopped_within(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, or less if stop() is called: True if it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return self._stopping.is_set()

    def _ack_for(self, payload: bytes) -> bytes:
        control_id = b"NOT-YOURS" if self.wrong_control_id else None
        return build_ack(payload, self.ack_code, control_id=control_id)
