"""Synthetic HL7 traffic for the demo and the benchmarks: made-up people, real structure."""

from __future__ import annotations

import random
from datetime import UTC, datetime

CHARGE_CODES = [("99213", "OFFICE VISIT EST"), ("80053", "COMPREHENSIVE METABOLIC PANEL"),
                ("71046", "CHEST XRAY 2 VIEWS"), ("J1100", "DEXAMETHASONE INJ"),
                ("36415", "VENIPUNCTURE")]
DEPARTMENTS = ["LAB", "RAD", "PHARM", "ED", "CLINIC"]
FACILITIES = ["NORTH", "SOUTH"]


def _ts(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")


def adt(seq: int, trigger: str = "A01", facility: str = "NORTH", rng: random.Random | None = None) -> bytes:
    """An ADT message of about 1 KB for encounter `seq`."""
    r = rng or random.Random(seq)
    ts = _ts()
    segments = [
        f"MSH|^~\\&|HIS|{facility}|ENGINE|{facility}|{ts}||ADT^{trigger}|ADT{seq:08d}|P|2.5.1",
        f"EVN|{trigger}|{ts}",
        f"PID|1||MRN{seq % 50000:07d}^^^{facility}^MR||DEMO^PATIENT^{seq % 97}||19700101|U|||"
        f"1 DEMO STREET^^DEMOTOWN^ST^00000||||||ACCT{seq:09d}",
        f"PV1|1|{r.choice('IOE')}|{r.choice(['4N', '5S', 'ED'])}^{r.randint(100, 499)}^{r.randint(1, 2)}^{facility}"
        f"||||DR{r.randint(1000, 9999)}^DEMO^DOCTOR|||MED||||||||V{seq:09d}|||||||||||||||||||||||||{ts}",
    ]
    return ("\r".join(segments) + "\r").encode()


def dft(seq: int, lines: int = 3, facility: str = "NORTH", rng: random.Random | None = None) -> bytes:
    """A DFT^P03 with `lines` FT1 segments (the last one a credit when lines > 2)."""
    r = rng or random.Random(seq)
    ts = _ts()
    segments = [
        f"MSH|^~\\&|HIS|{facility}|PATACCT|{facility}|{ts}||DFT^P03^DFT_P03|DFT{seq:08d}|P|2.5.1",
        f"EVN|P03|{ts}",
        f"PID|1||MRN{seq % 50000:07d}^^^{facility}^MR||DEMO^PATIENT^{seq % 97}||19700101|U|||||||||ACCT{seq:09d}",
        f"PV1|1|O|CLINIC^{r.randint(1, 20)}^1^{facility}||||DR{r.randint(1000, 9999)}^DEMO^DOCTOR"
        f"|||MED||||||||V{seq:09d}",
    ]
    for i in range(1, lines + 1):
        code, text = r.choice(CHARGE_CODES)
        qty = r.randint(1, 3)
        unit = r.randint(1000, 50000) / 100
        credit = lines > 2 and i == lines
        kind = "CD" if credit else "CG"
        amount = -qty * unit if credit else qty * unit
        segments.append(
            f"FT1|{i}|TX{seq:08d}{i:02d}||{ts[:8]}|{ts[:8]}|{kind}|{code}^{text}^CPT|||{qty}|"
            f"{amount:.2f}|{unit:.2f}|{r.choice(DEPARTMENTS)}|||||||DR{r.randint(1000, 9999)}^DEMO"
            f"|DR{r.randint(1000, 9999)}^DEMO"
        )
    return ("\r".join(segments) + "\r").encode()


def billing_export(batch: int, rows: int = 5) -> str:
    """A small CSV billing export (the layout of the example config's billing-export)."""
    r = random.Random(batch)
    lines = ["TXN_ID,TXN_TYPE,SERVICE_DATE,POST_DATE,ACCOUNT,ENCOUNTER,CHARGE_CODE,CPT,QTY,AMOUNT,DEPT,FACILITY"]
    for i in range(rows):
        code, _ = r.choice(CHARGE_CODES)
        lines.append(f"B{batch}-{i:04d},CG,01/05/2024,01/06/2024,ACC{r.randint(1, 99999):06d},"
                     f"V{r.randint(1, 99999):06d},{code},{code},{r.randint(1, 3)},{r.randint(1000, 50000) / 100:.2f},"
                     f"{r.choice(DEPARTMENTS)},{r.choice(FACILITIES)}")
    return "\n".join(lines) + "\n"
