"""The content of one 835 transaction, built segment by segment.

:class:`TransactionBuilder` receives the segments between ST and SE and keeps
only what events and balancing need: slotted records of decimals and codes, no
names of patients (NM1*QC and friends are skipped), no raw segments. A claim
with one line and two adjustments costs about 1.5 KB, so a transaction of 1000
claims holds about 1.5 MB; memory is bounded by the largest transaction, never
by the file (see ``bench/x12_835.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from canonical.x12.reader import Segment

__all__ = [
    "Adjustment",
    "Claim",
    "Envelope",
    "ParseError",
    "ProviderAdjustment",
    "ServiceLine",
    "Transaction",
    "TransactionBuilder",
]

_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_ZERO = Decimal(0)
# CAS repeats (reason, amount, quantity) up to six times from CAS02.
_CAS_TRIPLES = range(2, 20, 3)
# PLB repeats (reason:reference, amount) up to six times from PLB03.
_PLB_PAIRS = range(3, 15, 2)
# Remark codes: MIA05 and MIA20-23, MOA03-07.
_MIA_REMARKS = (5, 20, 21, 22, 23)
_MOA_REMARKS = (3, 4, 5, 6, 7)


class ParseError(ValueError):
    """A segment of the transaction cannot be read; ``reason`` names the element, not its value."""

    def __init__(self, reason: str, segment: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segment = segment


def amount(seg: Segment, position: int) -> Decimal:
    """Element ``position`` as a Decimal; ParseError when absent or not a number."""
    text = seg.get(position)
    if _NUMBER.fullmatch(text) is None:
        what = "missing" if text == "" else "not a number"
        raise ParseError(f"{seg.id}{position:02d} is {what}", seg.number)
    return Decimal(text)


def optional_amount(seg: Segment, position: int) -> Decimal | None:
    """Like :func:`amount`, None when the element is empty."""
    return amount(seg, position) if seg.get(position) else None


def date(seg: Segment, position: int) -> str | None:
    """A CCYYMMDD element as an ISO 8601 date, None when empty."""
    text = seg.get(position)
    if not text:
        return None
    match = _DATE.fullmatch(text)
    if match is None or not ("01" <= match[2] <= "12" and "01" <= match[3] <= "31"):
        raise ParseError(f"{seg.id}{position:02d} is not a CCYYMMDD date", seg.number)
    return f"{match[1]}-{match[2]}-{match[3]}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """The ISA/GS around a transaction; all None for a file that starts at ST."""

    interchange_control: str | None = None
    group_control: str | None = None
    sender: str = ""
    version: str | None = None


@dataclass(slots=True)
class Adjustment:
    """One CAS triple."""

    group: str
    reason: str
    amount: Decimal
    quantity: Decimal | None


@dataclass(slots=True)
class ServiceLine:
    """Loop 2110: one SVC and what follows it."""

    index: int
    segment: int
    procedure: list[str]
    charge: Decimal
    paid: Decimal
    revenue_code: str | None
    units: Decimal | None
    dates: dict[str, str] = field(default_factory=dict)
    control_number: str | None = None
    adjustments: list[Adjustment] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Claim:
    """Loop 2100: one CLP, its claim-level adjustments, dates, remarks and lines."""

    index: int
    segment: int
    header_number: str | None
    elements: list[str]
    charge: Decimal
    paid: Decimal
    patient_responsibility: Decimal | None
    dates: dict[str, str] = field(default_factory=dict)
    adjustments: list[Adjustment] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)
    lines: list[ServiceLine] = field(default_factory=list)

    @property
    def status(self) -> str:
        """CLP02."""
        return self.elements[2]


@dataclass(slots=True)
class ProviderAdjustment:
    """One PLB: provider, fiscal period and (reason, reference, amount) items."""

    index: int
    segment: int
    provider_id: str
    fiscal_period: str | None
    items: list[tuple[str, str | None, Decimal]]


@dataclass(slots=True)
class Transaction:
    """Everything events and balancing need from one ST..SE."""

    st_control: str
    envelope: Envelope
    first_segment: int
    bpr: list[str] = field(default_factory=list)
    bpr_amount: Decimal = _ZERO
    payment_date: str | None = None
    trn: list[str] = field(default_factory=list)
    production_date: str | None = None
    payer: dict[str, str] = field(default_factory=dict)
    payee: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    plbs: list[ProviderAdjustment] = field(default_factory=list)
    segment_count: int = 1


class TransactionBuilder:
    """Feed the segments after ST with :meth:`add`; read :attr:`transaction` after SE."""

    def __init__(self, st: Segment, envelope: Envelope, component: str) -> None:
        self.transaction = Transaction(st.get(2), envelope, st.number)
        self._component = component
        self._party: dict[str, str] | None = None
        self._header_number: str | None = None
        self._claim: Claim | None = None
        self._line: ServiceLine | None = None
        self._handlers = {
            "BPR": self._bpr,
            "TRN": self._trn,
            "N1": self._n1,
            "REF": self._ref,
            "DTM": self._dtm,
            "LX": self._lx,
            "CLP": self._clp,
            "SVC": self._svc,
            "CAS": self._cas,
            "LQ": self._lq,
            "MIA": self._mia,
            "MOA": self._moa,
            "PLB": self._plb,
        }

    def add(self, seg: Segment) -> None:
        """Take one segment of the transaction body (not ST, not SE); ParseError when unreadable."""
        self.transaction.segment_count += 1
        handler = self._handlers.get(seg.elements[0])
        if handler is not None:
            handler(seg)

    def _bpr(self, seg: Segment) -> None:
        tx = self.transaction
        tx.bpr, tx.bpr_amount, tx.payment_date = seg.elements, amount(seg, 2), date(seg, 16)

    def _trn(self, seg: Segment) -> None:
        self.transaction.trn = seg.elements

    def _n1(self, seg: Segment) -> None:
        party = {"PR": self.transaction.payer, "PE": self.transaction.payee}.get(seg.get(1))
        self._party = party
        if party is not None:
            party.update(name=seg.get(2), qualifier=seg.get(3), id=seg.get(4))

    def _ref(self, seg: Segment) -> None:
        if self._line is not None:
            if seg.get(1) == "6R":
                self._line.control_number = seg.get(2)
        elif self._claim is None and self._party is not None:
            self._party.setdefault("ref_" + seg.get(1), seg.get(2))

    def _dtm(self, seg: Segment) -> None:
        value = date(seg, 2)
        if value is None:
            return
        if self._line is not None:
            self._line.dates[seg.get(1)] = value
        elif self._claim is not None:
            self._claim.dates[seg.get(1)] = value
        elif seg.get(1) == "405":
            self.transaction.production_date = value

    def _lx(self, seg: Segment) -> None:
        self._header_number, self._claim, self._line, self._party = seg.get(1), None, None, None

    def _clp(self, seg: Segment) -> None:
        claims = self.transaction.claims
        if not seg.get(1) or not seg.get(2):
            raise ParseError("CLP01 and CLP02 are required", seg.number)
        self._claim = Claim(
            len(claims) + 1,
            seg.number,
            self._header_number,
            seg.elements,
            amount(seg, 3),
            amount(seg, 4),
            optional_amount(seg, 5),
        )
        self._line, self._party = None, None
        claims.append(self._claim)

    def _svc(self, seg: Segment) -> None:
        claim = self._require_claim(seg)
        self._line = ServiceLine(
            len(claim.lines) + 1,
            seg.number,
            seg.get(1).split(self._component),
            amount(seg, 2),
            amount(seg, 3),
            seg.get(4) or None,
            optional_amount(seg, 5),
        )
        claim.lines.append(self._line)

    def _cas(self, seg: Segment) -> None:
        target = self._line if self._line is not None else self._require_claim(seg)
        group = seg.get(1)
        for start in _CAS_TRIPLES:
            if start >= len(seg.elements) or not seg.get(start):
                break
            target.adjustments.append(
                Adjustment(group, seg.get(start), amount(seg, start + 1), optional_amount(seg, start + 2))
            )

    def _lq(self, seg: Segment) -> None:
        if self._line is not None and seg.get(1) == "HE" and seg.get(2):
            self._line.remarks.append(seg.get(2))

    def _mia(self, seg: Segment) -> None:
        claim = self._require_claim(seg)
        claim.remarks.extend(code for code in map(seg.get, _MIA_REMARKS) if code)

    def _moa(self, seg: Segment) -> None:
        claim = self._require_claim(seg)
        claim.remarks.extend(code for code in map(seg.get, _MOA_REMARKS) if code)

    def _plb(self, seg: Segment) -> None:
        self._claim, self._line = None, None
        items: list[tuple[str, str | None, Decimal]] = []
        for start in _PLB_PAIRS:
            if start >= len(seg.elements) or not seg.get(start):
                break
            reason, _, reference = seg.get(start).partition(self._component)
            items.append((reason, reference or None, amount(seg, start + 1)))
        plbs = self.transaction.plbs
        plbs.append(ProviderAdjustment(len(plbs) + 1, seg.number, seg.get(1), date(seg, 2), items))

    def _require_claim(self, seg: Segment) -> Claim:
        if self._claim is None:
            raise ParseError(f"{seg.id} outside a claim (no CLP before it)", seg.number)
        return self._claim
