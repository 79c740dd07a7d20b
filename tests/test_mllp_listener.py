"""Tests for the MLLP listener, over real sockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from protocols.mllp import END_BLOCK, START_BLOCK, FrameDecoder, Oversize, frame
from wrappers.mllp_listener import ListenerStats, MllpListener, Peer

HOST = "127.0.0.1"


def msg(control_id: str) -> bytes:
    return f"MSH|^~\\&|SND|FAC|RCV|FAC|20240101||ADT^A01|{control_id}|P|2.5\rPID|1||42\r".encode()


class Recorder:
    """A handler that records payloads and answers ``ACK:<payload>``."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.peers: list[Peer] = []

    async def __call__(self, payload: bytes, peer: Peer) -> bytes | None:
        self.payloads.append(payload)
        self.peers.append(peer)
        return b"ACK:" + payload


class Client:
    """A raw MLLP test client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 24)
        self.pending: list[bytes] = []

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def replies(self, count: int, within: float = 5) -> list[bytes]:
        async with asyncio.timeout(within):
            while len(self.pending) < count:
                data = await self.reader.read(65536)
                assert data, "connection closed before all replies arrived"
                for item in self.decoder.feed(data):
                    assert isinstance(item, bytes)
                    self.pending.append(item)
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    async def expect_eof(self, within: float = 5) -> bytes:
        """Read until EOF; return whatever arrived before it."""
        async with asyncio.timeout(within):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def eventually(check: Callable[[], bool], within: float = 5) -> None:
    """Poll a condition on counters (which have no event to wait on)."""
    for _ in range(int(within / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def listener(recorder: Recorder) -> AsyncIterator[MllpListener]:
    async with MllpListener("test", HOST, 0, recorder, idle_timeout=None) as lst:
        yield lst


async def test_port_zero_binds_ephemeral_port(listener: MllpListener) -> None:
    assert listener.port > 0


async def test_port_is_zero_when_not_listening(recorder: Recorder) -> None:
    listener = MllpListener("test", HOST, 0, recorder)
    assert listener.port == 0
    await listener.start()
    assert listener.port > 0
    await listener.close()
    assert listener.port == 0


async def test_single_frame_answered(listener: MllpListener, recorder: Recorder) -> None:
    client = await Client.connect(listener.port)
    await client.send_raw(frame(msg("1")))
    assert await client.replies(1) == [b"ACK:" + msg("1")]
    assert recorder.peers[0].host == HOST
    await client.close()


async def test_pipelined_frames_in_one_write_answered_in_order(listener: MllpListener, recorder: Recorder) -> None:
    client = await Client.connect(listener.port)
    messages = [msg(str(i)) for i in range(50)]
    await client.send_raw(b"".join(frame(m) for m in messages))
    assert await client.replies(50) == [b"ACK:" + m for m in messages]
    assert recorder.payloads == messages
    assert listener.stats.frames_in == 50
    assert listener.stats.replies_out == 50
    await client.close()


async def test_frames_split_across_writes(listener: MllpListener) -> None:
    client = await Client.connect(listener.port)
    data = frame(msg("A")) + frame(msg("B"))
    for at in range(0, len(data), 5):
        await client.send_raw(data[at : at + 5])
        await asyncio.sleep(0)
    assert await client.replies(2) == [b"ACK:" + msg("A"), b"ACK:" + msg("B")]
    await client.close()


async def test_junk_is_counted(listener: MllpListener) -> None:
    client = await Client.connect(listener.port)
    await client.send_raw(b"GET / HTTP/1.0\r\n" + frame(msg("1")))
    assert await client.replies(1) == [b"ACK:" + msg("1")]
    assert listener.stats.junk_bytes == 16
    await client.close()
    await eventually(lambda: listener.stats.connections_open == 0)
    assert listener.stats.junk_bytes == 16  # kept after the connection is gone


async def test_oversize_frame_gets_nak_and_connection_keeps_working(recorder: Recorder) -> None:
    sizes: list[int] = []

    async def nak(peer: Peer, size: int) -> bytes | None:
        sizes.append(size)
        return b"NAK:too big"

    async with MllpListener("test", HOST, 0, recorder, max_message_bytes=100, on_oversize=nak) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(msg("1")) + frame(b"X" * 101) + frame(msg("2")))
        replies = await client.replies(3)
        assert replies == [b"ACK:" + msg("1"), b"NAK:too big", b"ACK:" + msg("2")]
        assert sizes == [101]
        assert listener.stats.oversize == 1
        assert recorder.payloads == [msg("1"), msg("2")]
        await client.close()


async def test_oversize_without_handler_is_unanswered(recorder: Recorder) -> None:
    async with MllpListener("test", HOST, 0, recorder, max_message_bytes=10) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(b"X" * 11) + frame(b"ok"))
        assert await client.replies(1) == [b"ACK:ok"]
        assert listener.stats.oversize == 1
        await client.close()


async def test_disconnect_mid_frame_counted_and_others_served(listener: MllpListener) -> None:
    quitter = await Client.connect(listener.port)
    other = await Client.connect(listener.port)
    await quitter.send_raw(START_BLOCK + b"MSH|^~\\&|half a mess")
    await eventually(lambda: listener.stats.connections_open == 2)
    await quitter.close()
    await eventually(lambda: listener.stats.aborted_frames == 1)
    await other.send_raw(frame(msg("still")))
    assert await other.replies(1) == [b"ACK:" + msg("still")]
    await other.close()


async def test_start_block_mid_frame_counted(listener: MllpListener, recorder: Recorder) -> None:
    client = await Client.connect(listener.port)
    await client.send_raw(START_BLOCK + b"MSH|partial" + frame(msg("1")))
    assert await client.replies(1) == [b"ACK:" + msg("1")]
    assert listener.stats.restarted_frames == 1
    assert recorder.payloads == [msg("1")]
    await client.close()


async def test_end_block_without_cr_is_accepted(listener: MllpListener) -> None:
    client = await Client.connect(listener.port)
    await client.send_raw(START_BLOCK + msg("1") + END_BLOCK)
    assert await client.replies(1) == [b"ACK:" + msg("1")]
    await client.close()


async def test_idle_connection_is_closed(recorder: Recorder) -> None:
    async with MllpListener("test", HOST, 0, recorder, idle_timeout=0.2) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(msg("1")))
        assert await client.replies(1) == [b"ACK:" + msg("1")]
        assert await client.expect_eof(within=3) == b""
        await eventually(lambda: listener.stats.idle_closed == 1)
        assert listener.stats.connections_open == 0
        await client.close()


async def test_busy_handler_is_not_idle_closed() -> None:
    async def slow(payload: bytes, peer: Peer) -> bytes | None:
        await asyncio.sleep(0.5)
        return b"done"

    async with MllpListener("test", HOST, 0, slow, idle_timeout=0.1) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(b"x"))
        assert await client.replies(1) == [b"done"]
        assert listener.stats.idle_closed == 0
        await client.close()


async def test_handler_exception_closes_without_reply() -> None:
    calls: list[bytes] = []

    async def failing(payload: bytes, peer: Peer) -> bytes | None:
        calls.append(payload)
        raise RuntimeError("storage down: " + payload.decode())

    async with MllpListener("test", HOST, 0, failing) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(msg("1")) + frame(msg("2")))
        assert await client.expect_eof() == b""
        assert calls == [msg("1")]  # the second frame is never started
        await eventually(lambda: listener.stats.handler_errors == 1)
        await client.close()


async def test_handler_exception_logs_no_content(caplog: pytest.LogCaptureFixture) -> None:
    async def failing(payload: bytes, peer: Peer) -> bytes | None:
        raise ValueError("PATIENT^SECRET")

    async with MllpListener("iface", HOST, 0, failing) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(b"MSH|^~\\&|PID|PATIENT^SECRET"))
        await client.expect_eof()
        await eventually(lambda: listener.stats.handler_errors == 1)
        await client.close()
    assert "ValueError" in caplog.text
    assert "SECRET" not in caplog.text


async def test_none_reply_writes_nothing() -> None:
    async def silent(payload: bytes, peer: Peer) -> bytes | None:
        return None if payload == b"quiet" else b"loud"

    async with MllpListener("test", HOST, 0, silent) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(b"quiet") + frame(b"x"))
        assert await client.replies(1) == [b"loud"]
        assert listener.stats.replies_out == 1
        await client.close()


async def test_close_finishes_in_flight_frame_and_refuses_new_connections() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    handled: list[bytes] = []

    async def blocking(payload: bytes, peer: Peer) -> bytes | None:
        handled.append(payload)
        started.set()
        await release.wait()
        return b"ACK:" + payload

    listener = MllpListener("test", HOST, 0, blocking)
    await listener.start()
    port = listener.port
    busy = await Client.connect(port)
    idle = await Client.connect(port)
    await busy.send_raw(frame(b"first") + frame(b"second"))
    await asyncio.wait_for(started.wait(), 5)

    closing = asyncio.create_task(listener.close(drain_timeout=5))
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)
    assert await idle.expect_eof() == b""  # idle connections are closed at once
    assert not closing.done()

    release.set()
    assert await busy.replies(1) == [b"ACK:first"]
    assert await busy.expect_eof() == b""  # "second" was dropped without a reply
    await asyncio.wait_for(closing, 5)
    assert handled == [b"first"]
    await busy.close()
    await idle.close()


async def test_close_cancels_handler_after_drain_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async def stuck(payload: bytes, peer: Peer) -> bytes | None:
        await asyncio.Event().wait()
        return None

    listener = MllpListener("test", HOST, 0, stuck)
    await listener.start()
    client = await Client.connect(listener.port)
    await client.send_raw(frame(b"x"))
    await eventually(lambda: listener.stats.frames_in == 1)
    await asyncio.wait_for(listener.close(drain_timeout=0.1), 5)
    assert await client.expect_eof() == b""
    await client.close()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_many_connections_concurrently(listener: MllpListener) -> None:
    async def one_client(n: int) -> int:
        client = await Client.connect(listener.port)
        messages = [msg(f"{n}-{i}") for i in range(100)]
        await client.send_raw(b"".join(frame(m) for m in messages))
        replies = await client.replies(100)
        await client.close()
        return [r == b"ACK:" + m for r, m in zip(replies, messages, strict=True)].count(True)

    results = await asyncio.gather(*(one_client(n) for n in range(8)))
    assert results == [100] * 8
    assert listener.stats == ListenerStats(
        connections_open=listener.stats.connections_open,
        connections_total=8,
        frames_in=800,
        replies_out=800,
    )


def test_oversize_marker_type_exported() -> None:
    assert Oversize(3).size == 3


async def test_hl7_package_mllp_send_client(tmp_path: Path, recorder: Recorder) -> None:
    """The ``mllp_send`` script of the hl7 package, as a real third-party client."""
    mllp_send = Path(sys.executable).parent / "mllp_send"
    if not mllp_send.exists():
        pytest.skip("mllp_send console script not installed")
    messages = [msg("101"), msg("102"), msg("103")]
    source = tmp_path / "messages.hl7"
    # --loose: \n-separated segments, messages recognised by their "MSH|^~\&|" start.
    source.write_bytes(b"\n".join(m.replace(b"\r", b"\n") for m in messages))

    async with MllpListener("test", HOST, 0, recorder) as listener:
        proc = await asyncio.create_subprocess_exec(
            str(mllp_send),
            "--loose",
            "-f",
            str(source),
            "-p",
            str(listener.port),
            HOST,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode == 0, stderr.decode(errors="replace")
    # --loose strips the final segment terminator; hl7 then sends the rest as is.
    assert recorder.payloads == [m.rstrip(b"\r") for m in messages]
    for payload in recorder.payloads:
        assert frame(b"ACK:" + payload) in stdout
