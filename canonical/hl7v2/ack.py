"""HL7 v2 acknowledgements, built with plain string joins (this is the ACK path).

The ACK echoes the inbound delimiters, swaps sender and receiver, answers
``MSA-2`` with the inbound MSH-10 exactly as sent (escapes, components and spaces
included: senders correlate on the bytes they sent) and, when an error is given, adds
an ERR segment:
v2.5+ style (ERR-2 location, ERR-3 code from HL7 table 0357, ERR-4 severity,
ERR-8 user message) or, for older versions, ERR-1 (segment^sequence^field^code).

Bytes: header values were read as latin-1 (a byte-exact view of whatever was
sent), so the ACK is encoded as latin-1 and echoes them byte for byte; text given
by the caller is first encoded with the message's declared charset (MSH-18).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from canonical.errors import CanonicalError, NotHl7Error, TranslationError
from canonical.hl7v2.charsets import codec_for_charset, encode_codec
from canonical.hl7v2.escapes import DEFAULT_DELIMITERS, Delimiters, escape
from canonical.hl7v2.reader import MshHeader, Segment, peek_header
from canonical.safe_text import bounded_id

__all__ = [
    "ACK_CODES",
    "HL7_ERROR_CODES",
    "AckError",
    "ack_code",
    "ack_error_for",
    "build_ack",
    "echoable",
    "next_control_id",
]

#: HL7 table 0008: original mode (AA/AE/AR) and enhanced mode commit (CA/CE/CR).
ACK_CODES = frozenset(("AA", "AE", "AR", "CA", "CE", "CR"))

#: HL7 table 0357 (message error condition codes) with their standard texts.
HL7_ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# What a generic ACK (the input was not HL7 at all) claims for MSH-11/MSH-12.
_GENERIC_PROCESSING_ID = "P"
_GENERIC_VERSION = "2.5"
_LOCATOR = re.compile(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+))?")

# Fresh MSH-10 values: a random per-process prefix and a counter, 20 characters
# (the v2.5 length of MSH-10), unique across restarts and instances.
_ID_PREFIX = secrets.token_hex(4).upper()
_ID_COUNTER = itertools.count(1)


@dataclass(frozen=True, slots=True)
class AckError:
    """An error to report in ERR: table 0357 ``code``, a user ``text``, a ``locator``."""

    code: str
    text: str = ""
    locator: str | None = None  # "FT1[2]-11", as in TranslationError


def ack_error_for(exc: CanonicalError) -> AckError:
    """The ERR content for a translation error (its reason carries no patient data)."""
    locator = exc.locator if isinstance(exc, TranslationError) else None
    return AckError(exc.hl7_code, exc.reason, locator)


def next_control_id() -> str:
    """A fresh message control id for an outbound ACK."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012d}"


def build_ack(
    header: MshHeader | None,
    code: str,
    *,
    text: str = "",
    error: AckError | None = None,
    now: datetime | None = None,
    ack_control_id: str | None = None,
) -> bytes:
    """An unframed ACK for ``header`` (None: the input was not HL7, generic ACK).

    Segments are joined and terminated by CR. ``now`` defaults to the current UTC
    time; ``ack_control_id`` to :func:`next_control_id`.
    """
    if code not in ACK_CODES:
        raise ValueError(f"unknown acknowledgement code {code!r}")
    d = header.delimiters if header is not None else DEFAULT_DELIMITERS
    codec = encode_codec(header.charset) if header is not None else "ascii"
    control_id = ack_control_id or next_control_id()
    segments = [
        _msh(header, d, _stamp(now), _view(control_id, codec)),
        _msa(header, d, code, _view(text, codec)),
    ]
    if error is not None:
        version = header.version if header is not None else _GENERIC_VERSION
        segments.append(_err(error, d, version, codec))
    return ("\r".join(segments) + "\r").encode("latin-1")


#: MSH-10 is ST(199) from HL7 v2.7 (20 before): a longer one is echoed bounded.
MAX_CONTROL_ID = 199


def echoable(header: MshHeader | None, max_control_id: int = MAX_CONTROL_ID) -> MshHeader | None:
    """The header as Ficus's own ACK may echo it: an MSH-10 longer than ``max_control_id``
    bounded, an unknown MSH-18 and a trigger that is not a code left out (they would carry the
    sender's text)."""
    if header is None:
        return None
    charset, trigger = header.charset, header.trigger
    too_long = len(header.control_id) > max_control_id or len(header.control_id_raw) > max_control_id
    known_charset = not charset or codec_for_charset(charset) is not None
    if not too_long and known_charset and (not trigger or _code_like(trigger)):
        return header  # the usual header: nothing to do
    header = dataclasses.replace(
        header,
        charset=charset if codec_for_charset(charset) is not None else "",
        trigger=trigger if _code_like(trigger) else "",
    )
    if too_long:
        # No raw field: build_ack then echoes the bounded id, escaped.
        header = dataclasses.replace(header, control_id=bounded_id(header.control_id), control_id_raw="")
    return header


def _code_like(value: str) -> bool:
    return len(value) <= 8 and value.isascii() and value.isalnum()


def _msh(header: MshHeader | None, d: Delimiters, stamp: str, control_id: str) -> str:
    e = escape
    if header is None:
        fields = ["MSH", d.encoding_chars, "", "", "", "", stamp, "", "ACK", e(control_id, d)]
        return d.field.join([*fields, _GENERIC_PROCESSING_ID, _GENERIC_VERSION])
    head, middle, rest = _msh_parts(d, header.encoding_chars, header.receiving_application, header.receiving_facility,
                                    header.sending_application, header.sending_facility, header.trigger,
                                    header.processing_id, header.version, header.charset)
    return head + stamp + middle + e(control_id, d) + rest


@functools.lru_cache(maxsize=1024)
def _msh_parts(d: Delimiters, encoding_chars: str, receiving_application: str, receiving_facility: str,
               sending_application: str, sending_facility: str, trigger: str, processing_id: str, version: str,
               charset: str) -> tuple[str, str, str]:
    """The ACK's MSH but MSH-7 and MSH-10, which depend only on who sent what kind of message:
    escaped once per sender (a few per interface), not for every ACK."""
    e = escape
    head = d.field.join(["MSH", encoding_chars, e(receiving_application, d), e(receiving_facility, d),
                         e(sending_application, d), e(sending_facility, d), ""])
    middle = d.field.join(["", "", f"ACK{d.component}{e(trigger, d)}{d.component}ACK", ""])
    rest = [e(processing_id, d), e(version, d)]
    if charset:
        rest += ["", "", "", "", "", e(charset, d)]
    return head, middle, d.field + d.field.join(rest)


def _msa(header: MshHeader | None, d: Delimiters, code: str, text: str) -> str:
    if header is None:
        control_id = ""
    elif header.control_id_raw or not header.control_id:
        control_id = header.control_id_raw  # as sent: a field of the same message, safe to echo
    else:  # a header built without the raw field (not by the reader)
        control_id = escape(header.control_id, d)
    fields = ["MSA", code, control_id]
    if text:
        fields.append(escape(text, d))
    return d.field.join(fields)


def _err(error: AckError, d: Delimiters, version: str, codec: str) -> str:
    label = HL7_ERROR_CODES.get(error.code, "")
    text = escape(_view(error.text, codec), d)
    where = _location(error.locator)
    if _before_25(version):
        # ERR-1 (ELD): segment^sequence^field^code&text&HL70357
        code = d.subcomponent.join((error.code, label, "HL70357"))
        return d.field.join(("ERR", d.component.join((*where, code))))
    location = d.component.join(where) if error.locator else ""
    hl7_code = d.component.join((error.code, label, "HL70357"))
    return d.field.join(("ERR", "", location, hl7_code, "E", "", "", "", text))


def _location(locator: str | None) -> tuple[str, str, str]:
    match = _LOCATOR.fullmatch(locator or "")
    if match is None:
        return ("", "", "")
    segment, sequence, field = match.groups()
    return (segment, sequence or "1", field or "")


def _before_25(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) < (2, 5)
    except ValueError:
        return False


def _view(text: str, codec: str) -> str:
    """``text`` as the latin-1 view of its bytes in ``codec`` (see module docstring)."""
    if text.isascii():
        return text
    return text.encode(codec, "replace").decode("latin-1")


def _stamp(now: datetime | None) -> str:
    n = now if now is not None else datetime.now(UTC)
    return f"{n.year:04d}{n.month:02d}{n.day:02d}{n.hour:02d}{n.minute:02d}{n.second:02d}"


def ack_code(payload: bytes) -> tuple[str, str]:
    """MSA-1 (acknowledgement code) and MSA-2 (the acknowledged MSH-10) of an ACK.

    MLLP framing bytes around the payload are tolerated; NotHl7Error when the
    payload is not HL7 or has no MSA segment.
    """
    header = peek_header(payload.strip(b"\x0b\x1c\r\n"))
    d = header.delimiters
    text = payload.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r")
    for line in text.split("\r"):
        if line.startswith("MSA") and line[3:4] == d.field:
            msa = Segment(line, d)
            return msa.get(1), msa.get(2)
    raise NotHl7Error("acknowledgement has no MSA segment")
