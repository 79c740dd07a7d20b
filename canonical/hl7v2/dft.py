"""DFT^P03 (post detail financial transaction) -> one charge event per FT1.

Posted or credited (decided per FT1):

* FT1-6 ``CD`` or ``CR`` (credit) -> ``org.ficus.revenue.charge.credited.v1``;
* FT1-6 ``CG`` (charge) -> ``...charge.posted.v1``, unless FT1-10 quantity or
  FT1-11 amount is negative: a negative charge is a reversal -> ``credited``;
* any other FT1-6 (PY payment, AJ adjustment, site codes) is not a charge: the
  message is refused with a reason naming the code rather than guessed at.

Amounts are read from the first subcomponent of FT1-11/FT1-12 (v2.5+ send
``100&USD``; the second subcomponent is the currency). An FT1 needs a transaction
code (FT1-7) or a procedure code (FT1-25): many senders leave FT1-7 empty and code
the charge in FT1-25. PID is required, PV1 optional. A message is translated
whole or not at all: a TranslationError carries the gross total of the FT1
amounts that could be read, the money held up while it waits in the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from canonical import subjects
from canonical.context import TranslationContext
from canonical.envelope import CloudEvent, EventOrigin, make_event
from canonical.errors import TranslationError
from canonical.hl7v2.common import Fields, Identifiers, MessageReader, parse_number
from canonical.hl7v2.reader import Hl7Message, MshHeader, Segment

if TYPE_CHECKING:
    from canonical.hl7v2.fieldmap import FamilyMap

__all__ = ["CHARGE_TYPES", "CREDIT_TYPES", "SUPPORTED", "amount_at_risk", "map_dft_p03"]

#: FT1-6 codes (HL7 table 0017 and common practice) read as a charge / a credit.
CHARGE_TYPES = frozenset(("CG",))
CREDIT_TYPES = frozenset(("CD", "CR"))
_ACCEPTED_TYPES = ", ".join(sorted(CHARGE_TYPES | CREDIT_TYPES))

#: (MSH-9.1, MSH-9.2) pairs this mapping handles.
SUPPORTED = frozenset((("DFT", "P03"),))


def map_dft_p03(
    header: MshHeader, msg: Hl7Message, ctx: TranslationContext, site: FamilyMap | None = None,
) -> list[CloudEvent]:
    """One charge posted/credited event per FT1 of a DFT^P03 (``site``: the interface's site map)."""
    r = MessageReader(header, msg, ctx)
    ft1s = msg.segments("FT1")
    try:
        if not ft1s:
            raise r.fail(f"{r.label} has no FT1 segment", "FT1", "100")
        pid = r.require("PID")
        if site is not None:
            return _site_charges(r, ft1s, site)
        ids = r.identifiers(pid, msg.segment("PV1"))
        origin = r.origin(r.event_time())
        return [_charge(r, seg, i, ids, origin) for i, seg in enumerate(ft1s, 1)]
    except TranslationError as exc:
        raise exc.with_context(amount=_amount_at_risk(ft1s)) from exc


# The FT1 fields read as single values, in the order _charge unpacks them.
_FT1_LEAVES = (2, 3, 4, 5, 6, 10, 11, 12, 13, 20, 21)


def _charge(r: MessageReader, seg: Segment, index: int, ids: Identifiers, origin: EventOrigin) -> CloudEvent:
    at = f"FT1[{index}]"
    leaves = seg.leaves(_FT1_LEAVES)
    _, _, served, posted, ttype, qty, amt, unit, _, _, _ = leaves
    data, credited = _charge_data(
        r, index, ids, leaves, ttype,
        quantity=r.number_of(qty, 10, at, "quantity"), amount=r.number_of(amt, 11, at, "extended amount"),
        charge_code=r.coded(seg, 7), procedure_code=r.coded(seg, 25),
        service_date=r.timestamp_of(served, 4, at), posting_date=r.timestamp_of(posted, 5, at),
        unit_amount=r.number_of(unit, 12, at, "unit amount"), currency=r.text(seg, 11, sub=2))
    etype = subjects.CHARGE_CREDITED if credited else subjects.CHARGE_POSTED
    return make_event(etype, data, origin, index=index, subject=f"{r.header.control_id}/{at}")


def _charge_data(r: MessageReader, index: int, ids: Identifiers, leaves: Sequence[str | None], ttype: str | None,
                 *, quantity: Any, amount: Any, charge_code: Any, procedure_code: Any, service_date: Any,
                 posting_date: Any, unit_amount: Any, currency: str | None) -> tuple[Fields, bool]:
    """A charge's ChargeData fields from its reads (built-in or site-mapped), and whether it is a
    credit: the transaction type checked, a code required, the net amount signed."""
    at = f"FT1[{index}]"
    tid, batch, _, _, _, _, _, _, dept, performer, orderer = leaves
    ttype = _transaction_type(r, ttype, at)
    credited = _is_credit(ttype, quantity, amount)
    if charge_code is None and procedure_code is None:
        raise r.fail(f"{at} has no transaction code (FT1-7) or procedure code (FT1-25)", f"{at}-7", "101")
    data: Fields = {  # ChargeData
        "control_id": r.header.control_id,
        "ft1_index": index,
        "transaction_id": tid,
        "transaction_batch_id": batch,
        "transaction_type": ttype,
        "service_date": service_date,
        "posting_date": posting_date,
        "charge_code": charge_code,
        "procedure_code": procedure_code,
        "quantity": quantity,
        "amount": amount,
        "currency": currency,
        "net_amount": None if amount is None else (-abs(amount) if credited else abs(amount)),
        "unit_amount": unit_amount,
        "department": dept,
        "performing_provider_id": performer,
        "ordering_provider_id": orderer,
        "account_number": ids.account_number,
        "encounter_number": ids.encounter_number,
        "patient_id": ids.patient_id,
        "facility": r.facility,
    }
    return data, credited


def _site_charges(r: MessageReader, ft1s: list[Segment], site: FamilyMap) -> list[CloudEvent]:
    """:func:`map_dft_p03` under a site map: its fields replace the built-in reads, the identifier
    check runs on what the event carries, its other fields go into ``extensions``. The charge is
    built by one function generated for the map (:func:`site_charge_code`), which reads only the
    built-in fields the map does not replace (the identifiers among them)."""
    return site.charges(r, ft1s, r.origin(r.event_time()))


def _bad_site_type(r: MessageReader, at: str, ttype: object) -> TranslationError:
    reason = f"{at} site map field transaction_type is {'missing' if ttype is None else 'not one of'}"
    return r.fail(reason if ttype is None else f"{reason} {_ACCEPTED_TYPES}", at, "103")


def _no_identifier(r: MessageReader, at: str) -> TranslationError:
    reason = f"{r.label} {at} has no patient id, account or visit (site map and PID-3, PID-18, PV1-19)"
    return r.fail(reason, "PID-3", "101")


def _no_code(r: MessageReader, at: str) -> TranslationError:
    return r.fail(f"{at} has no transaction code (FT1-7) or procedure code (FT1-25)", f"{at}-7", "101")


def site_charge_code(mapped: dict[str, str], extensions: str | None, leaf: Callable[[int], str],
                     same: dict[tuple[str, int], str], read: Callable[[str], str],
                     ) -> tuple[list[str], dict[str, object]]:
    """The statements that end a site map's generated charge function, and the names they use.

    ``mapped``: canonical field -> the local holding the map's value; ``extensions``: the dict
    expression of the site fields (None without any); ``leaf(n)``: an expression for the plain
    FT1-n of the charge (read with the map's FT1 fields in one ``Segment.leaves`` call);
    ``same``: (converter, n) -> the local of a map field that is FT1-n through that converter,
    the value the built-in read of FT1-n gives (a bad value already failed in the map);
    ``read(path)``: an expression for the plain field at ``path`` of the message (``PID-3``),
    read once per message (the identifiers :meth:`MessageReader.identifiers` reads). The
    statements do what :func:`_charge` and :func:`_charge_data` do -- reads in the same order,
    the same checks and reasons, the same ChargeData keys in the same order -- except the reads
    the map replaces, which are not done at all (the map's value is the event's).
    """
    env: dict[str, object] = {
        "_tt": _transaction_type, "_make": make_event, "_POSTED": subjects.CHARGE_POSTED,
        "_CREDITED": subjects.CHARGE_CREDITED, "_CHARGE": CHARGE_TYPES, "_CREDIT": CREDIT_TYPES,
        "_bad_type": _bad_site_type, "_no_id": _no_identifier, "_no_code": _no_code,
    }

    def value(name: str, builtin: Callable[[], str]) -> str:
        # The built-in read is generated only for a field the map leaves alone (it reads its leaf).
        return mapped[name] if name in mapped else builtin()

    def number(name: str, n: int, what: str) -> str:
        return value(name, lambda: same.get(("decimal", n)) or f"r.number_of({leaf(n)}, {n}, at, {what!r})")

    def timestamp(name: str, n: int) -> str:
        return value(name, lambda: same.get(("timestamp", n)) or f"r.timestamp_of({leaf(n)}, {n}, at)")

    def plain(name: str, n: int) -> str:
        return value(name, lambda: leaf(n))

    lines = ['at = f"FT1[{index}]"', f"quantity = {number('quantity', 10, 'quantity')}",
             f"amount = {number('amount', 11, 'extended amount')}"]
    if "transaction_type" in mapped:
        lines += [f"ttype = {mapped['transaction_type']}",
                  "if ttype not in _CHARGE and ttype not in _CREDIT:", "    raise _bad_type(r, at, ttype)"]
    else:
        lines.append(f"ttype = {leaf(6)}")
    lines += [
        f"charge_code = {value('charge_code', lambda: 'r.coded(anchor, 7)')}",
        f"procedure_code = {value('procedure_code', lambda: 'r.coded(anchor, 25)')}",
        f"service_date = {timestamp('service_date', 4)}",
        f"posting_date = {timestamp('posting_date', 5)}",
        f"unit_amount = {number('unit_amount', 12, 'unit amount')}",
        f"currency = {value('currency', lambda: 'r.text(anchor, 11, sub=2)')}",
        "ttype = _tt(r, ttype, at)",
        "credited = ttype in _CREDIT or (quantity is not None and quantity < 0) or (amount is not None and amount < 0)",
        "if charge_code is None and procedure_code is None:", "    raise _no_code(r, at)",
        f"patient_id = {value('patient_id', lambda: read('PID-3'))}",
        f"account_number = {value('account_number', lambda: read('PID-18'))}",
        f"encounter_number = {value('encounter_number', lambda: read('PV1-19'))}",
        "if not (patient_id or account_number or encounter_number):", "    raise _no_id(r, at)",
    ]
    fields = {  # ChargeData, in _charge_data's order
        "control_id": "r.header.control_id", "ft1_index": "index",
        "transaction_id": plain("transaction_id", 2),
        "transaction_batch_id": plain("transaction_batch_id", 3),
        "transaction_type": "ttype", "service_date": "service_date", "posting_date": "posting_date",
        "charge_code": "charge_code", "procedure_code": "procedure_code", "quantity": "quantity",
        "amount": "amount", "currency": "currency",
        "net_amount": "None if amount is None else (-abs(amount) if credited else abs(amount))",
        "unit_amount": "unit_amount", "department": plain("department", 13),
        "performing_provider_id": plain("performing_provider_id", 20),
        "ordering_provider_id": plain("ordering_provider_id", 21),
        "account_number": "account_number", "encounter_number": "encounter_number",
        "patient_id": "patient_id", "facility": "r.facility",
    }
    if extensions is not None:
        fields["extensions"] = extensions
    lines.append("data = {" + ", ".join(f"{k!r}: {v}" for k, v in fields.items()) + "}")
    lines.append('return _make(_CREDITED if credited else _POSTED, data, origin, index=index, '
                 'subject=f"{r.header.control_id}/{at}")')
    return lines, env


def _transaction_type(r: MessageReader, ttype: str | None, at: str) -> str:
    """FT1-6, which must be a charge or a credit code."""
    if ttype is None:
        raise r.fail(f"{at}-6 transaction type is missing", f"{at}-6", "101")
    if ttype not in CHARGE_TYPES and ttype not in CREDIT_TYPES:
        # The sender's value stays out of the reason; the codes Ficus accepts say what to fix.
        reason = f"{at}-6 transaction type is not one of {_ACCEPTED_TYPES}"
        raise r.fail(reason, f"{at}-6", "103")
    return ttype


def _is_credit(ttype: str, quantity: Decimal | None, amount: Decimal | None) -> bool:
    if ttype in CREDIT_TYPES:
        return True
    # A negative charge reverses an earlier one.
    return (quantity is not None and quantity < 0) or (amount is not None and amount < 0)


def _amount_at_risk(ft1s: list[Segment]) -> Decimal | None:
    """Gross total (sum of absolute values) of the FT1-11 amounts that parse; None
    when none does. Gross, not net: a +100 charge and its -100 reversal that both
    wait in the dead-letter queue are 200 of unposted transactions, not 0."""
    total: Decimal | None = None
    for seg in ft1s:
        amount = parse_number(seg.get(11))
        if amount is not None:
            total = abs(amount) if total is None else total + abs(amount)
    return total


def amount_at_risk(payload: bytes) -> Decimal | None:
    """The gross FT1-11 total of a raw DFT message that could not be delivered (the alerts'
    money at risk); None for a message that is not HL7 or has no amount that parses."""
    from canonical.errors import NotHl7Error

    try:
        msg = Hl7Message(payload.decode("latin-1"))
        return _amount_at_risk(msg.segments("FT1"))
    except (NotHl7Error, ValueError):
        return None
