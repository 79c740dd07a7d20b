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
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

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


# Amounts and dates repeat heavily (the same fees, adjustments and service
# dates on claim after claim), so each distinct text is checked and converted
# once. Decimals are immutable and can be shared; the caches are cleared when
# full so a file of only distinct values cannot grow them without bound.
_CACHE_LIMIT = 4096
_AMOUNTS: dict[str, Decimal] = {}
_DATES: dict[str, str] = {}


def _parse_amount(text: str, sid: str, position: int, segment: int) -> Decimal:
    if _NUMBER.fullmatch(text) is None:
        what = "missing" if text == "" else "not a number"
        raise ParseError(f"{sid}{position:02d} is {what}", segment)
    value = Decimal(text)
    if len(_AMOUNTS) >= _CACHE_LIMIT:
        _AMOUNTS.clear()
    _AMOUNTS[text] = value
    return value


def amount(text: str, sid: str, position: int, segment: int) -> Decimal:
    """``text``, element ``position`` of segment ``sid``, as a Decimal; ParseError when empty or not a number."""
    value = _AMOUNTS.get(text)
    return value if value is not None else _parse_amount(text, sid, position, segment)


def optional_amount(text: str, sid: str, position: int, segment: int) -> Decimal | None:
    """Like :func:`amount`, None when ``text`` is empty."""
    return amount(text, sid, position, segment) if text else None


def _parse_date(text: str, sid: str, position: int, segment: int) -> str:
    match = _DATE.fullmatch(text)
    if match is None or not ("01" <= match[2] <= "12" and "01" <= match[3] <= "31"):
        raise ParseError(f"{sid}{position:02d} is not a CCYYMMDD date", segment)
    value = f"{match[1]}-{match[2]}-{match[3]}"
    if len(_DATES) >= _CACHE_LIMIT:
        _DATES.clear()
    _DATES[text] = value
    return value


def date(text: str, sid: str, position: int, segment: int) -> str | None:
    """A CCYYMMDD element as an ISO 8601 date, None when empty."""
    if not text:
        return None
    value = _DATES.get(text)
    return value if value is not None else _parse_date(text, sid, position, segment)


def _padded(elements: list[str], size: int) -> list[str]:
    """``elements`` with at least ``size`` items: absent trailing elements read as ``""``."""
    missing = size - len(elements)
    return elements + [""] * missing if missing > 0 else elements


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
    """Build one transaction after another from the segments between ST and SE.

    :meth:`start` opens a transaction at its ST; then each body segment (not ST,
    not SE) goes to the handler :attr:`handlers` holds for its id, as
    ``handler(elements, number)``, or nowhere when the id has none - the
    translator dispatches directly, one dict look-up per segment. Handlers raise
    ParseError when a segment is unreadable. :attr:`transaction` is the record.
    """

    def __init__(self, component: str) -> None:
        self.transaction = Transaction("", Envelope(), 0)
        self._component = component
        self._party: dict[str, str] | None = None
        self._header_number: str | None = None
        self._claim: Claim | None = None
        self._line: ServiceLine | None = None
        self.handlers: dict[str, Callable[[list[str], int], None]] = {
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

    def start(self, st: list[str], number: int, envelope: Envelope) -> Transaction:
        """Open a new transaction at its ST (segment ``number``) and return its record."""
        self.transaction = Transaction(st[2] if len(st) > 2 else "", envelope, number)
        self._party = self._header_number = self._claim = self._line = None
        return self.transaction

    def _bpr(self, el: list[str], number: int) -> None:
        tx, padded = self.transaction, _padded(el, 17)
        # Nothing is set unless both read: an error then carries no BPR amount.
        paid, when = amount(padded[2], "BPR", 2, number), date(padded[16], "BPR", 16, number)
        tx.bpr, tx.bpr_amount, tx.payment_date = el, paid, when

    def _trn(self, el: list[str], number: int) -> None:
        self.transaction.trn = el

    def _n1(self, el: list[str], number: int) -> None:
        el = _padded(el, 5)
        party = self.transaction.payer if el[1] == "PR" else self.transaction.payee if el[1] == "PE" else None
        self._party = party
        if party is not None:
            party.update(name=el[2], qualifier=el[3], id=el[4])

    def _ref(self, el: list[str], number: int) -> None:
        el = _padded(el, 3)
        if self._line is not None:
            if el[1] == "6R":
                self._line.control_number = el[2]
        elif self._claim is None and self._party is not None:
            self._party.setdefault("ref_" + el[1], el[2])

    def _dtm(self, el: list[str], number: int) -> None:
        el = _padded(el, 3)
        value = date(el[2], "DTM", 2, number)
        if value is None:
            return
        if self._line is not None:
            self._line.dates[el[1]] = value
        elif self._claim is not None:
            self._claim.dates[el[1]] = value
        elif el[1] == "405":
            self.transaction.production_date = value

    def _lx(self, el: list[str], number: int) -> None:
        self._header_number = el[1] if len(el) > 1 else ""
        self._claim = self._line = self._party = None

    def _clp(self, el: list[str], number: int) -> None:
        claims = self.transaction.claims
        padded = _padded(el, 6)
        if not padded[1] or not padded[2]:
            raise ParseError("CLP01 and CLP02 are required", number)
        # ``elements`` keeps the segment as sent: events read CLP06-09 by length.
        self._claim = Claim(
            len(claims) + 1,
            number,
            self._header_number,
            el,
            amount(padded[3], "CLP", 3, number),
            amount(padded[4], "CLP", 4, number),
            optional_amount(padded[5], "CLP", 5, number),
        )
        self._line = self._party = None
        claims.append(self._claim)

    def _svc(self, el: list[str], number: int) -> None:
        claim = self._require_claim("SVC", number)
        el = _padded(el, 6)
        self._line = ServiceLine(
            len(claim.lines) + 1,
            number,
            _procedure(el[1], self._component),
            amount(el[2], "SVC", 2, number),
            amount(el[3], "SVC", 3, number),
            el[4] or None,
            optional_amount(el[5], "SVC", 5, number),
        )
        claim.lines.append(self._line)

    def _cas(self, el: list[str], number: int) -> None:
        target = self._line if self._line is not None else self._require_claim("CAS", number)
        adjustments = target.adjustments
        size = len(el)
        group = el[1] if size > 1 else ""
        for start in _CAS_TRIPLES:
            if start >= size or not el[start]:
                break
            quantity = el[start + 2] if start + 2 < size else ""
            adjustments.append(
                Adjustment(
                    group,
                    el[start],
                    amount(el[start + 1] if start + 1 < size else "", "CAS", start + 1, number),
                    optional_amount(quantity, "CAS", start + 2, number),
                )
            )

    def _lq(self, el: list[str], number: int) -> None:
        el = _padded(el, 3)
        if self._line is not None and el[1] == "HE" and el[2]:
            self._line.remarks.append(el[2])

    def _mia(self, el: list[str], number: int) -> None:
        claim = self._require_claim("MIA", number)
        size = len(el)
        claim.remarks.extend(el[i] for i in _MIA_REMARKS if i < size and el[i])

    def _moa(self, el: list[str], number: int) -> None:
        claim = self._require_claim("MOA", number)
        size = len(el)
        claim.remarks.extend(el[i] for i in _MOA_REMARKS if i < size and el[i])

    def _plb(self, el: list[str], number: int) -> None:
        self._claim = self._line = None
        size = len(el)
        items: list[tuple[str, str | None, Decimal]] = []
        for start in _PLB_PAIRS:
            if start >= size or not el[start]:
                break
            reason, _, reference = el[start].partition(self._component)
            paid = amount(el[start + 1] if start + 1 < size else "", "PLB", start + 1, number)
            items.append((reason, reference or None, paid))
        plbs = self.transaction.plbs
        el = _padded(el, 3)
        plbs.append(ProviderAdjustment(len(plbs) + 1, number, el[1], date(el[2], "PLB", 2, number), items))

    def _require_claim(self, sid: str, number: int) -> Claim:
        if self._claim is None:
            raise ParseError(f"{sid} outside a claim (no CLP before it)", number)
        return self._claim


_QUALIFIED_GT = re.compile(r"^[A-Z][A-Z0-9]>[^>]")


def _procedure(composite: str, component: str) -> list[str]:
    """SVC01's components. Some senders join it with '>' while ISA16 declares another separator
    (seen in the public corpus: `HC>55669` under ISA16 ':'); read as one piece, the line would
    lose its procedure code. So a composite without the declared separator that starts with a
    two-character qualifier and '>' is split on '>'; nothing else is guessed."""
    if component in composite or component == ">" or not _QUALIFIED_GT.match(composite):
        return composite.split(component)
    return composite.split(">")
