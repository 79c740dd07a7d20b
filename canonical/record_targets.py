"""What each record mapping target accepts and how a converted record becomes event data.

A target is a catalog of canonical field names (with the value types each may
be declared as), the fields a mapping must provide, and a builder from converted
values to ``(event type, data)``. :mod:`canonical.records` validates mappings
against the catalog and calls the builder; nothing here does parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from canonical import record_events as rev
from canonical import subjects
from canonical.events import CodedValue
from canonical.subjects import EventType

__all__ = ["CREDIT_TYPES", "TARGETS", "FieldType", "Target", "TargetName"]

FieldType = Literal["string", "decimal", "integer", "date", "datetime"]
TargetName = Literal["charges", "labor_time", "supply_usage", "purchase_orders"]

#: Transaction types that make a charge a credit (HL7 table 0017 CD credit, CR credit adjustment).
CREDIT_TYPES = frozenset({"CD", "CR"})

# Allowed declared types per canonical field; the first is used when a mapping omits ``type``.
_TEXT: tuple[FieldType, ...] = ("string",)
_NUMBER: tuple[FieldType, ...] = ("decimal",)
_INT: tuple[FieldType, ...] = ("integer",)
_DATE: tuple[FieldType, ...] = ("date",)
_WHEN: tuple[FieldType, ...] = ("date", "datetime")
_INSTANT: tuple[FieldType, ...] = ("datetime",)

Values = Mapping[str, Any]
#: (converted values with dates as ISO strings, record key, "<unit>:<index>") -> (type, data).
Builder = Callable[[Values, str, str], tuple[EventType, dict[str, Any]]]


@dataclass(frozen=True)
class Target:
    """One mapping target: its field catalog, what must be mapped, its builder."""

    fields: Mapping[str, tuple[FieldType, ...]]
    required: frozenset[str]
    #: Groups of which at least one field must be mapped (e.g. account or encounter number).
    one_of: tuple[frozenset[str], ...]
    #: The money held up when a record fails (dead-letter context).
    amount_field: str
    build: Builder


def _product(value: Any, a: Any, b: Any) -> Decimal | None:
    """``value`` as sent, else ``a * b`` when both are known (exact, not rounded)."""
    if value is not None:
        return Decimal(value)
    if a is None or b is None:
        return None
    return Decimal(a) * Decimal(b)


def _negative(value: Any) -> bool:
    if value is None:
        return False
    return (value if value.__class__ is Decimal else Decimal(value)) < 0


@lru_cache(maxsize=4096)
def _code(code: str) -> CodedValue:
    # Validated once per distinct code and shared (frozen): an export repeats a few codes,
    # and the event's validator takes a model instance as it is.
    return CodedValue(code=code)


def _build_charge(v: Values, key: str, position: str) -> tuple[EventType, dict[str, Any]]:
    get = v.get
    sent_type = get("transaction_type")
    amount = get("amount")
    credited = _negative(amount) or _negative(get("quantity"))
    if sent_type is not None:
        credited = credited or sent_type.upper() in CREDIT_TYPES
    data: dict[str, Any] = {name: get(name) for name in _CHARGE_PLAIN}
    data["control_id"] = get("transaction_id") or position
    data["ft1_index"] = 1
    # A billing export often has no type column: the sign decides, as HL7 does.
    data["transaction_type"] = sent_type or ("CD" if credited else "CG")
    code = get("charge_code")
    data["charge_code"] = _code(code) if code else None
    code = get("procedure_code")
    data["procedure_code"] = _code(code) if code else None
    data["net_amount"] = None if amount is None else (-abs(amount) if credited else abs(amount))
    return (subjects.CHARGE_CREDITED if credited else subjects.CHARGE_POSTED), data


_CHARGE_PLAIN = (
    "transaction_id",
    "transaction_batch_id",
    "service_date",
    "posting_date",
    "quantity",
    "amount",
    "currency",
    "unit_amount",
    "department",
    "performing_provider_id",
    "ordering_provider_id",
    "account_number",
    "encounter_number",
    "patient_id",
    "facility",
)


def _plain(v: Values, names: Mapping[str, object]) -> dict[str, Any]:
    return {name: v.get(name) for name in names}


def _build_labor(v: Values, key: str, position: str) -> tuple[EventType, dict[str, Any]]:
    data = _plain(v, _LABOR)
    data.update(record_key=key, amount=_product(v.get("amount"), v.get("hours"), v.get("rate")))
    return rev.LABOR_TIME_RECORDED, data


def _build_supply(v: Values, key: str, position: str) -> tuple[EventType, dict[str, Any]]:
    data = _plain(v, _SUPPLY)
    data.update(record_key=key, extended_cost=_product(v.get("extended_cost"), v.get("quantity"), v.get("unit_cost")))
    return rev.SUPPLY_USAGE_RECORDED, data


def _build_po(v: Values, key: str, position: str) -> tuple[EventType, dict[str, Any]]:
    data = _plain(v, _PO)
    data.update(record_key=key, amount=_product(v.get("amount"), v.get("quantity"), v.get("unit_cost")))
    return rev.PURCHASE_ORDER_APPROVED, data


_CHARGES: dict[str, tuple[FieldType, ...]] = {
    "transaction_id": _TEXT,
    "transaction_batch_id": _TEXT,
    "transaction_type": _TEXT,
    "service_date": _WHEN,
    "posting_date": _WHEN,
    "charge_code": _TEXT,
    "procedure_code": _TEXT,
    "quantity": _NUMBER,
    "amount": _NUMBER,
    "currency": _TEXT,
    "unit_amount": _NUMBER,
    "department": _TEXT,
    "performing_provider_id": _TEXT,
    "ordering_provider_id": _TEXT,
    "account_number": _TEXT,
    "encounter_number": _TEXT,
    "patient_id": _TEXT,
    "facility": _TEXT,
}
_LABOR: dict[str, tuple[FieldType, ...]] = {
    "employee_id": _TEXT,
    "department": _TEXT,
    "cost_center": _TEXT,
    "work_date": _DATE,
    "hours": _NUMBER,
    "pay_code": _TEXT,
    "rate": _NUMBER,
    "amount": _NUMBER,
    "shift_start": _INSTANT,
    "shift_end": _INSTANT,
    "facility": _TEXT,
}
_SUPPLY: dict[str, tuple[FieldType, ...]] = {
    "item_id": _TEXT,
    "quantity": _NUMBER,
    "unit_of_measure": _TEXT,
    "unit_cost": _NUMBER,
    "extended_cost": _NUMBER,
    "department": _TEXT,
    "encounter_number": _TEXT,
    "patient_id": _TEXT,
    "facility": _TEXT,
    "used_at": _WHEN,
}
_PO: dict[str, tuple[FieldType, ...]] = {
    "po_number": _TEXT,
    "line_number": _INT,
    "vendor_id": _TEXT,
    "item_id": _TEXT,
    "quantity": _NUMBER,
    "unit_cost": _NUMBER,
    "amount": _NUMBER,
    "approved_at": _WHEN,
    "department": _TEXT,
    "facility": _TEXT,
}

#: Every mapping target by the name a config uses.
TARGETS: dict[str, Target] = {
    "charges": Target(
        _CHARGES,
        frozenset({"charge_code", "amount", "service_date"}),
        (frozenset({"account_number", "encounter_number"}),),
        "amount",
        _build_charge,
    ),
    "labor_time": Target(
        _LABOR, frozenset({"employee_id", "department", "work_date", "hours", "pay_code"}), (), "amount", _build_labor
    ),
    "supply_usage": Target(
        _SUPPLY,
        frozenset({"item_id", "quantity", "unit_of_measure", "unit_cost", "department", "used_at"}),
        (),
        "extended_cost",
        _build_supply,
    ),
    "purchase_orders": Target(
        _PO,
        frozenset({"po_number", "line_number", "vendor_id", "item_id", "quantity", "unit_cost", "approved_at"}),
        (),
        "amount",
        _build_po,
    ),
}
