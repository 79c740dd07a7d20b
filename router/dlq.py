"""Dead letters: what could not be translated or delivered, with reason and business context.

A dead letter holds no payload: it points at the raw unit (`raw`), which stays in the raw
archive, and carries identifiers only (control id, sender, facility, amount). Its id in
the API is its sequence in the dead-letter stream. Every text field is bounded and escaped
here (canonical.safe_text), whatever the caller passed: this is where reasons leave Ficus.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, field_validator

from canonical.safe_text import bounded_id, safe_reason
from router import names
from router.store import Outgoing, Store

Kind = Literal["rejected", "untranslatable", "undeliverable"]
# A unit may be a file name and a line; senders, facilities and locators are short labels.
MAX_UNIT = 160
MAX_LABEL = 80


class DeadLetter(BaseModel):
    """One dead letter as stored (JSON) in `dlq.<interface>`."""

    interface: str
    kind: Kind
    reason: str
    mode: str
    unit: str
    raw: str | None = None
    message_type: str | None = None
    sender: str | None = None
    facility: str | None = None
    amount: str | None = None
    locator: str | None = None
    at: str = ""
    id: int | None = None

    @field_validator("reason")
    @classmethod
    def _bounded_reason(cls, value: str) -> str:
        return safe_reason(value)

    @field_validator("unit")
    @classmethod
    def _bounded_unit(cls, value: str) -> str:
        return bounded_id(value, MAX_UNIT)

    @field_validator("message_type", "sender", "facility", "locator")
    @classmethod
    def _bounded_ids(cls, value: str | None) -> str | None:
        return None if value is None else bounded_id(value, MAX_LABEL)

    def outgoing(self, raw_msg_id: str) -> Outgoing:
        """The message to store; one dead letter per raw unit, mode and reason."""
        key = f"{raw_msg_id}|{self.mode}|{self.kind}|{self.reason}"
        msg_id = "dlq-" + hashlib.sha256(key.encode()).hexdigest()[:32]
        body = self.model_dump(exclude={"id"}, exclude_none=True)
        return Outgoing(
            names.dlq_subject(self.interface),
            json.dumps(body).encode(),
            msg_id,
            {names.HDR_INTERFACE: self.interface, names.HDR_MODE: self.mode},
        )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


async def get(store: Store, seq: int) -> DeadLetter | None:
    """One dead letter by id, or None."""
    msg = await store.get_msg(names.STREAM_DLQ, seq)
    if msg is None or not msg.data:
        return None
    letter = DeadLetter.model_validate_json(msg.data)
    letter.id = seq
    return letter


async def list_letters(
    store: Store, interface: str | None = None, after: int = 0, limit: int = 100
) -> list[DeadLetter]:
    """Dead letters in stream order, optionally of one interface."""
    subject = names.dlq_subject(interface) if interface else names.SUBJECTS_DLQ
    return [DeadLetter.model_validate_json(data).model_copy(update={"id": seq})
            for seq, data, _ in await store.read(names.STREAM_DLQ, subject, after, limit)]


def summary(letter: DeadLetter) -> dict[str, Any]:
    """The API's view of a dead letter."""
    return letter.model_dump(exclude_none=True)
