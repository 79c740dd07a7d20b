"""The error tree of the translation layer.

Every failure to turn an inbound unit into canonical events is one of three
kinds, and the router treats them differently:

* :class:`NotHl7Error` - the bytes are not an HL7 v2 message at all (reject, generic ACK);
* :class:`UnsupportedMessageError` - valid HL7, but the mapping does not handle
  this message type / trigger (reject or ignore, by policy);
* :class:`TranslationError` - parsed, but the content cannot be translated
  (dead-letter with the business context carried here).

A ``reason`` is written to logs, ACKs and the dead-letter queue, so it must never
contain patient data: it may name the message type, the control id, a segment or
field position, a code, and what is wrong with it - never a value such as a name,
a birth date, an address or free text.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

__all__ = [
    "CanonicalError",
    "NotHl7Error",
    "TranslationError",
    "UnsupportedMessageError",
]


class CanonicalError(Exception):
    """Root of the translation errors; ``reason`` is safe to log (no patient data)."""

    #: HL7 table 0357 error code an ACK should carry for this error.
    hl7_code: str = "207"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as made -- its class, ``args`` and attributes -- whatever its ``__init__`` takes
        (keyword-only arguments break the default): a file chunk's records in error go from the
        translator process to the pipeline's (router/file_child.py)."""
        return (_rebuilt, (type(self), self.args, self.__dict__))


class NotHl7Error(CanonicalError, ValueError):
    """The input is not an HL7 v2 message (empty, no MSH, unusable delimiters...)."""

    # 100 "segment sequence error": the unit does not start with a usable MSH.
    hl7_code = "100"


class UnsupportedMessageError(CanonicalError):
    """A valid HL7 message whose type or trigger the mapping does not handle."""

    def __init__(self, reason: str, *, message_type: str, trigger: str, hl7_code: str = "200"):
        super().__init__(reason)
        self.message_type = message_type
        self.trigger = trigger
        # 200 unsupported message type; 201 unsupported event code (known type).
        self.hl7_code = hl7_code


class TranslationError(CanonicalError, ValueError):
    """A parsed message that cannot be translated.

    ``locator`` points at the offending position (``"FT1[2]-11"``), ``facility`` and
    ``amount`` are the business context for the dead-letter queue: ``amount`` is the
    money held up by this message (gross total of the FT1 amounts that could be
    read), or None.
    """

    def __init__(
        self,
        reason: str,
        *,
        control_id: str,
        locator: str | None = None,
        facility: str | None = None,
        amount: Decimal | None = None,
        hl7_code: str = "207",
    ) -> None:
        super().__init__(reason)
        self.control_id = control_id
        self.locator = locator
        self.facility = facility
        self.amount = amount
        self.hl7_code = hl7_code

    def with_context(self, *, facility: str | None = None, amount: Decimal | None = None) -> TranslationError:
        """A copy with facility/amount filled in where this error has none."""
        return TranslationError(
            self.reason,
            control_id=self.control_id,
            locator=self.locator,
            facility=self.facility if self.facility is not None else facility,
            amount=self.amount if self.amount is not None else amount,
            hl7_code=self.hl7_code,
        )


def _rebuilt(cls: type[CanonicalError], args: tuple[Any, ...], state: dict[str, Any]) -> CanonicalError:
    """A CanonicalError unpickled (:meth:`CanonicalError.__reduce__`), its ``__init__`` not called."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc
