"""MSH-10 exactly as sent (issue 10 item 4): read raw, echoed raw in MSA-2, compared raw.

A control id with an escape (``\\F\\``, ``\\X41\\``), a component (``ID^2``) or a trailing
space used to be decoded or trimmed: the legacy engine's correct ACK was taken for a
mismatch (AR, so the sender resent and the engine got the message again and again), and
Ficus's own MSA-2 did not match what the sender sent.
"""

from __future__ import annotations

import pytest

from canonical.hl7v2.ack import ack_code, build_ack
from canonical.hl7v2.reader import peek_header
from legacy.mllp_sender import MllpSender
from legacy.simulated_engine import SimulatedEngine

ODD_IDS = ["ID\\F\\1", "\\X41\\B", "ID^2", "ID2 ", "ID3&x~y", "  ID4  "]


def message(control_id: str) -> bytes:
    head = f"MSH|^~\\&|SND|FAC|RCV|FAC|20240101||ADT^A01|{control_id}|P|2.5\r"
    return (head + "PID|1||42\r").encode("latin-1")


@pytest.mark.parametrize("control_id", ODD_IDS)
def test_header_keeps_msh10_as_sent(control_id: str) -> None:
    assert peek_header(message(control_id)).control_id_raw == control_id


def test_decoded_control_id_is_unchanged() -> None:
    assert peek_header(message("ID\\F\\1")).control_id == "ID|1"
    assert peek_header(message("ID^2")).control_id == "ID"


@pytest.mark.parametrize("control_id", ODD_IDS)
def test_ack_echoes_msh10_as_sent(control_id: str) -> None:
    ack = build_ack(peek_header(message(control_id)), "AA")
    assert f"\rMSA|AA|{control_id}\r".encode("latin-1") in ack
    assert ack_code(ack) == ("AA", peek_header(message(control_id)).control_id)


def test_ack_echoes_latin1_bytes_exactly() -> None:
    raw = b"MSH|^~\\&|SND|FAC|RCV|FAC|2024||ADT^A01|Z\xe9\xff|P|2.5|||||||8859/1\r"
    assert b"\rMSA|AA|Z\xe9\xff\r" in build_ack(peek_header(raw), "AA")


@pytest.mark.parametrize("control_id", ODD_IDS)
async def test_legacy_sender_matches_msh10_as_sent(control_id: str) -> None:
    async with SimulatedEngine() as engine, MllpSender("legacy-test", "127.0.0.1", engine.port) as sender:
        payload = message(control_id)
        reply = await sender.send(payload, peek_header(payload).control_id_raw)
        assert ack_code(reply)[0] == "AA"
        assert engine.received == [payload]  # once: no mismatch, so no resend
        assert sender.stats.acked == 1 and sender.stats.failures == 0
