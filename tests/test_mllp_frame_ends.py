"""The end-of-frame rule, one table of cases run against the one MLLP codec.

The listener feeds :class:`protocols.mllp.FrameDecoder` itself; the legacy sender and the
simulated engine read one frame at a time with :class:`protocols.mllp.FrameReader` over
the same decoder (issue 12 item 3; before, the sender had its own parser). Both ways of
reading must agree (issue 10 item 3): ``0x1C 0x0D``
ends a frame; ``0x1C`` followed by a next frame's ``0x0B MSH`` ends it too; ``0x1C`` as the
last byte ends it once nothing follows; any other ``0x1C`` or a ``0x0B`` not followed by
``MSH`` inside a frame makes the whole frame malformed, never a truncated payload.
"""

from __future__ import annotations

import asyncio

import pytest

from protocols.mllp import FrameDecoder, FrameReader, Malformed, MalformedFrame, Oversize

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
A = b"MSH|^~\\&|A|B|C|D|20240101||DFT^P03|1|P|2.5\rFT1|1||||20240101||CG|100.00\r"
B = b"MSH|^~\\&|A|B|C|D|20240101||DFT^P03|2|P|2.5\rFT1|1||||20240101||CG|999.00\r"
STRAY_EB = A[:40] + EB + A[40:]  # a lone 0x1C inside a field
STRAY_SB = A[:40] + SB + A[40:]  # a lone 0x0B inside a field

BAD = "malformed"
Outcome = bytes | str

# (name, bytes on the wire, what each codec must make of them, in order)
CASES: list[tuple[str, bytes, list[Outcome]]] = [
    ("normal", SB + A + EB + CR, [A]),
    ("two normal", SB + A + EB + CR + SB + B + EB + CR, [A, B]),
    ("no CR, last frame", SB + A + EB, [A]),
    ("no CR, pipelined", SB + A + EB + SB + B + EB, [A, B]),
    ("stray 0x1C", SB + STRAY_EB + EB + CR, [BAD]),
    ("stray 0x1C then a good frame", SB + STRAY_EB + EB + CR + SB + B + EB + CR, [BAD, B]),
    ("stray 0x1C followed by 0x0B not MSH", SB + A[:40] + EB + SB + A[40:] + EB + CR, [BAD]),
    ("stray 0x1C, frame ends without CR", SB + STRAY_EB + EB, [BAD]),
    ("stray 0x0B inside a field", SB + STRAY_SB + EB + CR, [BAD]),
    ("stray 0x0B before the end block", SB + A + SB + EB + CR, [BAD]),
    ("sender restart (0x0B MSH inside)", SB + A[:30] + SB + B + EB + CR, [B]),
    ("stray 0x1C, then a sender restart", SB + STRAY_EB[:50] + SB + B + EB + CR, [B]),
    ("junk between frames", b"xx" + SB + A + EB + CR + b"\n" + SB + B + EB + CR, [A, B]),
    ("CR LF after the end block", SB + A + EB + CR + b"\n" + SB + B + EB + CR, [A, B]),
    ("empty payload", SB + EB + CR, [b""]),
]


def decoded(items: list[bytes | Malformed | Oversize]) -> list[Outcome]:
    out: list[Outcome] = []
    for item in items:
        assert not isinstance(item, Oversize)
        out.append(BAD if isinstance(item, Malformed) else item)
    return out


def decode_all(wire: bytes, step: int) -> list[Outcome]:
    decoder = FrameDecoder(1 << 20)
    items: list[bytes | Malformed | Oversize] = []
    for at in range(0, len(wire), step):
        items += decoder.feed(wire[at : at + step])
    if decoder.awaiting_end:  # the grace ran out: nothing followed the last 0x1C
        items += decoder.accept_end()
    assert not decoder.in_frame
    return decoded(items)


async def read_all(wire: bytes) -> list[Outcome]:
    reader = asyncio.StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    frames = FrameReader(reader, 1 << 20, end_grace=0.05)
    out: list[Outcome] = []
    while True:
        try:
            out.append(await frames.read())
        except MalformedFrame:
            out.append(BAD)
        except asyncio.IncompleteReadError:
            return out


@pytest.mark.parametrize(("name", "wire", "expected"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 1 << 20])
def test_decoder(name: str, wire: bytes, expected: list[Outcome], step: int) -> None:
    assert decode_all(wire, step) == expected


@pytest.mark.parametrize(("name", "wire", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_frame_reader(name: str, wire: bytes, expected: list[Outcome]) -> None:
    assert await read_all(wire) == expected


def test_malformed_carries_whole_frame_and_a_reason_without_content() -> None:
    decoder = FrameDecoder(1 << 20)
    (item,) = decoder.feed(SB + STRAY_EB + EB + CR)
    assert isinstance(item, Malformed)
    assert item.payload == STRAY_EB
    assert item.reason == "0x1C inside the payload at byte 40"
    assert decoder.malformed == 1
    (item,) = decoder.feed(SB + STRAY_SB + EB + CR)
    assert isinstance(item, Malformed)
    assert item.reason == "0x0B inside the payload at byte 40"


def test_trailing_end_block_waits_for_the_next_byte() -> None:
    decoder = FrameDecoder(1 << 20)
    assert decoder.feed(SB + A[:40] + EB) == []
    assert decoder.awaiting_end
    assert decoder.feed(b"X" + A[41:] + EB + CR) == [
        Malformed(A[:40] + EB + b"X" + A[41:], "0x1C inside the payload at byte 40")
    ]


def test_accept_end_without_pending_end_is_empty() -> None:
    decoder = FrameDecoder(1 << 20)
    assert decoder.accept_end() == []
    decoder.feed(SB + b"MSH|")
    assert not decoder.awaiting_end
    assert decoder.accept_end() == []
    assert decoder.in_frame


def test_malformed_and_oversize_is_oversize() -> None:
    decoder = FrameDecoder(10)
    assert decoder.feed(SB + b"abc" + EB + b"defghijklmn" + EB + CR) == [Oversize(15)]


async def test_frame_reader_accepts_trailing_end_block_after_grace() -> None:
    reader = asyncio.StreamReader()  # no EOF: the engine waits for us, its CR never comes
    reader.feed_data(SB + A + EB)
    frames = FrameReader(reader, 1 << 20, end_grace=0.05)
    assert await asyncio.wait_for(frames.read(), 5) == A


async def test_frame_reader_trailing_end_block_then_stray_byte_is_malformed() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(SB + A[:40] + EB)

    async def rest() -> None:
        await asyncio.sleep(0.01)
        reader.feed_data(A[40:] + EB + CR)

    task = asyncio.create_task(rest())
    with pytest.raises(MalformedFrame):
        await asyncio.wait_for(FrameReader(reader, 1 << 20, end_grace=2).read(), 5)
    await task
