"""The posting engine: one canonical event in, its journal entries out (or a refusal).

:func:`post` is pure and deterministic: the same event and the same rules give byte-identical
entries (``entry.to_json()``), whether ``ficus post`` runs offline on a JSONL file or the live
consumer posts as events arrive.

Where money posts (each amount once):

================================== ==================================================================
event                              entry (positive amounts; a negative amount swaps the sides)
================================== ==================================================================
charge posted / credited           Dr patient AR, Cr gross revenue (cost center from the department,
                                   service line from the charge or revenue code); a credit has a
                                   negative net amount, so it posts Dr gross revenue, Cr patient AR
remittance received (BPR)          Dr cash (bank account by payee and payment method), Cr cash
                                   clearing (unapplied cash); BPR03 = D is a debit: sides swapped
claim adjudicated (CLP04)          Dr cash clearing, Cr payer AR: the payment applied to the claim
adjustment recorded (CAS)          Dr the group/reason account (CO: contractual allowance, PR: patient
                                   AR, i.e. a transfer from payer to patient, OA/PI/CR: configured),
                                   Cr payer AR
denial recorded                    a memo entry (``memo = true``: recorded, not booked) or, with
                                   ``denials = "account"``, a booked one: Dr denial account, Cr
                                   the rule's credit account, for the denied charge
provider adjustment (PLB)          per reason: Dr the reason's account (positive: the payer withheld
                                   it), Cr cash clearing (negative amounts, e.g. interest, credit the
                                   reason's account)
service line adjudicated           nothing: its payment is inside CLP04, its CAS are adjustment events
supply usage                       Dr supply expense (cost center), Cr inventory
labor time                         Dr labor expense (cost center), Cr accrued payroll; a record
                                   with hours and no amount posts nothing (skipped)
encounters, purchase orders        nothing (``post = "none"``): no money moves
================================== ==================================================================

The granularity: the BPR amount is the deposit, posted once from the remittance event; each
claim's CLP04 applies it from the clearing account to payer AR; CAS amounts post from the
adjustment events only (the claim's ``adjustment_total`` and the service lines are never
posted), PLB amounts from the provider adjustment events only. So for a balanced 835 the
clearing account nets to zero per transaction (BPR02 = sum CLP04 - sum PLB), cash equals the
BPR amounts and contractual allowance the CO adjustments. A reversal (CLP02 = 22) carries
negative amounts: its entries have the sides swapped and ``reversal = true``, so the original
claim's entries and its reversal's net to zero on every account.

Posting dates: a charge books on FT1-5 (posting date), else its service date; supply usage on
its use date; labor time on its work date; every other event on the date of its ``time`` (for
an 835, when Ficus received it: the claim, adjustment and PLB events carry no date of their
own, and the events of one remittance must book on one day for the clearing account to net).
The fiscal period comes from the calendar table.

A refusal (:class:`Unposted`) names what is missing (the rule, the table and its key, which
are codes, never patient data) and the money at risk; the caller dead-letters it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from canonical.posting.model import JOURNAL_ENTRY_CREATED, AccountRef, JournalEntryEvent, entry_id
from canonical.posting.rules import Rule, Rules

__all__ = ["POSTING_SOURCE", "Posting", "Unposted", "post"]

#: The CloudEvents ``source`` of every journal entry.
POSTING_SOURCE = "ficus://posting"
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Unposted:
    """An event that could not be posted: why (no patient data) and the money it carried."""

    reason: str
    money_at_risk: Decimal
    event_id: str
    event_type: str
    interface: str
    facility: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready (money as a string)."""
        return {"event_id": self.event_id, "event_type": self.event_type, "interface": self.interface,
                "facility": self.facility, "reason": self.reason, "money_at_risk": str(self.money_at_risk)}

    def to_json(self) -> bytes:
        """Compact JSON bytes, keys in a fixed order."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Posting:
    """What one event posted: its entries, or skipped (posts nothing by rule), or refused."""

    entries: list[JournalEntryEvent] = field(default_factory=list)
    skipped: bool = False
    refused: Unposted | None = None
    #: why a skipped event posts nothing (``post = "none"``, a zero amount, hours without an amount)
    note: str = ""


class _Skip(Exception):
    """Raised by a handler for an event that carries no money to book; the text says why."""


class _Refuse(Exception):
    """Raised inside the engine; becomes :class:`Unposted`."""

    def __init__(self, reason: str, money: Decimal = _ZERO) -> None:
        super().__init__(reason)
        self.reason = reason
        self.money = money


@dataclass(slots=True)
class _Leg:
    """One side of an entry: positive debits the account, negative credits it."""

    account: AccountRef
    amount: Decimal
    description: str


@dataclass(slots=True)
class _Draft:
    """An entry before it is an event."""

    legs: list[_Leg]
    posting_date: date
    business_key: str | None
    memo: bool = False
    reversal: bool = False


@dataclass(frozen=True, slots=True)
class _Where:
    """The facility segments every line of an event's entries shares."""

    entity: str
    facility: str


def post(event: Mapping[str, Any], rules: Rules) -> Posting:
    """Post one canonical event (a CloudEvent as a mapping: parsed JSON or ``model_dump``)."""
    etype = str(event.get("type") or "")
    eid = str(event.get("id") or "")
    interface = str(event.get("ficusinterface") or "")
    facility = str(event.get("ficusfacility") or "")

    def refuse(reason: str, money: Decimal) -> Posting:
        return Posting(refused=Unposted(reason, money, eid, etype, interface, facility))

    rule = rules.rule_for(etype)
    if rule is None:
        return refuse(f"no posting rule matches type {etype or '(none)'}", _money_of(event.get("data")))
    if rule.post == "none":
        return Posting(skipped=True, note=f"rule {rule.id} posts nothing for {etype}")
    cls = _event_classes().get(etype)
    if cls is None:
        return refuse(f"rule {rule.id}: {etype} is not an event type Ficus emits", _money_of(event.get("data")))
    try:
        parsed = cls.model_validate(dict(event))
    except ValidationError as exc:
        # Field paths and error kinds only: the input values may be patient data.
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}" for e in exc.errors()[:5])
        return refuse(f"rule {rule.id}: not a valid {etype} event ({where})", _money_of(event.get("data")))
    data = getattr(parsed, "data", None)
    handler = _HANDLERS[rule.post]
    try:
        drafts = handler(rule, rules, data, parsed)
    except _Refuse as exc:
        return refuse(f"rule {rule.id}: {exc.reason}", exc.money)
    except _Skip as exc:
        return Posting(skipped=True, note=f"rule {rule.id}: {exc}")
    drafts = [d for d in drafts if any(leg.amount for leg in d.legs)]
    if not drafts:
        return Posting(skipped=True, note=f"rule {rule.id}: nothing to post (zero amount)")
    entries: list[JournalEntryEvent] = []
    for part, draft in enumerate(drafts):
        try:
            entries.append(_entry(draft, part, rule, rules, parsed))
        except _Refuse as exc:
            return refuse(f"rule {rule.id}: {exc.reason}", exc.money)
    return Posting(entries=entries)


@cache
def _event_classes() -> dict[str, type[BaseModel]]:
    from canonical.posting.model import POSTING_EVENT_CLASSES
    from canonical.schemas import default_models

    return {**default_models(), **POSTING_EVENT_CLASSES}


def _money_of(data: Any) -> Decimal:
    """The money an event carries, for a refusal: its first amount field, as an absolute value."""
    if not isinstance(data, Mapping):
        return _ZERO
    for key in ("net_amount", "amount", "paid", "extended_cost", "total", "charge"):
        value = data.get(key)
        if value is not None:
            try:
                return abs(Decimal(str(value)))
            except ArithmeticError:
                return _ZERO
    return _ZERO


def _entry(draft: _Draft, part: int, rule: Rule, rules: Rules, event: Any) -> JournalEntryEvent:
    money = sum((leg.amount for leg in draft.legs if leg.amount > 0), _ZERO)
    debits = money
    credits = sum((-leg.amount for leg in draft.legs if leg.amount < 0), _ZERO)
    if debits != credits:
        raise _Refuse(f"unbalanced entry: debits {debits} != credits {credits}", max(debits, credits))
    period = rules.period_of(draft.posting_date)
    if period is None:
        raise _Refuse(f"unmapped date: {draft.posting_date.isoformat()} is not in table fiscal_calendar", money)
    lines = [
        {
            "line": n,
            "account": leg.account,
            "debit": leg.amount if leg.amount > 0 else _ZERO,
            "credit": -leg.amount if leg.amount < 0 else _ZERO,
            "description": leg.description,
        }
        for n, leg in enumerate((leg for leg in draft.legs if leg.amount), 1)
    ]
    ident = entry_id(event.id, rule.id, rules.version, part)
    return JournalEntryEvent.model_validate(
        {
            "id": ident,
            "source": POSTING_SOURCE,
            "type": JOURNAL_ENTRY_CREATED.name,
            "subject": f"{event.subject}/je/{part}",
            "time": event.time,
            "data": {
                "entry_id": ident,
                "posting_date": draft.posting_date.isoformat(),
                "fiscal_period": period,
                "currency": rules.currency,
                "memo": draft.memo,
                "reversal": draft.reversal,
                "lines": lines,
                "total": debits,
                "source_event_ids": [event.id],
                "source_event_type": event.type,
                "rule_id": rule.id,
                "rule_version": rules.version,
                "facility": draft.legs[0].account.facility,
                "business_key": draft.business_key,
            },
            "ficusinterface": event.ficusinterface,
            "ficusfacility": event.ficusfacility,
            "ficusmode": event.ficusmode,
            "ficusraw": event.ficusraw,
            "ficuscorrelation": event.ficuscorrelation,
        }
    )


# --- resolving accounts ---------------------------------------------------------------------------


def _where(rules: Rules, facility: str | None, money: Decimal) -> _Where:
    source = (facility or "").strip()
    gl = rules.facility_aliases.get(source) or (source if source in rules.entities else None)
    gl = gl or rules.facility_aliases.get("*")
    if gl is None:
        raise _Refuse(f"unmapped facility: {source or '(none)'} is not in [entities] or [facility_aliases]", money)
    return _Where(rules.entities[gl], gl)


def _account(
    rules: Rules,
    natural: str,
    where: _Where,
    money: Decimal,
    *,
    department: str | None = None,
    cost_center: str | None = None,
    codes: tuple[tuple[str, str | None], ...] = (),
) -> AccountRef:
    """An account with the segments the chart says it takes (cost center, service line)."""
    acct = rules.accounts.get(natural)
    if acct is None:
        raise _Refuse(f"unmapped account: {natural} is not in table chart_of_accounts", money)
    cc: str | None = None
    if acct.takes_cost_center:
        cc = cost_center or rules.lookup("cost_centers", where.facility, department or "")
        if cc is None:
            raise _Refuse(f"unmapped cost center: {where.facility}/{department or '(none)'} is not in table "
                          f"cost_centers (account {natural})", money)
    sl: str | None = None
    if acct.takes_service_line:
        for code_type, code in codes:
            if code:
                sl = rules.tables.get("service_lines", {}).get((code_type, code))
                if sl is not None:
                    break
        sl = sl or rules.lookup("service_lines", "*", "*")
        if sl is None:
            keys = ", ".join(f"{t}/{c}" for t, c in codes if c) or "(no code)"
            raise _Refuse(f"unmapped service line: {keys} not in table service_lines (account {natural})", money)
    return AccountRef(entity=where.entity, facility=where.facility, natural_account=natural, cost_center=cc,
                      service_line=sl)


def _table_account(rules: Rules, table: str, key: tuple[str, ...], money: Decimal) -> str:
    found = rules.lookup(table, *key)
    if found is None:
        raise _Refuse(f"unmapped account: {'/'.join(k or '(none)' for k in key)} is not in table {table}", money)
    return found


def _payer_ar(rules: Rules, data: Any, money: Decimal) -> str:
    """Payer AR by the payer the enrichment put on every 835 event (id, then group), else the default.

    Only the remittance event carries the payer id itself; the claim and adjustment events carry it
    through ``erp_payer`` (the payers reference table), so without that table every 835 posts to
    the default row: the same payer AR account for all events of a remittance either way.
    """
    payer = getattr(data, "erp_payer", None)
    rows = rules.tables.get("payer_ar", {})
    if payer is not None:
        for key in (payer.payer_id, f"group:{payer.payer_group}"):
            if (key,) in rows:
                return rows[(key,)]
    found = rows.get(("*",))
    if found is None:
        who = payer.payer_id if payer is not None else "(no payer: configure the payers reference table)"
        raise _Refuse(f"unmapped account: payer {who} is not in table payer_ar and it has no * row", money)
    return found


def _name(rules: Rules, natural: str) -> str:
    acct = rules.accounts.get(natural)
    return acct.name if acct is not None else natural


def _day(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _event_day(event: Any, *candidates: str | None) -> date:
    for text in (*candidates, event.time):
        found = _day(text)
        if found is not None:
            return found
    raise _Refuse("no posting date: the event time is not an ISO 8601 date-time")


def _pair(rules: Rules, debit: AccountRef, credit: AccountRef, amount: Decimal) -> list[_Leg]:
    return [_Leg(debit, amount, _name(rules, debit.natural_account)),
            _Leg(credit, -amount, _name(rules, credit.natural_account))]


# --- what each kind posts -----------------------------------------------------------------------------


def _charge(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    amount: Decimal | None = data.net_amount
    if amount is None:
        raise _Refuse("the charge has no amount (FT1-11)")
    money = abs(amount)
    if data.currency and data.currency != rules.currency:
        # Booking it as the ledger's currency would be wrong by the exchange rate: finance decides.
        raise _Refuse(f"currency {data.currency} is not the rules' currency {rules.currency}", money)
    where = _where(rules, data.facility or event.ficusfacility, money)
    codes = (
        ("charge", data.charge_code.code if data.charge_code else None),
        ("charge", data.procedure_code.code if data.procedure_code else None),
        ("revenue", data.erp.revenue_code if data.erp else None),
    )

    def acct(natural: str) -> AccountRef:
        return _account(rules, natural, where, money, department=data.department, codes=codes)

    assert rule.debit is not None and rule.credit is not None  # load_rules checked
    day = _event_day(event, data.posting_date, data.service_date)
    return [_Draft(_pair(rules, acct(rule.debit), acct(rule.credit), amount), day, data.account_number)]


def _remittance(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    amount: Decimal = data.amount if data.credit_debit != "D" else -data.amount
    money = abs(amount)
    where = _where(rules, event.ficusfacility, money)
    cash = _table_account(rules, "bank_accounts", (data.payee_id or "", data.payment_method or ""), money)
    assert rule.credit is not None
    legs = _pair(rules, _account(rules, cash, where, money), _account(rules, rule.credit, where, money), amount)
    return [_Draft(legs, _event_day(event), data.trace_number)]


def _claim_payment(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    amount: Decimal = data.paid
    money = abs(amount)
    where = _where(rules, event.ficusfacility, money)
    assert rule.debit is not None
    ar = _payer_ar(rules, data, money)
    legs = _pair(rules, _account(rules, rule.debit, where, money), _account(rules, ar, where, money), amount)
    return [_Draft(legs, _event_day(event), data.patient_control_number, reversal=data.reversal)]


def _claim_adjustment(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    amount: Decimal = data.amount
    money = abs(amount)
    where = _where(rules, event.ficusfacility, money)
    natural = _table_account(rules, "cas_adjustments", (data.group_code, data.reason_code), money)
    ar = _payer_ar(rules, data, money)
    debit, credit = _account(rules, natural, where, money), _account(rules, ar, where, money)
    legs = [_Leg(debit, amount, f"{_name(rules, natural)} (CAS {data.group_code}-{data.reason_code})"),
            _Leg(credit, -amount, _name(rules, ar))]
    return [_Draft(legs, _event_day(event), data.patient_control_number, reversal=data.reversal)]


def _denial(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    amount: Decimal = data.charge
    money = abs(amount)
    where = _where(rules, event.ficusfacility, money)
    assert rule.debit is not None and rule.credit is not None
    legs = _pair(rules, _account(rules, rule.debit, where, money), _account(rules, rule.credit, where, money),
                 amount)
    return [_Draft(legs, _event_day(event), data.patient_control_number, memo=rule.denials == "memo",
                   reversal=amount < 0)]


def _provider_adjustments(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    items = [i for i in data.adjustments if i.amount]
    money = sum((abs(i.amount) for i in items), _ZERO)
    where = _where(rules, event.ficusfacility, money)
    assert rule.clearing is not None
    legs: list[_Leg] = []
    for item in items:
        natural = _table_account(rules, "plb_reasons", (item.reason_code,), money)
        legs.append(_Leg(_account(rules, natural, where, money), item.amount,
                         f"{_name(rules, natural)} (PLB {item.reason_code})"))
    # The PLB's own total on the clearing side: an event whose items do not add up to it makes an
    # unbalanced entry, refused, rather than a balanced one that hides the difference.
    legs.append(_Leg(_account(rules, rule.clearing, where, money), -data.total, _name(rules, rule.clearing)))
    return [_Draft(legs, _event_day(event), data.provider_id)]


def _supply_usage(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    amount: Decimal = data.extended_cost
    money = abs(amount)
    where = _where(rules, data.facility or event.ficusfacility, money)
    assert rule.debit is not None and rule.credit is not None

    def acct(natural: str) -> AccountRef:
        return _account(rules, natural, where, money, department=data.department)

    legs = _pair(rules, acct(rule.debit), acct(rule.credit), amount)
    return [_Draft(legs, _event_day(event, data.used_at), data.record_key)]


def _labor_time(rule: Rule, rules: Rules, data: Any, event: Any) -> list[_Draft]:
    amount: Decimal | None = data.amount
    if amount is None:
        raise _Skip("hours without an amount: no money to book (the payroll run books it)")
    money = abs(amount)
    where = _where(rules, data.facility or event.ficusfacility, money)
    assert rule.debit is not None and rule.credit is not None

    def acct(natural: str) -> AccountRef:
        return _account(rules, natural, where, money, department=data.department, cost_center=data.cost_center)

    legs = _pair(rules, acct(rule.debit), acct(rule.credit), amount)
    return [_Draft(legs, _event_day(event, data.work_date), data.record_key)]


_Handler = Callable[[Rule, Rules, Any, Any], list[_Draft]]
_HANDLERS: dict[str, _Handler] = {
    "charge": _charge,
    "remittance": _remittance,
    "claim_payment": _claim_payment,
    "claim_adjustments": _claim_adjustment,
    "denial": _denial,
    "provider_adjustments": _provider_adjustments,
    "supply_usage": _supply_usage,
    "labor_time": _labor_time,
}
