"""Canonical events from a parsed, balanced 835 transaction.

Events come out lazily, claim by claim, in a fixed order (remittance, then for
each claim: claim, denial, claim adjustments, then each line and its
adjustments, then PLBs), and ``position`` counts them: with the interchange,
group and transaction control numbers it makes each event id deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import sha256
from typing import Any

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent, source_for
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


class _Kind:
    """What every event of one type in one transaction shares: validator, type name, id key prefix."""

    __slots__ = ("key", "name", "validate")

    def __init__(self, etype: EventType, id_prefix: str) -> None:
        self.name = etype.name
        self.validate = ev.REMIT_EVENT_CLASSES[etype.name].__pydantic_validator__.validate_python
        # canonical.envelope.event_id's key up to the position, which is appended per event.
        self.key = f"{id_prefix}{etype.name}\x1f"


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
        prefix = f"{ctx.interface}\x1f{self._sender}\x1f{self._control}\x1f"
        self._remittance_kind = _Kind(ev.REMITTANCE_RECEIVED, prefix)
        self._claim_kind = _Kind(ev.CLAIM_ADJUDICATED, prefix)
        self._denial_kind = _Kind(ev.DENIAL_RECORDED, prefix)
        self._line_kind = _Kind(ev.SERVICE_LINE_ADJUDICATED, prefix)
        self._adjustment_kind = _Kind(ev.ADJUSTMENT_RECORDED, prefix)
        self._plb_kind = _Kind(ev.PROVIDER_ADJUSTMENT_RECORDED, prefix)
        self._position = 0

    def __iter__(self) -> Iterator[CloudEvent]:
        # The position counts events from the start of each iteration: ids repeat exactly.
        self._position = 0
        yield self._remittance()
        for claim in self._tx.claims:
            yield from self._claim(claim)
        for plb in self._tx.plbs:
            items = [{"reason_code": r, "reference": ref, "amount": a} for r, ref, a in plb.items]
            yield self._event(
                self._plb_kind,
                f"{self._control}/plb/{plb.index}",
                {
                    **self._common,
                    "plb_index": plb.index,
                    "provider_id": plb.provider_id,
                    "fiscal_period_date": plb.fiscal_period,
                    "adjustments": items,
                    "total": sum((i[2] for i in plb.items), start=0),
                },
            )

    def _event(self, kind: _Kind, subject: str, data: dict[str, Any]) -> CloudEvent:
        """Validate one event; ``subject`` is complete, ``data`` holds the payload including the common fields."""
        self._position = position = self._position + 1
        # Inlined canonical.envelope.event_id: same key, same digest (tests compare the two).
        key = f"{kind.key}{position}".encode("utf-8", "surrogatepass")
        event: CloudEvent = kind.validate(
            {**self._envelope, "data": data, "type": kind.name, "subject": subject, "id": sha256(key).hexdigest()[:32]}
        )
        return event

    def _remittance(self) -> CloudEvent:
        tx = self._tx
        bpr, trn, payer, payee = tx.bpr, tx.trn, tx.payer, tx.payee
        charge, paid, plb = transaction_totals(tx)
        qualifier = payee.get("qualifier")
        return self._event(
            self._remittance_kind,
            f"{self._control}/remittance",
            {
                **self._common,
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

    def _claim(self, claim: Claim) -> list[CloudEvent]:
        """The events of one claim, in order: claim, denial, claim CAS, then each line and its CAS."""
        clp = claim.elements
        size = len(clp)
        status = clp[2]
        ref = {
            **self._common,
            "claim_index": claim.index,
            "patient_control_number": clp[1],
            "payer_claim_control_number": clp[7] or None if size > 7 else None,
        }
        reversal = status == _REVERSAL
        denied = status == _DENIED
        subject = f"{self._control}/claim/{claim.index}"
        dates = claim.dates
        event = self._event
        events = [
            event(
                self._claim_kind,
                subject,
                {
                    **ref,
                    "header_number": claim.header_number,
                    "status_code": status,
                    "charge": claim.charge,
                    "paid": claim.paid,
                    "patient_responsibility": claim.patient_responsibility,
                    "filing_indicator": clp[6] or None if size > 6 else None,
                    "facility_type": clp[8] or None if size > 8 else None,
                    "frequency_code": clp[9] or None if size > 9 else None,
                    "reversal": reversal,
                    "denied": denied,
                    "statement_start": dates.get("232"),
                    "statement_end": dates.get("233"),
                    "received_date": dates.get("050"),
                    "remark_codes": claim.remarks,
                    "adjustment_total": claim_adjustment_total(claim),
                    "service_line_count": len(claim.lines),
                },
            )
        ]
        if denied:
            every = claim.adjustments + [a for line in claim.lines for a in line.adjustments]
            events.append(
                event(
                    self._denial_kind,
                    subject + "/denial",
                    {
                        **ref,
                        "charge": claim.charge,
                        "reason_codes": [f"{a.group}-{a.reason}" for a in every],
                        "remark_codes": claim.remarks,
                    },
                )
            )
        if claim.adjustments:
            self._adjustments(events, claim.adjustments, ref, None, claim.remarks, reversal, subject)
        for line in claim.lines:
            line_subject = f"{subject}/line/{line.index}"
            events.append(self._line(line, ref, reversal, line_subject))
            if line.adjustments:
                self._adjustments(events, line.adjustments, ref, line.index, line.remarks, reversal, line_subject)
        return events

    def _line(self, line: ServiceLine, ref: dict[str, Any], reversal: bool, subject: str) -> CloudEvent:
        proc = line.procedure
        dates = line.dates
        return self._event(
            self._line_kind,
            subject,
            {
                **ref,
                "line_index": line.index,
                "procedure": ":".join(proc),
                "procedure_qualifier": proc[0] or None,
                "procedure_code": proc[1] if len(proc) > 1 else None,
                "modifiers": [m for m in proc[2:6] if m],
                "charge": line.charge,
                "paid": line.paid,
                "revenue_code": line.revenue_code,
                "units": line.units,
                "service_date": dates.get("472"),
                "service_start": dates.get("150"),
                "service_end": dates.get("151"),
                "line_control_number": line.control_number,
                "remark_codes": line.remarks,
                "reversal": reversal,
            },
        )

    def _adjustments(
        self,
        events: list[CloudEvent],
        adjustments: list[Adjustment],
        ref: dict[str, Any],
        line: int | None,
        remarks: list[str],
        reversal: bool,
        subject: str,
    ) -> None:
        """Append one event per CAS triple to ``events``."""
        event, kind = self._event, self._adjustment_kind
        for n, adj in enumerate(adjustments, 1):
            events.append(
                event(
                    kind,
                    f"{subject}/cas/{n}",
                    {
                        **ref,
                        "line_index": line,
                        "group_code": adj.group,
                        "reason_code": adj.reason,
                        "amount": adj.amount,
                        "quantity": adj.quantity,
                        "remark_codes": remarks,
                        "reversal": reversal,
                    },
                )
            )
