"""A bare MLLP test client: sends frames, returns every reply exactly as received."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from protocols.mllp import FrameDecoder, Oversize, frame


class MllpTestClient:
    """One connection; `exchange` sends a payload and waits for one reply (or None on close)."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(64 * 1024 * 1024)
        self._pending: list[bytes] = []

    async def __aenter__(self) -> MllpTestClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
        return self

    @property
    def writer(self) -> asyncio.StreamWriter:
        """The open connection (TLS details: ``get_extra_info("ssl_object")``)."""
        assert self._writer is not None
        return self._writer

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def reply(self, timeout: float = 10.0) -> bytes | None:
        """The next reply frame, or None when the server closed the connection."""
        assert self._reader is not None
        while not self._pending:
            chunk = await asyncio.wait_for(self._reader.read(65536), timeout)
            if not chunk:
                return None
            for item in self._decoder.feed(chunk):
                if not isinstance(item, Oversize):
                    self._pending.append(item)
        return self._pending.pop(0)

    async def exchange(self, payload: bytes, timeout: float = 10.0) -> bytes | None:
        await self.send_raw(frame(payload))
        return await self.reply(timeout)


async def send_one(
    port: int, payload: bytes, timeout: float = 10.0, *, tls: ssl.SSLContext | None = None
) -> bytes | None:
    async with MllpTestClient(port, tls=tls) as client:
        return await client.exchange(payload, timeout)


def msa(reply: bytes | None) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    assert reply is not None, "no reply"
    text = reply.decode("latin-1")
    sep = text[3]
    for seg in text.replace("\n", "\r").split("\r"):
        if seg.startswith("MSA"):
            fields = seg.split(sep)
            return fields[1], fields[2] if len(fields) > 2 else ""
    raise AssertionError(f"no MSA segment in reply {reply[:80]!r}")
