"""Synthetic HL7 traffic for the demo and the benchmarks: made-up people, real structure."""

from __future__ import annotations

import random
from collections.abc import Sequence
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
        f"1 DEMO STREET^^DEMOTOWN^ST^00000|||||||ACCT{seq:09d}",
        f"PV1|1|{r.choice('IOE')}|{r.choice(['4N', '5S', 'ED'])}^{r.randint(100, 499)}^{r.randint(1, 2)}^{facility}"
        f"||||DR{r.randint(1000, 9999)}^DEMO^DOCTOR|||MED|||||||||V{seq:09d}|||||||||||||||||||||||||{ts}",
    ]
    return ("\r".join(segments) + "\r").encode()


def dft(seq: int, lines: int = 3, facility: str = "NORTH", rng: random.Random | None = None) -> bytes:
    """A DFT^P03 with `lines` FT1 segments (the last one a credit when lines > 2)."""
    r = rng or random.Random(seq)
    ts = _ts()
    segments = [
        f"MSH|^~\\&|HIS|{facility}|PATACCT|{facility}|{ts}||DFT^P03^DFT_P03|DFT{seq:08d}|P|2.5.1",
        f"EVN|P03|{ts}",
        f"PID|1||MRN{seq % 50000:07d}^^^{facility}^MR||DEMO^PATIENT^{seq % 97}||19700101|U||||||||||ACCT{seq:09d}",
        f"PV1|1|O|CLINIC^{r.randint(1, 20)}^1^{facility}||||DR{r.randint(1000, 9999)}^DEMO^DOCTOR"
        f"|||MED|||||||||V{seq:09d}",
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


def remit835(batch: int, claims: int = 3, accounts: Sequence[str] = (), now: datetime | None = None) -> str:
    """A small balanced X12 835 from a made-up payer: `claims` claims paying the demo's charge
    codes, the last one denied when there are more than two. Each claim's CLP01 is the next of
    `accounts` (made up when they run out); no patient names (no NM1 segments)."""
    r = random.Random(batch)
    when = now or datetime.now(UTC)
    date, hhmm = when.strftime("%Y%m%d"), when.strftime("%H%M")
    body = ["ST*835*0001*005010X221A1", "", f"TRN*1*EFT{batch:08d}*1512345678", f"DTM*405*{date}",
            "N1*PR*DEMO HEALTH PLAN", "REF*2U*DEMOPAYER", "N1*PE*DEMO GENERAL HOSPITAL*XX*1234567893", "LX*1"]
    total = 0
    for i in range(1, claims + 1):
        code, _ = r.choice(CHARGE_CODES)
        charge = r.randint(5000, 90000)  # cents: the balancing is exact
        account = accounts[i - 1] if i <= len(accounts) else f"ACCT{r.randint(1, 10_000_000):09d}"
        icn = f"ICN{batch:06d}{i:02d}"
        if claims > 2 and i == claims:  # a denial: nothing paid, the whole charge a CO-50
            body += [f"CLP*{account}*4*{_usd(charge)}*0*0*12*{icn}*11*1", f"SVC*HC:{code}*{_usd(charge)}*0**1",
                     f"DTM*472*{date}", f"CAS*CO*50*{_usd(charge)}"]
            continue
        patient = r.randint(0, charge // 5)
        paid = r.randint(charge // 2, charge - patient)
        total += paid
        body += [f"CLP*{account}*1*{_usd(charge)}*{_usd(paid)}*{_usd(patient)}*12*{icn}*11*1",
                 f"SVC*HC:{code}*{_usd(charge)}*{_usd(paid)}**1", f"DTM*472*{date}",
                 f"CAS*PR*1*{_usd(patient)}", f"CAS*CO*45*{_usd(charge - paid - patient)}"]
    body[1] = (f"BPR*I*{_usd(total)}*C*ACH*CCP*01*999999999*DA*123456*1512345678**01*999988880*DA*98765*"
               f"{date}")
    body.append(f"SE*{len(body) + 1}*0001")
    envelope = [f"ISA*00*{'':10}*00*{'':10}*ZZ*{'DEMOPAYER':15}*ZZ*{'HOSPITAL':15}*{date[2:]}*{hhmm}*^*00501*"
                f"{batch % 1_000_000_000:09d}*0*P*:", f"GS*HP*DEMOPAYER*HOSPITAL*{date}*{hhmm}*{batch}*X*005010X221A1"]
    trailer = [f"GE*1*{batch}", f"IEA*1*{batch % 1_000_000_000:09d}"]
    return "~\n".join(envelope + body + trailer) + "~\n"


def _usd(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"
