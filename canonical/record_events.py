"""Canonical events of operational records: labor time, supply usage, purchase orders.

These come from flat files (timekeeping exports, materials files) and legacy
database jobs through :mod:`canonical.records`. Charges from billing exports are
not here: they reuse ``org.ficus.revenue.charge.*`` and :class:`ChargeData`, so
consumers see one charge stream whatever the source.

The payloads follow the rules of :mod:`canonical.events`: identifiers and codes
only (no names, no item descriptions or other free text), money as ``Decimal``
serialised as a string, dates and times as ISO 8601. The envelopes are
:class:`CloudEvent` subclasses kept here with :data:`RECORD_EVENT_CLASSES`, as
:mod:`canonical.x12.events` does, so the shared envelope union stays untouched.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from canonical.envelope import CloudEvent
from canonical.subjects import EventType

__all__ = [
    "LABOR_TIME_RECORDED",
    "PURCHASE_ORDER_APPROVED",
    "RECORD_EVENT_CLASSES",
    "RECORD_EVENT_TYPES",
    "SUPPLY_USAGE_RECORDED",
    "LaborTimeData",
    "LaborTimeEvent",
    "PurchaseOrderData",
    "PurchaseOrderEvent",
    "SupplyUsageData",
    "SupplyUsageEvent",
]

LABOR_TIME_RECORDED = EventType("workforce", "labor_time", "recorded", 1)
SUPPLY_USAGE_RECORDED = EventType("supply", "usage", "recorded", 1)
PURCHASE_ORDER_APPROVED = EventType("supply", "purchase_order", "approved", 1)

#: Every operational record event type, by CloudEvents ``type``.
RECORD_EVENT_TYPES: dict[str, EventType] = {
    t.name: t for t in (LABOR_TIME_RECORDED, SUPPLY_USAGE_RECORDED, PURCHASE_ORDER_APPROVED)
}

Money = Annotated[Decimal, Field(allow_inf_nan=False)]
Quantity = Annotated[Decimal, Field(allow_inf_nan=False)]
_CONFIG = ConfigDict(frozen=True, extra="forbid")


class _Record(BaseModel):
    """Fields every record payload carries: which source record it came from."""

    model_config = _CONFIG
    VERSION: ClassVar[int] = 1

    record_key: str = Field(description="the mapping's key fields joined by '|', else '<unit>:<index>'")
    facility: str | None = None


class LaborTimeData(_Record):
    """Hours one employee worked (or was paid for) on one day under one pay code."""

    employee_id: str = Field(description="employee identifier, never a name")
    department: str
    cost_center: str | None = None
    work_date: str = Field(description="ISO 8601 date")
    hours: Quantity = Field(description="as sent; negative for a correction")
    pay_code: str = Field(description="REG, OT, PTO, ... as the timekeeping system codes it")
    rate: Money | None = Field(None, description="hourly rate, when sent")
    amount: Money | None = Field(None, description="as sent, else hours * rate when the rate is sent")
    shift_start: str | None = Field(None, description="ISO 8601 with offset")
    shift_end: str | None = Field(None, description="ISO 8601 with offset")


class SupplyUsageData(_Record):
    """An item consumed by a department, possibly charged to an encounter (no descriptions)."""

    item_id: str = Field(description="item master code; descriptions are free text and never carried")
    quantity: Quantity = Field(description="as sent; negative for a return")
    unit_of_measure: str
    unit_cost: Money
    extended_cost: Money = Field(description="as sent, else quantity * unit_cost")
    department: str
    encounter_number: str | None = None
    patient_id: str | None = Field(None, description="identifier only")
    used_at: str = Field(description="ISO 8601 date, or date-time with offset")


class PurchaseOrderData(_Record):
    """One approved purchase order line."""

    po_number: str
    line_number: int = Field(ge=0)
    vendor_id: str
    item_id: str
    quantity: Quantity
    unit_cost: Money
    amount: Money = Field(description="as sent, else quantity * unit_cost")
    approved_at: str = Field(description="ISO 8601 date, or date-time with offset")
    department: str | None = None


# The envelopes narrow ``data`` to one payload model. The shared ``EventData``
# union does not list these models (its module is shared), so the override is not
# a subtype for mypy; pydantic validates it as declared.
class LaborTimeEvent(CloudEvent):
    """A CloudEvent carrying :class:`LaborTimeData`."""

    data: LaborTimeData  # type: ignore[assignment]


class SupplyUsageEvent(CloudEvent):
    """A CloudEvent carrying :class:`SupplyUsageData`."""

    data: SupplyUsageData  # type: ignore[assignment]


class PurchaseOrderEvent(CloudEvent):
    """A CloudEvent carrying :class:`PurchaseOrderData`."""

    data: PurchaseOrderData  # type: ignore[assignment]


#: Type name -> envelope class, merged by ``canonical.schemas.default_models``.
RECORD_EVENT_CLASSES: dict[str, type[CloudEvent]] = {
    LABOR_TIME_RECORDED.name: LaborTimeEvent,
    SUPPLY_USAGE_RECORDED.name: SupplyUsageEvent,
    PURCHASE_ORDER_APPROVED.name: PurchaseOrderEvent,
}
