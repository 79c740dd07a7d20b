"""The balancing rules of an 835 transaction, in Decimal.

1. Transaction: ``BPR02 == sum(CLP04) - sum(PLB amounts)`` (``-BPR02`` when BPR03
   is ``D``, a debit). A positive PLB amount is money the payer keeps (an
   overpayment recovery), a negative one money it adds (interest).
2. Claim: ``CLP03 - sum(CAS at claim and line level) == CLP04``.
3. Service line: ``SVC02 - sum(line CAS) == SVC03``.

When the lines' charges add up to the claim charge, rule 2 implies
``CLP04 == sum(SVC03) - claim-level CAS``; payers that send only some lines (or
lines whose charges do not add up) are still balanced by rules 2 and 3, so that
derived rule is not checked separately. Reversals (CLP02 22) balance with the
signs they carry, so a reversal and its correction net out.

Each check returns None when balanced, else a reason naming the figures that
disagree (identifiers and amounts only).
"""

from __future__ import annotations

from decimal import Decimal

from canonical.safe_text import bounded_id
from canonical.x12.model import Claim, Transaction

__all__ = ["check_claim", "check_transaction", "claim_adjustment_total", "transaction_totals"]


def claim_adjustment_total(claim: Claim) -> Decimal:
    """Sum of the CAS amounts of a claim and of all its lines."""
    total = sum([adj.amount for adj in claim.adjustments], Decimal(0))
    for line in claim.lines:
        total += sum([adj.amount for adj in line.adjustments], Decimal(0))
    return total


def transaction_totals(tx: Transaction) -> tuple[Decimal, Decimal, Decimal]:
    """(sum of CLP03, sum of CLP04, sum of PLB amounts)."""
    charge = sum([claim.charge for claim in tx.claims], Decimal(0))
    paid = sum([claim.paid for claim in tx.claims], Decimal(0))
    plb = sum((item[2] for plb in tx.plbs for item in plb.items), Decimal(0))
    return charge, paid, plb


def check_claim(claim: Claim) -> str | None:
    """Rules 2 and 3 for one claim; None when it balances."""
    where = f"claim {claim.index} (CLP01 {bounded_id(claim.elements[1])}, segment {claim.segment})"
    for line in claim.lines:
        line_cas = sum([adj.amount for adj in line.adjustments], Decimal(0))
        if line.charge - line_cas != line.paid:
            return (
                f"{where} line {line.index} (segment {line.segment}): "
                f"SVC02 {line.charge} - CAS {line_cas} != SVC03 {line.paid}"
            )
    cas = claim_adjustment_total(claim)
    if claim.charge - cas != claim.paid:
        return f"{where}: CLP03 {claim.charge} - CAS {cas} != CLP04 {claim.paid}"
    return None


def check_transaction(tx: Transaction) -> str | None:
    """Rules 1-3 for a whole transaction; the first disagreement, or None."""
    _, paid, plb = transaction_totals(tx)
    bpr = -tx.bpr_amount if tx.bpr[3:4] == ["D"] else tx.bpr_amount
    if bpr != paid - plb:
        return f"BPR02 {tx.bpr_amount} != sum(CLP04) {paid} - PLB {plb}"
    for claim in tx.claims:
        reason = check_claim(claim)
        if reason is not None:
            return reason
    return None
