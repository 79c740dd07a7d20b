"""The benchmark's HL7 traffic: ADT^A01 and DFT^P03 of 1-2 KB, unique per sequence number.

`router.simulate` builds the structure the mappings read (MSH, EVN, PID, PV1, FT1); the
benchmark pads each message with the segments real feeds carry and the mappings skip
(NK1, DG1, AL1, IN1, GT1, OBX), so that every message is 1-2 KB as the issue asks.
"""

from __future__ import annotations

from router import simulate

_ADT_EXTRA = [
    "NK1|1|DEMO^SPOUSE^A|SPO^Spouse^HL70063|1 DEMO STREET^^DEMOTOWN^ST^00000|(555)555-0100||EC^Emergency Contact",
    "NK1|2|DEMO^CHILD^B|CHD^Child^HL70063|2 DEMO AVENUE^^DEMOTOWN^ST^00000|(555)555-0101||EC^Emergency Contact",
    "PV2|||CHEST PAIN^CHEST PAIN||||||||||||||||||||||||||||||||||||||||||",
    "AL1|1|DA|70618^PENICILLIN^RXNORM|MO|HIVES",
    "AL1|2|FA|256349002^PEANUT^SCT|SV|ANAPHYLAXIS",
    "DG1|1||R07.9^CHEST PAIN, UNSPECIFIED^I10||20240105|A",
    "DG1|2||I10^ESSENTIAL HYPERTENSION^I10||20240105|W",
    "GT1|1||DEMO^GUARANTOR^A||1 DEMO STREET^^DEMOTOWN^ST^00000|(555)555-0100|||||SE^Self",
    "IN1|1|PPO01^DEMO PPO|87726|DEMO HEALTH PLAN|PO BOX 1^^DEMOTOWN^ST^00000||(555)555-0199|GRP001|"
    "DEMO EMPLOYER GROUP|||20240101|20241231|||DEMO^PATIENT|SEL^Self|19700101|1 DEMO STREET^^DEMOTOWN^ST^00000",
    "OBX|1|NM|8867-4^HEART RATE^LN||72|/min|60-100|N|||F",
    "OBX|2|NM|8480-6^SYSTOLIC BP^LN||128|mm[Hg]|90-140|N|||F",
]

_DFT_EXTRA = [
    "DG1|1||R07.9^CHEST PAIN, UNSPECIFIED^I10||20240105|A",
    "DG1|2||I10^ESSENTIAL HYPERTENSION^I10||20240105|W",
    "GT1|1||DEMO^GUARANTOR^A||1 DEMO STREET^^DEMOTOWN^ST^00000|(555)555-0100|||||SE^Self",
    "IN1|1|PPO01^DEMO PPO|87726|DEMO HEALTH PLAN|PO BOX 1^^DEMOTOWN^ST^00000||(555)555-0199|GRP001|"
    "DEMO EMPLOYER GROUP|||20240101|20241231|||DEMO^PATIENT|SEL^Self|19700101|1 DEMO STREET^^DEMOTOWN^ST^00000",
    "IN2|1||DEMO EMPLOYER|||||||||||||||||||||||||||||||||||||||||||||||||||||||||||",
]


def _pad(raw: bytes, extra: list[str]) -> bytes:
    return raw + "\r".join(extra).encode("ascii") + b"\r"


def adt(seq: int) -> bytes:
    """An ADT^A01 of about 1.3 KB (one encounter event)."""
    return _pad(simulate.adt(seq), _ADT_EXTRA)


def dft(seq: int) -> bytes:
    """A DFT^P03 of about 1.4 KB with three FT1 (two charges and a credit: three events)."""
    return _pad(simulate.dft(seq, lines=3), _DFT_EXTRA)


MAKERS = {"adt": adt, "dft": dft}
EVENTS_PER_MESSAGE = {"adt": 1, "dft": 3}


def batch(kind: str, count: int, base: int = 0) -> list[bytes]:
    """`count` distinct messages of one kind, sequence numbers from `base`."""
    make = MAKERS[kind]
    return [make(base + i) for i in range(count)]


class Feed:
    """Unique messages cheaply: 500 templates, each sent with a fresh MSH-10 (and so fresh
    event ids and raw dedupe ids). `tag` keeps runs against the same server apart."""

    def __init__(self, kind: str, tag: int, templates: int = 500) -> None:
        prefix = kind.upper().encode()
        self.kind = kind
        self.tag = tag % 100_000
        self.templates = [(m, b"|" + prefix + b"%08d|" % i) for i, m in enumerate(batch(kind, templates))]

    def get(self, conn: int, i: int) -> bytes:
        raw, ctrl = self.templates[i % len(self.templates)]
        return raw.replace(ctrl, b"|B%05d%02d%09d|" % (self.tag, conn, i), 1)
