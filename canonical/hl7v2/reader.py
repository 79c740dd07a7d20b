"""A fast, lazy HL7 v2 reader for the ACK path.

``peek_header`` reads only the MSH segment of the raw bytes, so a router can
decide (route, ACK, reject) before the rest of the message is decoded. ``Hl7Message``
splits the decoded text into segments once and splits a segment into fields only
when one of its fields is read. Plain ``str.split``/``str.find`` throughout: the
full ``hl7.parse`` tree costs ~0.8 ms for a 1.4 KB message, this costs a few µs.

Field numbering follows HL7: in MSH (and BHS/FHS) field 1 is the field separator
itself and field 2 the encoding characters, so ``get("MSH", 9)`` is MSH-9.
"""

from __future__ import annotations

from dataclasses import dataclass

from canonical.errors import NotHl7Error, TranslationError
from canonical.hl7v2.charsets import decode_candidates
from canonical.hl7v2.escapes import Delimiters, delimiters_for
from canonical.hl7v2.message import Hl7Message, Segment, first_leaf, nth

__all__ = [
    "Hl7Message",
    "MshHeader",
    "Segment",
    "decode_message",
    "decode_text",
    "header_from_segment",
    "peek_header",
]

BOM = b"\xef\xbb\xbf"
# Leading bytes tolerated before MSH: whitespace, line ends and the MLLP start byte.
_LEADING = b" \t\r\n\x0b\x0c"


@dataclass(frozen=True, slots=True)
class MshHeader:
    """What the router needs from MSH, read without decoding the whole message.

    Application and facility fields hold only their first component (HD namespace
    id); every value has its escapes decoded, except ``encoding_chars`` (MSH-2 as sent)
    and ``control_id_raw``.
    """

    field_sep: str
    encoding_chars: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    timestamp: str
    message_type: str
    trigger: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str
    application_ack_type: str
    charset: str
    control_id_raw: str = ""
    """MSH-10 exactly as sent: the latin-1 text of the field's bytes, escapes, components
    and spaces included. What an ACK's MSA-2 must echo and what a legacy engine echoes
    (``control_id`` is its decoded first component, for display and ids)."""

    @property
    def enhanced(self) -> bool:
        """True when the sender asked for enhanced-mode acknowledgements (MSH-15/16)."""
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def sender(self) -> str:
        """``"<MSH-3>^<MSH-4>"``, the sender key used for ids and correlation."""
        return f"{self.sending_application}^{self.sending_facility}"

    @property
    def delimiters(self) -> Delimiters:
        """The message's delimiters (validated when the header was read)."""
        return delimiters_for(self.field_sep, self.encoding_chars)


def peek_header(raw: bytes) -> MshHeader:
    """Read the MSH segment of a raw message; NotHl7Error when it is not HL7 v2.

    Tolerates a UTF-8 BOM, leading whitespace and MLLP start bytes, and CR, LF or
    CRLF segment terminators. MSH is decoded as latin-1, which never fails.
    """
    start = 3 if raw.startswith(BOM) else 0
    while start < len(raw) and raw[start] in _LEADING:
        start += 1
    if start >= len(raw):
        raise NotHl7Error("empty message")
    if raw[start : start + 3] != b"MSH":
        raise NotHl7Error("message does not start with an MSH segment")
    end = _segment_end(raw, start)
    return header_from_segment(raw[start:end].decode("latin-1"))


def _segment_end(raw: bytes, start: int) -> int:
    cr = raw.find(b"\r", start)
    lf = raw.find(b"\n", start)
    if cr < 0:
        return len(raw) if lf < 0 else lf
    return cr if lf < 0 or cr < lf else lf


def header_from_segment(msh: str) -> MshHeader:
    """Build an :class:`MshHeader` from the text of an MSH segment."""
    if len(msh) < 4:
        raise NotHl7Error("MSH-1 field separator is missing")
    fs = msh[3]
    fields = msh.split(fs)
    d = delimiters_for(fs, fields[1] if len(fields) > 1 else "")
    # MSH-n sits at fields[n - 1] (MSH-1 is the separator split() consumed); pad so
    # every field read below exists.
    if len(fields) < 18:
        fields += [""] * (18 - len(fields))
    tail = msh[4 + len(fields[1]) :]
    if d.repetition in tail or d.subcomponent in tail or d.escape in tail:
        message_type, trigger, structure = _message_type(fields[8], d)
        values = [first_leaf(fields[i], d) for i in _HEADER_FIELDS]
    else:  # the usual MSH: only components to cut, one C call per field
        comp = d.component
        message_type, trigger, structure, *_ = [*fields[8].split(comp, 3), "", ""]
        values = [fields[i].partition(comp)[0] for i in _HEADER_FIELDS]
    if not message_type:
        raise NotHl7Error("MSH-9 message type is missing")
    app, facility, r_app, r_facility, stamp, control, proc, version, accept, app_ack, cs = values
    return MshHeader(
        field_sep=fs,
        encoding_chars=fields[1],
        sending_application=app,
        sending_facility=facility,
        receiving_application=r_app,
        receiving_facility=r_facility,
        timestamp=stamp,
        message_type=message_type,
        trigger=trigger,
        structure=structure,
        control_id=control,
        processing_id=proc,
        version=version,
        accept_ack_type=accept,
        application_ack_type=app_ack,
        charset=cs,
        control_id_raw=fields[9],
    )


# Indexes into MSH.split(fs) of MSH-3, -4, -5, -6, -7, -10, -11, -12, -15, -16, -18.
_HEADER_FIELDS = (2, 3, 4, 5, 6, 9, 10, 11, 14, 15, 17)


def _message_type(value: str, d: Delimiters) -> tuple[str, str, str]:
    """MSH-9 components 1-3 (type, trigger, structure), first subcomponent each."""
    parts = [*nth(value, d.repetition, 1).split(d.component, 3)[:3], "", ""]
    return first_leaf(parts[0], d), first_leaf(parts[1], d), first_leaf(parts[2], d)


def decode_message(raw: bytes, header: MshHeader, default: str = "utf-8", fallback: str | None = "windows-1252") -> str:
    """Decode a whole message honouring MSH-18, then ``default``, then ``fallback``.

    Raises TranslationError (naming the charset, never the bytes) when none fits.
    """
    return decode_text(raw, header, default, fallback)[0]


def decode_text(
    raw: bytes, header: MshHeader, default: str = "utf-8", fallback: str | None = "windows-1252"
) -> tuple[str, str]:
    """Like :func:`decode_message`, also returning the codec that worked."""
    body = raw[3:] if raw.startswith(BOM) else raw
    for codec in decode_candidates(header.charset, default, fallback):
        try:
            return body.decode(codec), codec
        except (UnicodeDecodeError, LookupError):
            continue
    # MSH-18 as sent stays out of the reason (a sender controls it); the configured names may appear.
    declared = "the MSH-18 character set" if header.charset else f"default {default!r}"
    raise TranslationError(
        f"message text cannot be decoded with {declared} or fallback {fallback!r}",
        control_id=header.control_id,
        locator="MSH-18",
    )
