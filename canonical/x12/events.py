"""Canonical events of an X12 835 remittance, and their envelopes.

The payload models follow the rules of :mod:`canonical.events`: identifiers and
codes only (no patient names), money as ``Decimal`` serialised as a string,
dates as ISO 8601 dates. The envelopes are :class:`CloudEvent` subclasses with
their own ``data`` type, kept in this module (with :data:`REMIT_EVENT_CLASSES`)
so the shared envelope union does not need to change; a later step merges the
registries for schema export.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from canonical.envelope import CloudEvent
from canonical.subjects import EventType

__all__ = [
    "ADJUSTMENT_RECORDED",
    "CLAIM_ADJUDICATED",
    "DENIAL_RECORDED",
    "PROVIDER_ADJUSTMENT_RECORDED",
    "REMITTANCE_RECEIVED",
    "REMIT_EVENT_CLASSES",
    "REMIT_EVENT_TYPES",
    "SERVICE_LINE_ADJUDICATED",
    "AdjustmentData",
    "AdjustmentEvent",
    "ClaimData",
    "ClaimEvent",
    "DenialData",
    "DenialEvent",
    "ProviderAdjustmentData",
    "ProviderAdjustmentEvent",
    "ProviderAdjustmentItem",
    "RemittanceData",
    "RemittanceEvent",
    "ServiceLineData",
    "ServiceLineEvent",
]

REMITTANCE_RECEIVED = EventType("claims", "remittance", "received", 1)
CLAIM_ADJUDICATED = EventType("claims", "claim", "adjudicated", 1)
SERVICE_LINE_ADJUDICATED = EventType("claims", "service_line", "adjudicated", 1)
ADJUSTMENT_RECORDED = EventType("claims", "adjustment", "recorded", 1)
DENIAL_RECORDED = EventType("claims", "denial", "recorded", 1)
PROVIDER_ADJUSTMENT_RECORDED = EventType("claims", "provider_adjustment", "recorded", 1)

#: Every 835 event type, by CloudEvents ``type``.
REMIT_EVENT_TYPES: dict[str, EventType] = {
    t.name: t
    for t in (
        REMITTANCE_RECEIVED,
        CLAIM_ADJUDICATED,
        SERVICE_LINE_ADJUDICATED,
        ADJUSTMENT_RECORDED,
        DENIAL_RECORDED,
        PROVIDER_ADJUSTMENT_RECORDED,
    )
}

Money = Annotated[Decimal, Field(allow_inf_nan=False)]
_CONFIG = ConfigDict(frozen=True, extra="forbid")


class ErpPayer(BaseModel):
    """The payer as the ERP knows it, from the payers reference table."""

    model_config = _CONFIG

    payer_id: str = Field(description="the 835's payer id that was looked up")
    erp_customer_id: str
    payer_group: str


class _Remit(BaseModel):
    """Fields every 835 payload carries: where in the interchange it comes from."""

    model_config = _CONFIG
    VERSION: ClassVar[int] = 1

    st_control: str = Field(description="ST02 of the transaction")
    interchange_control: str | None = Field(None, description="ISA13 (None when the file has no envelope)")
    group_control: str | None = Field(None, description="GS06")
    trace_number: str | None = Field(None, description="TRN02, check or EFT trace number")
    erp_payer: ErpPayer | None = Field(None, description="from the payers table, when configured")


class RemittanceData(_Remit):
    """One 835 transaction: the payment (BPR/TRN), its payer and payee."""

    handling_code: str = Field(description="BPR01 (C payment+advice, H advice only, I remittance...)")
    amount: Money = Field(description="BPR02, total actual provider payment")
    credit_debit: str = Field(description="BPR03, C credit or D debit")
    payment_method: str = Field(description="BPR04 (ACH, CHK, NON, BOP, FWT)")
    payment_date: str | None = Field(None, description="BPR16, ISO 8601")
    production_date: str | None = Field(None, description="DTM*405, ISO 8601")
    trace_originator: str | None = Field(None, description="TRN03")
    payer_id: str | None = Field(None, description="REF*2U, else N1*PR-04, else TRN03")
    payer_name: str | None = Field(None, description="N1*PR-02 (an organisation)")
    payee_id: str | None = Field(None, description="N1*PE-04")
    payee_id_qualifier: str | None = Field(None, description="N1*PE-03 (XX NPI, FI TIN...)")
    payee_name: str | None = Field(None, description="N1*PE-02 (an organisation)")
    payee_npi: str | None = None
    payee_tin: str | None = Field(None, description="N1*PE*FI or REF*TJ")
    claim_count: int = Field(ge=0)
    total_charge: Money = Field(description="sum of CLP03")
    total_paid: Money = Field(description="sum of CLP04")
    total_provider_adjustment: Money = Field(description="sum of PLB amounts (positive reduces payment)")


class ClaimData(_Remit):
    """One claim payment (loop 2100, CLP)."""

    claim_index: int = Field(ge=1, description="position of the CLP in its transaction")
    header_number: str | None = Field(None, description="LX01 of the enclosing 2000 loop")
    patient_control_number: str = Field(description="CLP01")
    status_code: str = Field(description="CLP02 (1 primary, 4 denied, 22 reversal...)")
    charge: Money = Field(description="CLP03")
    paid: Money = Field(description="CLP04")
    patient_responsibility: Money | None = Field(None, description="CLP05")
    filing_indicator: str | None = Field(None, description="CLP06")
    payer_claim_control_number: str | None = Field(None, description="CLP07")
    facility_type: str | None = Field(None, description="CLP08")
    frequency_code: str | None = Field(None, description="CLP09")
    reversal: bool = Field(description="CLP02 == 22; amounts keep the sign the file gives")
    denied: bool = Field(description="CLP02 == 4")
    statement_start: str | None = Field(None, description="DTM*232")
    statement_end: str | None = Field(None, description="DTM*233")
    received_date: str | None = Field(None, description="DTM*050")
    remark_codes: list[str] = Field(default_factory=list, description="RARCs from MIA / MOA")
    adjustment_total: Money = Field(description="sum of claim- and line-level CAS amounts")
    service_line_count: int = Field(ge=0)


class ServiceLineData(_Remit):
    """One service line payment (loop 2110, SVC)."""

    claim_index: int = Field(ge=1)
    line_index: int = Field(ge=1, description="position of the SVC in its claim")
    patient_control_number: str
    payer_claim_control_number: str | None = None
    procedure: str = Field(description="SVC01 as sent, components joined by ':'")
    procedure_qualifier: str | None = Field(None, description="SVC01-1 (HC, NU, ...)")
    procedure_code: str | None = Field(None, description="SVC01-2")
    modifiers: list[str] = Field(default_factory=list, description="SVC01-3..6")
    charge: Money = Field(description="SVC02")
    paid: Money = Field(description="SVC03")
    revenue_code: str | None = Field(None, description="SVC04")
    units: Decimal | None = Field(None, description="SVC05 (units of service paid)")
    service_date: str | None = Field(None, description="DTM*472")
    service_start: str | None = Field(None, description="DTM*150")
    service_end: str | None = Field(None, description="DTM*151")
    line_control_number: str | None = Field(None, description="REF*6R")
    remark_codes: list[str] = Field(default_factory=list, description="RARCs from LQ*HE")
    reversal: bool


class AdjustmentData(_Remit):
    """One CAS adjustment (group, CARC, amount, quantity) of a claim or a service line."""

    claim_index: int = Field(ge=1)
    line_index: int | None = Field(None, description="None for a claim-level adjustment")
    patient_control_number: str
    payer_claim_control_number: str | None = None
    group_code: str = Field(description="CAS01: CO, PR, OA, PI, CR")
    reason_code: str = Field(description="CARC")
    amount: Money
    quantity: Decimal | None = None
    remark_codes: list[str] = Field(default_factory=list, description="RARCs of the line (LQ*HE) or claim (MIA/MOA)")
    reversal: bool


class DenialData(_Remit):
    """A denied claim (CLP02 == 4), in addition to its claim event."""

    claim_index: int = Field(ge=1)
    patient_control_number: str
    payer_claim_control_number: str | None = None
    charge: Money
    reason_codes: list[str] = Field(description="'<group>-<CARC>' of every adjustment of the claim")
    remark_codes: list[str] = Field(default_factory=list)


class ProviderAdjustmentItem(BaseModel):
    """One reason / reference / amount triple of a PLB."""

    model_config = _CONFIG

    reason_code: str = Field(description="PLB03-1 (WO, L6, CS, FB...)")
    reference: str | None = Field(None, description="PLB03-2")
    amount: Money = Field(description="positive reduces the payment, negative increases it")


class ProviderAdjustmentData(_Remit):
    """One PLB segment: provider-level adjustments of a fiscal period."""

    plb_index: int = Field(ge=1)
    provider_id: str = Field(description="PLB01")
    fiscal_period_date: str | None = Field(None, description="PLB02, ISO 8601")
    adjustments: list[ProviderAdjustmentItem]
    total: Money


# The envelopes narrow ``data`` to one payload model. The shared ``EventData``
# union does not list these models (its module belongs to another change), so
# the override is not a subtype for mypy; pydantic validates it as declared.
class RemittanceEvent(CloudEvent):
    """A CloudEvent carrying :class:`RemittanceData`."""

    data: RemittanceData  # type: ignore[assignment]


class ClaimEvent(CloudEvent):
    """A CloudEvent carrying :class:`ClaimData`."""

    data: ClaimData  # type: ignore[assignment]


class ServiceLineEvent(CloudEvent):
    """A CloudEvent carrying :class:`ServiceLineData`."""

    data: ServiceLineData  # type: ignore[assignment]


class AdjustmentEvent(CloudEvent):
    """A CloudEvent carrying :class:`AdjustmentData`."""

    data: AdjustmentData  # type: ignore[assignment]


class DenialEvent(CloudEvent):
    """A CloudEvent carrying :class:`DenialData`."""

    data: DenialData  # type: ignore[assignment]


class ProviderAdjustmentEvent(CloudEvent):
    """A CloudEvent carrying :class:`ProviderAdjustmentData`."""

    data: ProviderAdjustmentData  # type: ignore[assignment]


#: Type name -> envelope class, to be merged into ``canonical.envelope.EVENT_CLASSES``.
REMIT_EVENT_CLASSES: dict[str, type[CloudEvent]] = {
    REMITTANCE_RECEIVED.name: RemittanceEvent,
    CLAIM_ADJUDICATED.name: ClaimEvent,
    SERVICE_LINE_ADJUDICATED.name: ServiceLineEvent,
    ADJUSTMENT_RECORDED.name: AdjustmentEvent,
    DENIAL_RECORDED.name: DenialEvent,
    PROVIDER_ADJUSTMENT_RECORDED.name: ProviderAdjustmentEvent,
}
