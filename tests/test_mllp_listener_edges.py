"""MLLP listener edge cases from issue 10: peer resets (item 16), the connection cap
(item 8) and malformed frames (item 3). Real sockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from protocols.mllp import CARRIAGE_RETURN, END_BLOCK, START_BLOCK, Malformed, frame
from tests.test_mllp_listener import HOST, Client, Recorder, eventually, msg
from wrappers.mllp_listener import MllpListener, Peer


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "Traceback" not in caplog.text


def reset_now(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reset_before_ack(caplog: pytest.LogCaptureFixture) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow(payload: bytes, peer: Peer) -> bytes | None:
        arrived.set()
        if payload == msg("gone"):
            await release.wait()  # the ACK is written only after the peer reset
        return b"A" * 300_000  # large: the write cannot all go into a dead socket's buffer

    async with MllpListener("iface", HOST, 0, slow, idle_timeout=None) as listener:
        for _ in range(3):
            arrived.clear()
            release.clear()
            client = await Client.connect(listener.port)
            await client.send_raw(frame(msg("gone")))
            await asyncio.wait_for(arrived.wait(), 5)
            reset_now(client.writer)
            await asyncio.sleep(0.05)  # let the RST land before the ACK is written
            release.set()
            await eventually(lambda: listener.stats.connections_open == 0)
        other = await Client.connect(listener.port)
        await other.send_raw(frame(msg("ok")))
        assert len((await other.replies(1))[0]) == 300_000
        await other.close()
        assert listener.stats.peer_resets == 3


# ficus run uses uvloop, whose transport raises RuntimeError (not ConnectionError) on a
# write after the peer reset: run the same scenario on both loops.
@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_peer_reset_before_ack_is_one_line_and_listener_keeps_serving(
    run: Callable[[Coroutine[Any, Any, None]], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run(reset_before_ack(caplog))
    no_tracebacks(caplog)
    resets = [r.getMessage() for r in caplog.records if "reset" in r.getMessage()]
    assert len(resets) == 3, resets
    # One line each: interface, connection id, peer, exception type; nothing else.
    assert all("iface conn" in line and HOST in line and "Error" in line for line in resets), resets


async def test_connections_beyond_the_cap_are_refused_and_senders_keep_working(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    async with MllpListener("iface", HOST, 0, recorder, idle_timeout=None, max_connections=3) as listener:
        sender = await Client.connect(listener.port)
        assert (await sender_exchange(sender, "1")) == b"ACK:" + msg("1")
        idlers = [await Client.connect(listener.port) for _ in range(2)]
        await eventually(lambda: listener.stats.connections_open == 3)
        hogs = [await Client.connect(listener.port) for _ in range(20)]
        for hog in hogs:  # refused: closed at once (EOF, or RST once it writes), never served
            with contextlib.suppress(ConnectionResetError):
                await hog.send_raw(frame(msg("hog")))
                assert await hog.expect_eof() == b""
        assert listener.stats.refused == 20
        assert listener.stats.connections_open == 3
        assert recorder.payloads == [msg("1")]
        assert (await sender_exchange(sender, "2")) == b"ACK:" + msg("2")  # the open sender keeps working
        for idler in idlers:
            await idler.close()
        await eventually(lambda: listener.stats.connections_open == 1)
        late = await Client.connect(listener.port)  # room again: accepted and served
        assert (await sender_exchange(late, "3")) == b"ACK:" + msg("3")
        for client in [sender, late, *hogs]:
            await client.close()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1  # rate-limited: one line for the burst


def test_default_cap_and_idle_timeout() -> None:
    defaults = inspect.signature(MllpListener).parameters
    assert defaults["max_connections"].default == 128
    assert defaults["idle_timeout"].default == 120  # was 600 before issue 10


async def sender_exchange(client: Client, control_id: str) -> bytes:
    await client.send_raw(frame(msg(control_id)))
    return (await client.replies(1))[0]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


STRAY = msg("9")[:30] + END_BLOCK + msg("9")[30:]


async def test_stray_end_block_is_never_given_to_the_handler(recorder: Recorder) -> None:
    seen: list[tuple[bytes, str]] = []

    async def on_malformed(peer: Peer, payload: bytes, reason: str) -> bytes | None:
        seen.append((payload, reason))
        return b"REJECTED"

    async with MllpListener("iface", HOST, 0, recorder, on_malformed=on_malformed) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(msg("1")) + frame(STRAY) + frame(msg("2")))
        assert await client.replies(3) == [b"ACK:" + msg("1"), b"REJECTED", b"ACK:" + msg("2")]
        assert recorder.payloads == [msg("1"), msg("2")]  # never a truncated msg("9")
        assert seen == [(STRAY, "0x1C inside the payload at byte 30")]
        assert listener.stats.malformed == 1
        assert listener.stats.junk_bytes == 0
        await client.close()


async def test_stray_start_block_is_not_a_silent_restart(recorder: Recorder) -> None:
    seen: list[bytes] = []

    async def on_malformed(peer: Peer, payload: bytes, reason: str) -> bytes | None:
        seen.append(payload)
        return None

    stray = msg("9")[:30] + START_BLOCK + msg("9")[30:]
    async with MllpListener("iface", HOST, 0, recorder, on_malformed=on_malformed) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(frame(stray) + frame(msg("2")))
        assert await client.replies(1) == [b"ACK:" + msg("2")]
        assert seen == [stray]
        assert recorder.payloads == [msg("2")]
        assert listener.stats.restarted_frames == 0
        await client.close()


async def test_final_end_block_waits_for_its_cr(recorder: Recorder) -> None:
    async with MllpListener("iface", HOST, 0, recorder, end_grace=60) as listener:
        client = await Client.connect(listener.port)
        # The <EB> and its <CR> in two writes: one frame, answered once the <CR> comes
        # (long before the grace: the wait below would time out otherwise).
        await client.send_raw(START_BLOCK + msg("1") + END_BLOCK)
        await asyncio.sleep(0.05)
        assert recorder.payloads == []
        await client.send_raw(CARRIAGE_RETURN)
        assert await client.replies(1, within=20) == [b"ACK:" + msg("1")]
        assert listener.stats.junk_bytes == 0
        await client.close()


async def test_final_end_block_without_cr_is_answered_after_the_grace(recorder: Recorder) -> None:
    async with MllpListener("iface", HOST, 0, recorder, end_grace=0.2) as listener:
        client = await Client.connect(listener.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.send_raw(START_BLOCK + msg("2") + END_BLOCK)  # a sender that never sends the <CR>
        assert await client.replies(1) == [b"ACK:" + msg("2")]
        assert loop.time() - started >= 0.15
        assert listener.stats.junk_bytes == 0
        await client.close()


async def test_final_end_block_then_eof_is_answered(recorder: Recorder) -> None:
    async with MllpListener("iface", HOST, 0, recorder, end_grace=5) as listener:
        client = await Client.connect(listener.port)
        await client.send_raw(START_BLOCK + msg("1") + END_BLOCK)
        client.writer.write_eof()  # half-close: the sender still reads its ACK
        assert await client.replies(1) == [b"ACK:" + msg("1")]
        await client.close()
        await eventually(lambda: listener.stats.connections_open == 0)
        assert listener.stats.aborted_frames == 0


def test_malformed_marker_exported() -> None:
    assert Malformed(b"x", "why").reason == "why"
