"""Posting a file of events offline: what ``ficus post`` runs on the JSONL ``ficus translate`` writes.

Each input line is one CloudEvent (JSON); each entry goes out as its ``to_json()`` line, each
refusal as a JSON line with its reason and money at risk, in input order, so the same file and
rules give the same bytes (and the same entries as the live consumer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import BinaryIO

from canonical.posting.engine import Unposted, post
from canonical.posting.rules import Rules

__all__ = ["BatchSummary", "post_lines"]


@dataclass(slots=True)
class BatchSummary:
    """What a run posted; ``balanced`` when debits equal credits over every entry."""

    events: int = 0
    entries: int = 0
    skipped: int = 0
    refused: int = 0
    money_at_risk: Decimal = Decimal(0)
    debits: Decimal = Decimal(0)
    credits: Decimal = Decimal(0)
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.debits == self.credits

    def line(self, version: str) -> str:
        """The one-line summary ``ficus post`` prints."""
        sides = "=" if self.balanced else "!="
        return (f"{self.events} events, {self.entries} entries, {self.skipped} skipped, {self.refused} refused, "
                f"money at risk {self.money_at_risk}, debits {self.debits} {sides} credits {self.credits} "
                f"(rules {version})")


def post_lines(lines: Iterable[bytes], rules: Rules, out: BinaryIO, rejects: BinaryIO,
               *, source: str = "-") -> BatchSummary:
    """Post each JSON line; entries to ``out``, refusals to ``rejects``; blank lines are ignored."""
    summary = BatchSummary()
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        summary.events += 1
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        refused: Unposted | None
        if not isinstance(event, dict):
            refused = Unposted("not a JSON object (a canonical event per line expected)", Decimal(0), "", "", "", "")
        else:
            posting = post(event, rules)
            refused = posting.refused
            if posting.skipped:
                summary.skipped += 1
            for entry in posting.entries:
                out.write(entry.to_json() + b"\n")
                summary.entries += 1
                for ln in entry.data.lines:
                    summary.debits += ln.debit
                    summary.credits += ln.credit
        if refused is not None:
            summary.refused += 1
            summary.money_at_risk += refused.money_at_risk
            summary.by_reason[refused.reason] = summary.by_reason.get(refused.reason, 0) + 1
            rejects.write(json.dumps({"source": source, "line": number, **refused.to_dict()},
                                     separators=(",", ":")).encode() + b"\n")
    return summary
