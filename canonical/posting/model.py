"""Journal entries: what finance books, made from canonical events by the posting rules.

An entry is a CloudEvent of type ``org.ficus.finance.journal_entry.created.v1`` on
``canonical.finance.journal_entry.created`` (``shadow.`` in shadow). Money is ``Decimal``
serialised as a string, as in every canonical event; an entry's lines balance (sum of debits
= sum of credits, per currency) or it is not made. The entry id is deterministic (source event
id + rule id + rule version: :func:`entry_id`), so posting the same event again with the same
rules gives the same id (the stream's duplicate window drops it) and offline and live posting
give byte-identical entries.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from canonical.envelope import CloudEvent
from canonical.subjects import EventType

__all__ = [
    "JOURNAL_ENTRY_CREATED",
    "POSTING_EVENT_CLASSES",
    "AccountRef",
    "JournalEntryData",
    "JournalEntryEvent",
    "JournalLine",
    "entry_id",
]

JOURNAL_ENTRY_CREATED = EventType("finance", "journal_entry", "created", 1)
Money = Annotated[Decimal, Field(allow_inf_nan=False)]


class AccountRef(BaseModel):
    """The segments of a GL account string: entity, facility, natural account, cost center, service line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entity: str = Field(description="legal entity (from the facility)")
    facility: str = Field(description="the facility the money belongs to")
    natural_account: str = Field(description="from the chart of accounts")
    cost_center: str | None = Field(None, description="department -> cost center, when the account takes one")
    service_line: str | None = Field(None, description="revenue or charge code -> service line")

    def key(self) -> str:
        """``entity-facility-account-costcenter-serviceline`` (empty segments kept), for reports."""
        return "-".join([self.entity, self.facility, self.natural_account, self.cost_center or "",
                         self.service_line or ""])


class JournalLine(BaseModel):
    """One line: an account and a debit or a credit (the other zero), never negative."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    line: int = Field(ge=1, description="position in the entry")
    account: AccountRef
    debit: Money = Field(ge=0)
    credit: Money = Field(ge=0)
    description: str = Field(description="what the line is (the rule's text: no patient data)")


class JournalEntryData(BaseModel):
    """A balanced journal entry and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: str = Field(description="deterministic: hash of source event id, rule id and rule version")
    posting_date: str = Field(description="ISO 8601 date the entry books on")
    fiscal_period: str = Field(description="from the calendar table, e.g. FY2027-P05")
    currency: str = Field(description="ISO 4217")
    memo: bool = Field(False, description="a memo entry (recorded, not booked), e.g. a denial by configuration")
    reversal: bool = Field(False, description="reverses earlier postings (an 835 reversal, CLP02 = 22)")
    lines: list[JournalLine] = Field(min_length=2)
    total: Money = Field(description="sum of the debits (= sum of the credits)")
    source_event_ids: list[str] = Field(min_length=1)
    source_event_type: str
    rule_id: str
    rule_version: str
    facility: str
    business_key: str | None = Field(None, description="claim, account or trace the entry belongs to")


class JournalEntryEvent(CloudEvent):
    """A CloudEvent whose ``data`` is :class:`JournalEntryData`."""

    data: JournalEntryData  # type: ignore[assignment]


#: Type name -> envelope class (merged into canonical.schemas.default_models for export).
POSTING_EVENT_CLASSES: dict[str, type[CloudEvent]] = {JOURNAL_ENTRY_CREATED.name: JournalEntryEvent}


def entry_id(source_event_id: str, rule_id: str, rule_version: str, part: int = 0) -> str:
    """The entry id: ``je-`` + 32 hex of SHA-256 over the source event id, rule id, rule version
    and the entry's position among those one event makes (an event may make several)."""
    digest = hashlib.sha256(f"{source_event_id}\x1f{rule_id}\x1f{rule_version}\x1f{part}".encode()).hexdigest()
    return f"je-{digest[:32]}"
