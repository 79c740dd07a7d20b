"""Canonical events from a parsed, balanced 835 transaction.

Events come out lazily, claim by claim, in a fixed order (remittance, then for
each claim: claim, denial, claim adjustments, then each line and its
adjustments, then PLBs), and ``position`` counts them: with the interchange,
group and transaction control numbers it makes each event id deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent, event_id, source_for
from canonical.subjects import EventType
from canonical.x12 import events as ev
from canonical.x12.balance import claim_adjustment_total, transaction_totals
from canonical.x12.model import Adjustment, Claim, ServiceLine, Transaction

__all__ = ["TransactionEvents", "facility_of"]

_REVERSAL = "22"
_DENIED = "4"


def facility_of(tx: Transaction) -> str:
    """The payee that receives this remittance: its NPI, else its id, else ``""``."""
    payee = tx.payee
    return payee.get("id", "") if payee.get("qualifier") == "XX" else payee.get("id") or payee.get("ref_TJ", "")


def _or_none(value: str) -> str | None:
    return value or None


class TransactionEvents:
    """The events of one transaction; iterate (again) to build them."""

    def __init__(self, tx: Transaction, ctx: TranslationContext) -> None:
        self._tx = tx
        self._ctx = ctx
        env = tx.envelope
        self._control = f"{env.interchange_control or ''}/{env.group_control or ''}/{tx.st_control}"
        self._sender = env.sender
        self._common: dict[str, Any] = {
            "st_control": tx.st_control,
            "interchange_control": env.interchange_control,
            "group_control": env.group_control,
            "trace_number": _or_none(tx.trn[2]) if len(tx.trn) > 2 else None,
        }
        self._envelope: dict[str, Any] = {
            "source": source_for(ctx.interface),
            "time": ctx.received_iso,
            "ficusinterface": ctx.interface,
            "ficusfacility": facility_of(tx),
            "ficusmode": ctx.mode,
            "ficusraw": ctx.raw_ref,
            "ficuscorrelation": f"{self._sender}:{self._control}",
        }
        self._position = 0

    def __iter__(self) -> Iterator[CloudEvent]:
        self._position = 0
        yield self._remittance()
        for claim in self._tx.claims:
            yield from self._claim(claim)
        for plb in self._tx.plbs:
            items = [{"reason_code": r, "reference": ref, "amount": a} for r, ref, a in plb.items]
            yield self._event(
                ev.PROVIDER_ADJUSTMENT_RECORDED,
                f"plb/{plb.index}",
                {
                    "plb_index": plb.index,
                    "provider_id": plb.provider_id,
                    "fiscal_period_date": plb.fiscal_period,
                    "adjustments": items,
                    "total": sum((i[2] for i in plb.items), start=0),
                },
            )

    def _event(self, etype: EventType, subject: str, data: dict[str, Any]) -> CloudEvent:
        self._position += 1
        data.update(self._common)
        fields = dict(
            self._envelope,
            data=data,
            type=etype.name,
            subject=f"{self._control}/{subject}",
            id=event_id(self._ctx.interface, self._sender, self._control, etype.name, self._position),
        )
        event: CloudEvent = ev.REMIT_EVENT_CLASSES[etype.name].__pydantic_validator__.validate_python(fields)
        return event

    def _remittance(self) -> CloudEvent:
        tx = self._tx
        bpr, trn, payer, payee = tx.bpr, tx.trn, tx.payer, tx.payee
        charge, paid, plb = transaction_totals(tx)
        qualifier = payee.get("qualifier")
        return self._event(
            ev.REMITTANCE_RECEIVED,
            "remittance",
            {
                "handling_code": bpr[1],
                "amount": tx.bpr_amount,
                "credit_debit": bpr[3] if len(bpr) > 3 else "C",
                "payment_method": bpr[4] if len(bpr) > 4 else "",
                "payment_date": tx.payment_date,
                "production_date": tx.production_date,
                "trace_originator": _or_none(trn[3]) if len(trn) > 3 else None,
                "payer_id": payer.get("ref_2U") or payer.get("id") or (trn[3] if len(trn) > 3 else None) or None,
                "payer_name": payer.get("name") or None,
                "payee_id": payee.get("id") or None,
                "payee_id_qualifier": qualifier or None,
                "payee_name": payee.get("name") or None,
                "payee_npi": payee.get("id") if qualifier == "XX" else None,
                "payee_tin": (payee.get("id") if qualifier == "FI" else None) or payee.get("ref_TJ"),
                "claim_count": len(tx.claims),
                "total_charge": charge,
                "total_paid": paid,
                "total_provider_adjustment": plb,
            },
        )

    def _claim(self, claim: Claim) -> Iterator[CloudEvent]:
        clp = claim.elements
        ref = {
            "claim_index": claim.index,
            "patient_control_number": clp[1],
            "payer_claim_control_number": _or_none(clp[7]) if len(clp) > 7 else None,
        }
        reversal = clp[2] == _REVERSAL
        subject = f"claim/{claim.index}"
        yield self._event(
            ev.CLAIM_ADJUDICATED,
            subject,
            dict(
                ref,
                header_number=claim.header_number,
                status_code=clp[2],
                charge=claim.charge,
                paid=claim.paid,
                patient_responsibility=claim.patient_responsibility,
                filing_indicator=_or_none(clp[6]) if len(clp) > 6 else None,
                facility_type=_or_none(clp[8]) if len(clp) > 8 else None,
                frequency_code=_or_none(clp[9]) if len(clp) > 9 else None,
                reversal=reversal,
                denied=clp[2] == _DENIED,
                statement_start=claim.dates.get("232"),
                statement_end=claim.dates.get("233"),
                received_date=claim.dates.get("050"),
                remark_codes=claim.remarks,
                adjustment_total=claim_adjustment_total(claim),
                service_line_count=len(claim.lines),
            ),
        )
        if clp[2] == _DENIED:
            every = claim.adjustments + [a for line in claim.lines for a in line.adjustments]
            yield self._event(
                ev.DENIAL_RECORDED,
                subject + "/denial",
                dict(
                    ref,
                    charge=claim.charge,
                    reason_codes=[f"{a.group}-{a.reason}" for a in every],
                    remark_codes=claim.remarks,
                ),
            )
        yield from self._adjustments(claim.adjustments, ref, None, claim.remarks, reversal, subject)
        for line in claim.lines:
            yield self._line(line, ref, reversal, f"{subject}/line/{line.index}")
            yield from self._adjustments(
                line.adjustments, ref, line.index, line.remarks, reversal, f"{subject}/line/{line.index}"
            )

    def _line(self, line: ServiceLine, ref: dict[str, Any], reversal: bool, subject: str) -> CloudEvent:
        proc = line.procedure
        return self._event(
            ev.SERVICE_LINE_ADJUDICATED,
            subject,
            dict(
                ref,
                line_index=line.index,
                procedure=":".join(proc),
                procedure_qualifier=proc[0] or None,
                procedure_code=proc[1] if len(proc) > 1 else None,
                modifiers=[m for m in proc[2:6] if m],
                charge=line.charge,
                paid=line.paid,
                revenue_code=line.revenue_code,
                units=line.units,
                service_date=line.dates.get("472"),
                service_start=line.dates.get("150"),
                service_end=line.dates.get("151"),
                line_control_number=line.control_number,
                remark_codes=line.remarks,
                reversal=reversal,
            ),
        )

    def _adjustments(
        self,
        adjustments: list[Adjustment],
        ref: dict[str, Any],
        line: int | None,
        remarks: list[str],
        reversal: bool,
        subject: str,
    ) -> Iterator[CloudEvent]:
        for n, adj in enumerate(adjustments, 1):
            yield self._event(
                ev.ADJUSTMENT_RECORDED,
                f"{subject}/cas/{n}",
                dict(
                    ref,
                    line_index=line,
                    group_code=adj.group,
                    reason_code=adj.reason,
                    amount=adj.amount,
                    quantity=adj.quantity,
                    remark_codes=remarks,
                    reversal=reversal,
                ),
            )
