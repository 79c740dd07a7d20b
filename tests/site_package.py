"""A site's mapping package, built into a real wheel and installed with pip into a --target
directory: what tests/test_user_mappings.py and tests/test_mapping_test_cli.py load through the
``ficus.mappings`` entry point group.

The wheel is written by hand (a wheel is a zip with a .dist-info: METADATA, WHEEL, RECORD
with hashes, entry_points.txt) because the venv has no ``wheel`` package for setuptools'
bdist_wheel; pip then installs it like any other wheel, without the network.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

NAME = "site_zmaps"
VERSION = "1.0"

# Custom messages: ZCH^P03 carries charges in ZFT segments (ZFT-1 set id, ZFT-2 account,
# ZFT-3 department, ZFT-4 rate code, ZFT-5 quantity). The mapping prices each line from its
# own table; an unknown rate code is a KeyError inside the site's code.
CHARGES = '''\
"""Site mappings of the test site: ZCH^P03 (charges in ZFT segments)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel

from canonical import usermap
from canonical.envelope import CloudEvent
from canonical.subjects import EventType

ZCHARGE = EventType("site", "zcharge", "recorded", 1)
RATES = {"R1": Decimal("12.50"), "R2": Decimal("40.00")}


class ZChargeData(BaseModel):
    """One ZFT line priced by the site's rate table."""

    control_id: str
    line: int
    account_number: str | None
    department: str | None
    rate_code: str
    quantity: Decimal
    amount: Decimal


@usermap.mapping(messages=[("ZCH", "P03")], events={ZCHARGE: ZChargeData})
def zcharges(msg: usermap.Hl7Input) -> list[CloudEvent] | usermap.DeadLetter:
    lines = msg.message.segments("ZFT")
    if not lines:
        return usermap.DeadLetter("ZCH^P03 has no ZFT segment", locator="ZFT")
    events = []
    for i, seg in enumerate(lines, 1):
        code = seg.leaf(4) or ""
        quantity = msg.reader.number(seg, 5, f"ZFT[{i}]", "quantity") or Decimal(1)
        amount = RATES[code] * quantity
        data = {"control_id": msg.header.control_id, "line": i, "account_number": seg.leaf(2),
                "department": seg.leaf(3), "rate_code": code, "quantity": quantity, "amount": amount}
        events.append(msg.event(ZCHARGE, data, index=i, subject=f"{msg.header.control_id}/ZFT[{i}]"))
    return events


@usermap.mapping(messages=[("ZCH", "P03")], events={ZCHARGE: ZChargeData})
def untyped(msg):
    return []


@usermap.mapping(messages=[("ZCH", "P03")], events={ZCHARGE: ZChargeData})
def wrong_return(msg: usermap.Hl7Input) -> dict[str, str]:
    return {}


def undeclared(msg: usermap.Hl7Input) -> list[CloudEvent]:
    return []


SUPPLY = EventType("site", "supply", "counted", 1)
PRICES = {"GLV": Decimal("0.25"), "MSK": Decimal("1.10")}


class SupplyCount(BaseModel):
    """A shelf count valued at the site's prices."""

    item: str
    quantity: int
    location: str | None
    value: Decimal


@usermap.record_mapping(events={SUPPLY: SupplyCount})
def zsupply(rec: usermap.RecordInput) -> list[CloudEvent] | usermap.DeadLetter:
    quantity = rec.values["quantity"]
    if quantity == 0:
        return usermap.DeadLetter("a count of zero is not sent by this site's scanners", locator="quantity")
    item = str(rec.values["item"])
    value = PRICES[item] * Decimal(str(quantity))
    data = {"item": item, "quantity": quantity, "location": rec.values.get("location"), "value": value}
    return [rec.event(SUPPLY, data)]
'''

ENTRY_POINTS = """\
[ficus.mappings]
zcharges = site_zmaps.charges:zcharges
untyped = site_zmaps.charges:untyped
wrong_return = site_zmaps.charges:wrong_return
undeclared = site_zmaps.charges:undeclared
zsupply = site_zmaps.charges:zsupply
"""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out: Path) -> Path:
    """``site_zmaps-1.0-py3-none-any.whl`` in ``out``."""
    dist = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}/__init__.py": b'"""A hospital\'s own Ficus mappings."""\n',
        f"{NAME}/charges.py": CHARGES.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests/site_package.py\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": ENTRY_POINTS.encode(),
    }
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def install(tmp: Path) -> Path:
    """Builds the wheel in ``tmp/dist`` and pip-installs it into ``tmp/site`` (returned: put it
    on sys.path or PYTHONPATH)."""
    (tmp / "dist").mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(tmp / "dist")
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    assert (target / f"{NAME}-{VERSION}.dist-info" / "entry_points.txt").is_file()
    return target


def zch(control_id: str, lines: list[tuple[str, str, str, str]], facility: str = "NORTH") -> bytes:
    """A ZCH^P03 message: one ZFT per (account, department, rate code, quantity)."""
    segs = [f"MSH|^~\\&|SITEHIS|{facility}|FICUS|HOSP|20261130101500||ZCH^P03|{control_id}|P|2.5",
            f"PID|1||MRN{control_id}^^^HOSP^MR"]
    segs += [f"ZFT|{i}|{acc}|{dept}|{code}|{qty}" for i, (acc, dept, code, qty) in enumerate(lines, 1)]
    return ("\r".join(segs) + "\r").encode()
