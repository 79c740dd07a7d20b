"""Tests for the legacy MLLP sender against the simulated engine, on ephemeral ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from legacy.mllp_sender import (
    LegacyAckMismatch,
    LegacyError,
    LegacyUnavailable,
    MllpSender,
    ack_control_id,
)
from legacy.simulated_engine import SimulatedEngine, build_ack
from protocols.mllp import FrameReader, frame

HOST = "127.0.0.1"


def msg(control_id: str, body: bytes = b"PID|1||42\r") -> bytes:
    head = f"MSH|^~\\&|SND|FAC|RCV|FAC|20240101||ADT^A01|{control_id}|P|2.5\r".encode()
    return head + body


@pytest.fixture
async def engine() -> AsyncIterator[SimulatedEngine]:
    async with SimulatedEngine() as eng:
        yield eng


def sender_for(
    engine: SimulatedEngine,
    *,
    connections: int = 1,
    ack_timeout: float = 5,
    connect_timeout: float = 2,
) -> MllpSender:
    return MllpSender(
        "legacy-test",
        HOST,
        engine.port,
        connections=connections,
        ack_timeout=ack_timeout,
        connect_timeout=connect_timeout,
    )


async def raw_server(reply_for: Callable[[bytes], bytes]) -> asyncio.Server:
    """An MLLP server that answers each frame with raw bytes written as given."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(reader, 1 << 20)
        try:
            while True:
                writer.write(reply_for(await frames.read()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, HOST, 0)


async def fails_quickly(call: Awaitable[bytes], within: float = 1.0) -> LegacyError:
    async with asyncio.timeout(within):
        try:
            await call
        except LegacyError as exc:
            return exc
    raise AssertionError("expected a LegacyError")


async def test_forwards_exact_bytes_and_returns_reply_exactly(engine: SimulatedEngine) -> None:
    payloads = [
        msg("1"),
        msg("2", "PID|1||42||Müller^Zoë\r".encode()),  # UTF-8
        msg("3", "PID|1||42||Ærøskøbing\r".encode("latin-1")),  # Latin-1
        msg("4", b"PID|1||42\nNTE|1||crlf\r\nNTE|2||lf only\n"),  # odd terminators
        msg("5", b"PID|1||42   "),  # no final terminator, trailing spaces
        msg("6", bytes(range(0x1D, 0x100))),  # every byte but the block bytes
    ]
    async with sender_for(engine) as sender:
        for number, payload in enumerate(payloads, start=1):
            reply = await sender.send(payload, str(number))
            assert reply == build_ack(payload)
            assert reply == engine.replies[-1]
            assert ack_control_id(reply) == str(number).encode()
        assert engine.received == payloads
        assert engine.connections_accepted == 1
        stats = sender.stats
        assert (stats.sent, stats.acked, stats.failures) == (6, 6, 0)


async def test_odd_reply_returned_byte_for_byte() -> None:
    odd = b"MSH|^~\\&|ENG|X|||2024||ACK|ID1|P|2.5\nMSA|AA|ID1|Gr\xc3\xbc\xc3\x9fe \xe9\xff\n  "
    server = await raw_server(lambda payload: b"\r\n" + frame(odd))  # junk before the frame
    port = server.sockets[0].getsockname()[1]
    async with MllpSender("odd", HOST, port, ack_timeout=2) as sender:
        assert await sender.send(msg("ID1"), "ID1") == odd
        assert await sender.send(msg("ID1"), "ID1") == odd  # the junk did not desync us
    server.close()
    await server.wait_closed()


async def test_error_ack_is_returned_not_raised(engine: SimulatedEngine) -> None:
    engine.ack_code = "AE"
    async with sender_for(engine) as sender:
        reply = await sender.send(msg("9"), "9")
    assert b"MSA|AE|9" in reply


async def test_engine_down_fails_fast_and_recovers(engine: SimulatedEngine) -> None:
    async with sender_for(engine, connect_timeout=5) as sender:
        await sender.send(msg("1"), "1")
        await engine.stop()
        await asyncio.sleep(0.05)  # let the engine's FIN arrive
        for _ in range(5):
            exc = await fails_quickly(sender.send(msg("2"), "2"))
            assert isinstance(exc, LegacyUnavailable)
            assert exc.destination == "legacy-test"
        assert sender.stats.failures == 5
        assert sender.stats.last_error is not None
        assert "LegacyUnavailable" in sender.stats.last_error

        await engine.start()  # same port
        reply = await send_until_ok(sender, msg("3"), "3")
        assert ack_control_id(reply) == b"3"
        assert sender.stats.reconnects == 1
        assert engine.received[-1] == msg("3")


async def send_until_ok(sender: MllpSender, payload: bytes, control_id: str) -> bytes:
    """Retry through the sender's connect backoff (at most 2 s between attempts)."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await sender.send(payload, control_id)
            except LegacyUnavailable:
                await asyncio.sleep(0.05)


async def test_engine_restart_while_idle_reconnects_transparently(
    engine: SimulatedEngine,
) -> None:
    async with sender_for(engine) as sender:
        await sender.send(msg("1"), "1")
        await engine.stop()
        await engine.start()
        await asyncio.sleep(0.05)  # let the old connection's FIN arrive
        reply = await sender.send(msg("2"), "2")  # stale connection noticed, not used
        assert ack_control_id(reply) == b"2"
        assert engine.connections_accepted == 2
        assert sender.stats.failures == 0


async def test_never_started_port_is_unavailable() -> None:
    engine = SimulatedEngine()
    await engine.start()
    port = engine.port
    await engine.stop()
    async with MllpSender("gone", HOST, port, connect_timeout=1) as sender:
        exc = await fails_quickly(sender.send(msg("1"), "1"))
    assert isinstance(exc, LegacyUnavailable)
    assert "connect" in exc.reason


async def test_ack_timeout_and_late_ack_never_matched_to_next(engine: SimulatedEngine) -> None:
    engine.delay = 0.5
    async with sender_for(engine, ack_timeout=0.2) as sender:
        exc = await fails_quickly(sender.send(msg("slow"), "slow"))
        assert isinstance(exc, LegacyUnavailable)
        engine.delay = 0
        # Had the connection been kept, this message would queue behind "slow" and
        # read its late ACK; on a fresh connection it gets its own.
        reply = await sender.send(msg("next"), "next")
        assert ack_control_id(reply) == b"next"
        assert reply == build_ack(msg("next"))
        assert engine.connections_accepted == 2
        assert engine.received == [msg("slow"), msg("next")]


async def test_no_reply_is_unavailable(engine: SimulatedEngine) -> None:
    engine.reply = False
    async with sender_for(engine, ack_timeout=0.2) as sender:
        exc = await fails_quickly(sender.send(msg("1"), "1"))
    assert isinstance(exc, LegacyUnavailable)
    assert "no reply" in exc.reason


async def test_engine_hangs_up_mid_exchange(engine: SimulatedEngine) -> None:
    engine.delay = 5
    async with sender_for(engine) as sender:
        pending = asyncio.create_task(sender.send(msg("1"), "1"))
        for _ in range(200):  # poll: the engine has no event for "message received"
            if engine.received:
                break
            await asyncio.sleep(0.01)
        await engine.stop()
        exc = await fails_quickly(pending)
    assert isinstance(exc, LegacyUnavailable)
    assert "connection lost" in exc.reason


async def test_wrong_control_id_is_mismatch_and_closes(engine: SimulatedEngine) -> None:
    engine.wrong_control_id = True
    async with sender_for(engine) as sender:
        with pytest.raises(LegacyAckMismatch) as caught:
            await sender.send(msg("1"), "1")
        assert caught.value.expected == "1"
        assert caught.value.received == "NOT-YOURS"
        engine.wrong_control_id = False
        assert ack_control_id(await sender.send(msg("2"), "2")) == b"2"
        assert engine.connections_accepted == 2  # the mismatched connection was dropped
        assert sender.stats.acked == 1


async def test_reply_without_msa_is_mismatch() -> None:
    server = await raw_server(lambda payload: frame(b"MSH|^~\\&|ENG|X\rNTE|1\r"))
    port = server.sockets[0].getsockname()[1]
    async with MllpSender("nomsa", HOST, port, ack_timeout=2) as sender:
        with pytest.raises(LegacyAckMismatch) as caught:
            await sender.send(msg("1"), "1")
    assert caught.value.received is None
    server.close()
    await server.wait_closed()


async def test_oversize_reply_is_permanent_error() -> None:
    server = await raw_server(lambda payload: frame(b"MSH|^~\\&|" + b"X" * 5000))
    port = server.sockets[0].getsockname()[1]
    async with MllpSender("big", HOST, port, ack_timeout=2, max_message_bytes=1000) as sender:
        exc = await fails_quickly(sender.send(msg("1"), "1"), within=3)
    assert type(exc) is LegacyError
    server.close()
    await server.wait_closed()


async def test_unframeable_payload_rejected(engine: SimulatedEngine) -> None:
    async with sender_for(engine) as sender:
        for bad in (msg("1") + b"\x1c", b"\x0b" + msg("1")):
            exc = await fails_quickly(sender.send(bad, "1"))
            assert type(exc) is LegacyError
    assert engine.received == []


async def test_concurrent_sends_over_pool_of_two(engine: SimulatedEngine) -> None:
    engine.delay = 0.3
    async with sender_for(engine, connections=2) as sender:
        ids = [str(n) for n in range(6)]
        sends = [asyncio.create_task(sender.send(msg(i), i)) for i in ids]
        await asyncio.sleep(0.15)
        assert len(engine.received) == 2  # two connections, one message in flight on each
        replies = await asyncio.gather(*sends)
        assert [ack_control_id(r) for r in replies] == [i.encode() for i in ids]
        assert engine.connections_accepted == 2
        assert sorted(engine.received) == sorted(msg(i) for i in ids)
        assert sender.stats.acked == 6


async def test_close_fails_later_sends(engine: SimulatedEngine) -> None:
    sender = sender_for(engine)
    await sender.send(msg("1"), "1")
    await sender.close()
    exc = await fails_quickly(sender.send(msg("2"), "2"))
    assert type(exc) is LegacyError
    assert engine.received == [msg("1")]


def test_ack_control_id_parsing() -> None:
    assert ack_control_id(b"MSH|^~\\&|A\rMSA|AA|X1\r") == b"X1"
    assert ack_control_id(b"MSH#^~\\&#A\nMSA#AR#X2#oops\n") == b"X2"
    assert ack_control_id(b"MSH|^~\\&|A\rMSA|AA\r") == b""
    assert ack_control_id(b"MSH|^~\\&|A\r") is None
    assert ack_control_id(b"garbage") is None
    assert ack_control_id(b"") is None


# The reply is read by protocols.mllp.FrameReader over the listener's FrameDecoder (issue 12
# item 3): the sender applies the listener's framing rules, not rules of its own.


async def test_stray_end_block_before_the_reply_is_junk_as_at_the_listener() -> None:
    # The old sender's own parser refused a 0x1C before any start block ("malformed reply
    # frame"); the listener's decoder drops bytes outside a frame, and so does the sender now.
    server = await raw_server(lambda payload: b"\x1c\r" + build_ack(payload).join([b"\x0b", b"\x1c\r"]))
    port = server.sockets[0].getsockname()[1]
    async with MllpSender("stray", HOST, port, ack_timeout=2) as sender:
        assert await sender.send(msg("S1"), "S1") == build_ack(msg("S1"))
    server.close()
    await server.wait_closed()


async def test_reply_trickled_byte_by_byte_and_ended_without_cr() -> None:
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        frames = FrameReader(reader, 1 << 20)
        try:
            while True:
                wire = b"\x0b" + build_ack(await frames.read()) + b"\x1c"  # no CR: ended by the grace
                for at in range(len(wire)):
                    writer.write(wire[at : at + 1])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with MllpSender("trickle", HOST, port, ack_timeout=5) as sender:
        for control_id in ("T1", "T2"):
            assert await sender.send(msg(control_id), control_id) == build_ack(msg(control_id))
    assert len(connections) == 1, "a reply ended by the grace leaves nothing behind: connection kept"
    server.close()
    await server.wait_closed()


async def test_unsolicited_frame_after_the_reply_is_never_matched_to_the_next_message() -> None:
    extra = frame(build_ack(msg("NEXT")))  # a duplicate engine's early "reply" to the next message
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        frames = FrameReader(reader, 1 << 20)
        try:
            while True:
                writer.write(frame(build_ack(await frames.read())) + extra)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with MllpSender("extra", HOST, port, ack_timeout=2) as sender:
        assert await sender.send(msg("FIRST"), "FIRST") == build_ack(msg("FIRST"))
        assert await sender.send(msg("NEXT"), "NEXT") == build_ack(msg("NEXT"))
    assert len(connections) == 2, "the connection holding the extra frame was dropped, not reused"
    server.close()
    await server.wait_closed()


async def test_reply_with_a_stray_block_byte_is_malformed_and_the_connection_dropped() -> None:
    def stray(payload: bytes) -> bytes:
        ack = build_ack(payload)
        return frame(ack[:10] + b"\x1c" + ack[10:])

    server = await raw_server(stray)
    port = server.sockets[0].getsockname()[1]
    async with MllpSender("malformed", HOST, port, ack_timeout=2) as sender:
        exc = await fails_quickly(sender.send(msg("M1"), "M1"), within=3)
        assert isinstance(exc, LegacyUnavailable)
        assert exc.reason == "malformed reply frame"
    server.close()
    await server.wait_closed()
