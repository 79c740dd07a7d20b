"""Tests for the pure MLLP framing module."""

from __future__ import annotations

import pytest

from protocols.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    FrameDecoder,
    Malformed,
    Oversize,
    frame,
)

MSG_A = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||123\r"
MSG_B = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|2|P|2.5\rPID|1||456\r"


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> list[bytes | Oversize | Malformed]:
    out: list[bytes | Oversize | Malformed] = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    return out


def test_frame_wraps_payload() -> None:
    assert frame(b"abc") == START_BLOCK + b"abc" + END_BLOCK + CARRIAGE_RETURN


def test_single_frame_round_trip() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(frame(MSG_A)) == [MSG_A]
    assert not decoder.in_frame
    assert decoder.junk_bytes == 0


def test_junk_before_start_block_is_dropped_and_counted() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(b"hello\r\n" + frame(MSG_A)) == [MSG_A]
    assert decoder.junk_bytes == 7
    assert decoder.feed(b"xyz") == []
    assert decoder.junk_bytes == 10
    assert not decoder.in_frame


def test_several_frames_in_one_read() -> None:
    decoder = FrameDecoder(1024)
    data = frame(MSG_A) + frame(MSG_B) + frame(b"third")
    assert decoder.feed(data) == [MSG_A, MSG_B, b"third"]
    assert decoder.junk_bytes == 0


def test_frames_across_reads_in_odd_chunks() -> None:
    decoder = FrameDecoder(1024)
    data = frame(MSG_A) + frame(MSG_B)
    out: list[bytes | Oversize | Malformed] = []
    for chunk_at in range(0, len(data), 7):
        out.extend(decoder.feed(data[chunk_at : chunk_at + 7]))
    assert out == [MSG_A, MSG_B]
    assert decoder.junk_bytes == 0


def test_frame_split_byte_by_byte() -> None:
    decoder = FrameDecoder(1024)
    assert feed_bytewise(decoder, frame(MSG_A) + frame(MSG_B)) == [MSG_A, MSG_B]
    assert decoder.junk_bytes == 0  # the <CR> after <EB> arrived alone: not junk
    assert not decoder.in_frame


def test_in_frame_reports_partial_data() -> None:
    decoder = FrameDecoder(1024)
    assert not decoder.in_frame
    decoder.feed(START_BLOCK + b"MSH|")
    assert decoder.in_frame
    # A final <EB> may still be a stray byte: the frame ends once the <CR> comes.
    assert decoder.feed(b"rest" + END_BLOCK) == []
    assert decoder.in_frame and decoder.awaiting_end
    assert decoder.feed(CARRIAGE_RETURN) == [b"MSH|rest"]
    assert not decoder.in_frame


def test_empty_read_changes_nothing() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(b"") == []
    decoder.feed(START_BLOCK + b"x")
    assert decoder.feed(b"") == []
    assert decoder.in_frame


def test_exactly_max_size_is_accepted() -> None:
    decoder = FrameDecoder(10)
    assert decoder.feed(frame(b"0123456789")) == [b"0123456789"]
    assert decoder.oversize == 0


def test_one_over_max_size_is_discarded_and_reported() -> None:
    decoder = FrameDecoder(10)
    out = decoder.feed(frame(b"0123456789X") + frame(b"ok"))
    assert out == [Oversize(11), b"ok"]
    assert decoder.oversize == 1


def test_oversize_split_across_reads_keeps_order() -> None:
    decoder = FrameDecoder(10)
    data = frame(b"a") + frame(b"b" * 50) + frame(b"c")
    assert feed_bytewise(decoder, data) == [b"a", Oversize(50), b"c"]
    assert decoder.oversize == 1
    assert decoder.junk_bytes == 0


def test_start_block_mid_frame_restarts() -> None:
    decoder = FrameDecoder(1024)
    out = decoder.feed(START_BLOCK + b"MSH|partial" + frame(MSG_A))
    assert out == [MSG_A]
    assert decoder.restarted_frames == 1
    assert decoder.junk_bytes == 0


def test_start_block_mid_frame_across_reads() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(START_BLOCK + b"MSH|partial") == []
    assert decoder.feed(frame(MSG_B)) == [MSG_B]
    assert decoder.restarted_frames == 1


def test_start_block_while_discarding_oversize_starts_new_frame() -> None:
    decoder = FrameDecoder(5)
    assert decoder.feed(START_BLOCK + b"x" * 20) == []
    assert decoder.feed(frame(b"MSH|")) == [b"MSH|"]  # <SB>MSH: a restart (issue 10 item 3)
    assert decoder.restarted_frames == 1
    assert decoder.oversize == 0  # never completed, so never reported


def test_end_block_without_carriage_return() -> None:
    decoder = FrameDecoder(1024)
    data = START_BLOCK + MSG_A + END_BLOCK + START_BLOCK + MSG_B + END_BLOCK
    # <EB><SB>MSH ends MSG_A at once; the final <EB> waits for the caller's grace.
    assert decoder.feed(data) == [MSG_A]
    assert decoder.awaiting_end
    assert decoder.accept_end() == [MSG_B]
    assert decoder.junk_bytes == 0
    assert not decoder.in_frame


def test_end_block_followed_by_other_byte_is_a_stray_byte() -> None:
    # Before issue 10 item 3 this was "a", then junk: a truncated message, acknowledged.
    decoder = FrameDecoder(1024)
    out = decoder.feed(START_BLOCK + b"a" + END_BLOCK + b"\n" + frame(b"b"))
    # The <SB> is not followed by MSH, so it is data too: one malformed frame, kept whole.
    assert out == [Malformed(b"a\x1c\n\x0bb", "0x1C inside the payload at byte 1")]
    assert decoder.junk_bytes == 0
    assert decoder.malformed == 1
    # A real next message (<SB>MSH) inside a broken frame is a sender restart.
    assert decoder.feed(START_BLOCK + b"a" + END_BLOCK + b"\n" + frame(b"MSH|b")) == [b"MSH|b"]
    assert decoder.restarted_frames == 1


def test_end_block_then_cr_lf_counts_the_lf_as_junk() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(frame(b"a") + b"\n" + frame(b"b")) == [b"a", b"b"]
    assert decoder.junk_bytes == 1


def test_payload_bytes_are_kept_exactly() -> None:
    decoder = FrameDecoder(1024)
    payload = "MSH|^~\\&|Zoë|Ærø\r\nPID|1||ß\n".encode() + bytes(range(0x1D, 0x100))
    assert decoder.feed(frame(payload)) == [payload]
    assert feed_bytewise(decoder, frame(payload)) == [payload]


def test_empty_payload() -> None:
    decoder = FrameDecoder(10)
    assert decoder.feed(frame(b"")) == [b""]


def test_large_frame_in_small_reads() -> None:
    payload = (b"OBX|1|ED|PDF||" + b"A" * 1000 + b"\r") * 8000  # ~8 MB
    decoder = FrameDecoder(16 * 1024 * 1024)
    data = frame(payload) * 2
    out: list[bytes | Oversize | Malformed] = []
    for at in range(0, len(data), 1500):  # MTU-sized reads
        out.extend(decoder.feed(data[at : at + 1500]))
    assert len(out) == 2
    assert out[0] == payload
    assert out[1] == payload


def test_large_frame_byte_by_byte_is_linear() -> None:
    # 200 KB byte by byte: a quadratic decoder would take minutes, this takes well
    # under a second (the global pytest timeout is the only guard).
    payload = b"x" * 200_000
    decoder = FrameDecoder(1_000_000)
    assert feed_bytewise(decoder, frame(payload)) == [payload]


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)
