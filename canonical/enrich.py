"""Enrichment: canonical events get their ERP coding from the reference tables.

Only configured tables are used: with no `charge_codes` table, charges carry no `erp`
block; with one, a charge code missing from it makes the whole unit unmapped
(UnmappedError, a TranslationError), so nothing half-coded reaches the ERP.
"""

from __future__ import annotations

from decimal import Decimal

from canonical.envelope import CloudEvent
from canonical.events import ChargeData, ChargeErp
from canonical.reference import ReferenceData
from canonical.x12.events import ErpPayer, RemittanceData
from canonical.x12.events import _Remit as RemitBase


def enrich(events: list[CloudEvent], ref: ReferenceData) -> list[CloudEvent]:
    """The events of one unit with ERP fields filled in; raises UnmappedError naming the first gap."""
    if not ref.tables:
        return events
    payer = _payer(events, ref)
    return [_enrich_one(event, ref, payer) for event in events]


def _payer(events: list[CloudEvent], ref: ReferenceData) -> ErpPayer | None:
    """The ERP payer of a remittance (one 835 transaction: every event shares it)."""
    if "payers" not in ref.tables:
        return None
    for event in events:
        if isinstance(event.data, RemittanceData):
            data = event.data
            found = ref.lookup_payer(data.payer_id or "", control_id=data.st_control,
                                     facility=event.ficusfacility or None, amount=data.amount)
            return ErpPayer(payer_id=found.payer_id, erp_customer_id=found.erp_customer_id,
                            payer_group=found.payer_group)
    return None


def _enrich_one(event: CloudEvent, ref: ReferenceData, payer: ErpPayer | None) -> CloudEvent:
    updates: dict[str, object] = {}
    facility = event.ficusfacility
    if "facilities" in ref.tables and facility:
        facility = ref.facility(facility, control_id=_control(event)).facility
        updates["ficusfacility"] = facility
    data = event.data
    if payer is not None and isinstance(data, RemitBase):
        updates["data"] = data.model_copy(update={"erp_payer": payer})
    elif isinstance(data, ChargeData):
        erp = _charge_erp(data, ref, facility)
        if erp is not None or facility != event.ficusfacility:
            updates["data"] = data.model_copy(update={"erp": erp, "facility": facility or data.facility})
    return event.model_copy(update=updates) if updates else event


def _charge_erp(data: ChargeData, ref: ReferenceData, facility: str | None) -> ChargeErp | None:
    if "charge_codes" not in ref.tables:
        return None
    amount: Decimal | None = data.amount
    code = (data.charge_code.code if data.charge_code else None) or (
        data.procedure_code.code if data.procedure_code else None) or ""
    charge = ref.lookup_charge(code, control_id=data.control_id, facility=facility, amount=amount)
    cost_center = charge.cost_center
    if "departments" in ref.tables and data.department:
        cost_center = ref.lookup_department(data.department, control_id=data.control_id, facility=facility,
                                            amount=amount).cost_center
    return ChargeErp(revenue_code=charge.revenue_code, gl_account=charge.gl_account, cost_center=cost_center,
                     service_line=charge.service_line)


def _control(event: CloudEvent) -> str:
    return str(getattr(event.data, "control_id", "") or "")
