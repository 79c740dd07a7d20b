"""Helpers shared by the HL7 v2 mappings: typed reads that fail with a locator.

Every failure becomes a :class:`TranslationError` whose reason names the field
position and what is wrong, never the value (values may be patient data).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

from pydantic import BaseModel

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent, EventOrigin
from canonical.errors import TranslationError
from canonical.events import CodedValue, Location
from canonical.hl7v2.escapes import Delimiters
from canonical.hl7v2.reader import Hl7Message, MshHeader, Segment
from canonical.timestamps import hl7_to_instant, hl7_to_iso

__all__ = ["Fields", "Identifiers", "MapFn", "MessageReader", "parse_number", "shared_model"]

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


# Charge codes and locations repeat across messages: one frozen model per distinct value,
# which the event's validation accepts as it is instead of building a nested model each time.
_SHARED: dict[tuple[type[BaseModel], tuple[str | None, ...]], BaseModel] = {}
_SHARED_MAX = 50_000
_M = TypeVar("_M", CodedValue, Location)
_CODED: dict[tuple[str, Delimiters, str], CodedValue | None] = {}
_MISSING = object()


def _shared(model: type[_M], values: tuple[str | None, ...]) -> _M:
    key = (model, values)
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) >= _SHARED_MAX:  # a feed of endless distinct codes must not grow memory
            _SHARED.clear()
        found = _SHARED[key] = model.model_validate(dict(zip(model.model_fields, values, strict=False)))
    return found  # type: ignore[return-value]  # keyed by model, so the instance is a _M


def shared_model(model: type[_M], values: tuple[str | None, ...]) -> _M:
    """The one frozen CodedValue or Location for these parts (a site map's values too)."""
    return _shared(model, values)


class Identifiers:
    """The patient/visit identifiers a canonical event may carry."""

    __slots__ = ("account_number", "encounter_number", "patient_id")

    def __init__(self, patient_id: str | None, account: str | None, encounter: str | None):
        self.patient_id = patient_id
        self.account_number = account
        self.encounter_number = encounter


class MessageReader:
    """Typed, locator-aware reads over one message for one mapping run.

    Locators (``"FT1[2]-11"``) are built only when a read fails: this runs for
    every field of every message.
    """

    __slots__ = ("ctx", "facility", "header", "msg", "tz")

    def __init__(self, header: MshHeader, msg: Hl7Message, ctx: TranslationContext) -> None:
        self.header = header
        self.msg = msg
        self.ctx = ctx
        self.tz = ctx.timezone
        # The header was read as latin-1: exact for ASCII, otherwise re-read decoded.
        facility = header.sending_facility
        msh4 = _clean(facility) if facility.isascii() else self.text(msg.segment("MSH"), 4)
        self.facility = msh4 or self.text(msg.segment("PV1"), 3, component=4)

    @property
    def label(self) -> str:
        """``<type>^<trigger>`` for reasons."""
        return f"{self.header.message_type}^{self.header.trigger}"

    def text(self, seg: Segment | None, field: int, component: int = 1, sub: int = 1) -> str | None:
        """A leaf (first repetition) stripped of blanks; None when empty or ``""``."""
        if seg is None:
            return None
        if component == 1 and sub == 1:
            return seg.leaf(field)
        return _clean(seg.get(field, 1, component, sub))

    def number(self, seg: Segment, field: int, at: str, what: str) -> Decimal | None:
        """A Decimal for an NM (or CP/MO first part) field; None when empty."""
        return self.number_of(seg.leaf(field), field, at, what)

    def number_of(self, value: str | None, field: int, at: str, what: str) -> Decimal | None:
        """:meth:`number` for a leaf already read (``Segment.leaves``)."""
        if value is None:
            return None
        if _NUMBER.fullmatch(value) is None:
            raise self.fail(f"{at}-{field} {what} is not a decimal", f"{at}-{field}", "102")
        return Decimal(value)

    def timestamp(self, seg: Segment | None, field: int, at: str) -> str | None:
        """ISO 8601 for a TS/DTM field (first component), precision kept."""
        return self.timestamp_of(seg.leaf(field) if seg is not None else None, field, at)

    def timestamp_of(self, value: str | None, field: int, at: str) -> str | None:
        """:meth:`timestamp` for a leaf already read (``Segment.leaves``)."""
        if value is None:
            return None
        try:
            return hl7_to_iso(value, self.tz)
        except ValueError:
            raise self._bad_time(f"{at}-{field}") from None

    def event_time(self, value: str | None = None, locator: str = "") -> str:
        """Full ISO time of ``value`` if given, else MSH-7, else the receipt time."""
        if value is None:
            value, locator = _clean(self.header.timestamp), "MSH-7"
            if value is None:
                return self.ctx.received_iso
        try:
            return hl7_to_instant(value, self.tz)
        except ValueError:
            raise self._bad_time(locator) from None

    def coded(self, seg: Segment | None, field: int) -> CodedValue | None:
        """A CE/CWE field as a :class:`CodedValue`; None without a code."""
        if seg is None:
            return None
        # The same coded text recurs message after message: keyed by the field as sent
        # (and what decodes it), the split and clean-up run once per distinct value.
        key = (seg.field(field), self.msg.delimiters, self.msg.hex_codec)
        found = _CODED.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]  # only CodedValue | None is stored
        code, text, system = seg.components(field, 3)
        code = code.strip()
        value = None if not code or code == _HL7_NULL else _shared(CodedValue, (code, _clean(text), _clean(system)))
        if len(_CODED) >= _SHARED_MAX:
            _CODED.clear()
        _CODED[key] = value
        return value

    def location(self, seg: Segment | None, field: int) -> Location | None:
        """A PL field as a :class:`Location`; None when every part is empty."""
        if seg is None:
            return None
        parts = tuple(_clean(part) for part in seg.components(field, 4))
        if not any(parts):
            return None
        return _shared(Location, parts)

    def identifiers(self, pid: Segment, pv1: Segment | None) -> Identifiers:
        """PID-3 (first identifier), PID-18 and PV1-19; at least one must be present."""
        ids = Identifiers(pid.leaf(3), pid.leaf(18), pv1.leaf(19) if pv1 is not None else None)
        if not (ids.patient_id or ids.account_number or ids.encounter_number):
            reason = f"{self.label} has no patient id (PID-3), account (PID-18) or visit (PV1-19)"
            raise self.fail(reason, "PID-3", "101")
        return ids

    def require(self, name: str) -> Segment:
        """The first segment ``name``; TranslationError when the message has none."""
        seg = self.msg.segment(name)
        if seg is None:
            raise self.fail(f"{self.label} has no {name} segment", name, "100")
        return seg

    def origin(self, time: str) -> EventOrigin:
        """The envelope origin for events of this message."""
        h = self.header
        return EventOrigin(self.ctx, h.sender, h.control_id, self.facility or "", time)

    def fail(self, reason: str, locator: str | None, hl7_code: str = "207") -> TranslationError:
        """A TranslationError for this message (control id and facility filled in)."""
        return TranslationError(
            reason,
            control_id=self.header.control_id,
            locator=locator,
            facility=self.facility,
            hl7_code=hl7_code,
        )

    def _bad_time(self, locator: str) -> TranslationError:
        return self.fail(f"{locator} is not a valid HL7 timestamp", locator, "102")
