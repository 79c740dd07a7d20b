"""Helpers shared by the HL7 v2 mappings: typed reads that fail with a locator.

Every failure becomes a :class:`TranslationError` whose reason names the field
position and what is wrong, never the value (values may be patient data).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent, EventOrigin
from canonical.errors import TranslationError
from canonical.hl7v2.reader import Hl7Message, MshHeader, Segment
from canonical.timestamps import hl7_to_datetime, hl7_to_iso

__all__ = ["Fields", "Identifiers", "MapFn", "MessageReader", "parse_number"]

#: Event data as field name -> value, validated by the event's pydantic model
#: (:mod:`canonical.events`) when the envelope is built.
Fields = dict[str, object]

#: A mapping: header + message + context -> canonical events.
MapFn = Callable[[MshHeader, Hl7Message, TranslationContext], list[CloudEvent]]

# HL7 NM: optional sign, digits, optional decimal point. Decimal() alone would also
# accept "NaN", "1e3" and "1_000", none of which a sender means as an amount.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# HL7 '""' means "explicitly no value" (delete the stored one): absent for us.
_HL7_NULL = '""'


def parse_number(value: str) -> Decimal | None:
    """A Decimal for a well-formed HL7 NM value, else None."""
    value = value.strip()
    return Decimal(value) if _NUMBER.fullmatch(value) else None


def _clean(value: str) -> str | None:
    value = value.strip()
    return value if value and value != _HL7_NULL else None


class Identifiers:
    """The patient/visit identifiers a canonical event may carry."""

    __slots__ = ("account_number", "encounter_number", "patient_id")

    def __init__(self, patient_id: str | None, account: str | None, encounter: str | None):
        self.patient_id = patient_id
        self.account_number = account
        self.encounter_number = encounter


class MessageReader:
    """Typed, locator-aware reads over one message for one mapping run."""

    __slots__ = ("ctx", "facility", "header", "label", "msg")

    def __init__(self, header: MshHeader, msg: Hl7Message, ctx: TranslationContext) -> None:
        self.header = header
        self.msg = msg
        self.ctx = ctx
        self.label = f"{header.message_type}^{header.trigger}"
        self.facility = self.text(msg.segment("MSH"), 4) or self.text(msg.segment("PV1"), 3, component=4)

    def text(
        self, seg: Segment | None, field: int, repetition: int = 1, component: int = 1, sub: int = 1
    ) -> str | None:
        """A leaf value stripped of surrounding blanks; None when empty or ``""``."""
        if seg is None:
            return None
        return _clean(seg.get(field, repetition, component, sub))

    def coded(self, seg: Segment | None, field: int) -> Fields | None:
        """A CE/CWE field as :class:`CodedValue` fields; None without a code."""
        if seg is None:
            return None
        code, text, system = seg.components(field, 3)
        code = code.strip()
        if not code or code == _HL7_NULL:
            return None
        return {"code": code, "text": _clean(text), "system": _clean(system)}

    def fail(self, reason: str, locator: str | None, hl7_code: str = "207") -> TranslationError:
        """A TranslationError for this message (control id and facility filled in)."""
        return TranslationError(
            reason,
            control_id=self.header.control_id,
            locator=locator,
            facility=self.facility,
            hl7_code=hl7_code,
        )

    def require(self, name: str) -> Segment:
        """The first segment ``name``; TranslationError when the message has none."""
        seg = self.msg.segment(name)
        if seg is None:
            raise self.fail(f"{self.label} has no {name} segment", name, "100")
        return seg

    def timestamp(self, seg: Segment | None, field: int, locator: str) -> str | None:
        """An ISO 8601 value for a TS/DTM field (first component), precision kept."""
        value = self.text(seg, field)
        if value is None:
            return None
        try:
            return hl7_to_iso(value, self.ctx.timezone)
        except ValueError:
            raise self.fail(f"{locator} is not a valid HL7 timestamp", locator, "102") from None

    def event_time(self, *candidates: tuple[str, int]) -> str:
        """Full ISO time of the first non-empty (segment, field), else receipt time."""
        for name, field in candidates:
            value = self.text(self.msg.segment(name), field)
            if value is not None:
                try:
                    return hl7_to_datetime(value, self.ctx.timezone).isoformat()
                except ValueError:
                    locator = f"{name}-{field}"
                    reason = f"{locator} is not a valid HL7 timestamp"
                    raise self.fail(reason, locator, "102") from None
        return self.ctx.received_iso

    def decimal(self, value: str, locator: str, what: str) -> Decimal | None:
        """A Decimal for an NM value; None when empty; TranslationError when malformed."""
        value = value.strip()
        if not value or value == _HL7_NULL:
            return None
        if _NUMBER.fullmatch(value) is None:
            raise self.fail(f"{locator} {what} is not a decimal", locator, "102")
        return Decimal(value)

    def location(self, seg: Segment | None, field: int) -> Fields | None:
        """A PL field as :class:`Location` fields; None when every part is empty."""
        if seg is None:
            return None
        parts = [_clean(part) for part in seg.components(field, 4)]
        if not any(parts):
            return None
        return dict(zip(("point_of_care", "room", "bed", "facility"), parts, strict=True))

    def identifiers(self, pid: Segment, pv1: Segment | None) -> Identifiers:
        """PID-3 (first identifier), PID-18 and PV1-19; at least one must be present."""
        ids = Identifiers(self.text(pid, 3), self.text(pid, 18), self.text(pv1, 19))
        if not (ids.patient_id or ids.account_number or ids.encounter_number):
            reason = f"{self.label} has no patient id (PID-3), account (PID-18) or visit (PV1-19)"
            raise self.fail(reason, "PID-3", "101")
        return ids

    def origin(self, time: str) -> EventOrigin:
        """The envelope origin for events of this message."""
        h = self.header
        return EventOrigin(self.ctx, h.sender, h.control_id, self.facility or "", time)
