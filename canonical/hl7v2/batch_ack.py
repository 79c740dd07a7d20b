"""A batch acknowledgement file for an HL7 v2 file: FHS, BHS, one ACK per message, BTS, FTS.

The shape HL7 v2 chapter 2 gives a batch acknowledgement: the ACK file's FHS and BHS swap
the sending and receiving application and facility of the file's own FHS (else its BHS,
else the first message's MSH), name the file they answer in FHS-9 and reference its file
and batch control ids (FHS-11, BHS-11) in FHS-12 and BHS-12; each message gets the ACK the
MLLP path would give (:func:`canonical.hl7v2.ack.build_ack`: MSA-2 its MSH-10 as sent, an
ERR for a refusal); BTS-1 counts the ACKs, FTS-1 the batches.

The content is a function of its arguments only -- the caller passes the time and the
control ids -- so an ACK written again after a crash is byte for byte the one written
before (a delivery of the same bytes is a no-op).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from canonical.errors import NotHl7Error
from canonical.hl7v2.batch import Envelope
from canonical.hl7v2.escapes import DEFAULT_DELIMITERS, Delimiters, delimiters_for, escape
from canonical.hl7v2.reader import MshHeader

__all__ = ["build_batch_ack"]


def build_batch_ack(
    envelope: Envelope, first: MshHeader | None, acks: Sequence[bytes], *, file_name: str, now: datetime,
    control_id: str,
) -> bytes:
    """The ACK file's bytes: segments ended by CR, latin-1 (header values echo the bytes sent).

    ``first`` is the first message's header (the envelope's source when the file has neither
    FHS nor BHS); ``acks`` the messages' ACKs in file order; ``control_id`` the ACK file's
    own FHS-11 (BHS-11 is it with ``B`` appended).
    """
    fhs, d = _head(envelope.fhs, envelope.bhs, first)
    bhs, _ = _head(envelope.bhs, envelope.fhs, first)
    stamp = f"{now.year:04d}{now.month:02d}{now.day:02d}{now.hour:02d}{now.minute:02d}{now.second:02d}"
    name = escape(file_name, d)
    lines = [
        _segment("FHS", d, fhs, stamp, name, escape(control_id, d), fhs[7]),
        _segment("BHS", d, bhs, stamp, "", escape(control_id + "B", d), bhs[7]),
    ]
    body = b"".join(acks)
    tail = [d.field.join(("BTS", str(len(acks)))), d.field.join(("FTS", "1"))]
    return ("\r".join(lines) + "\r").encode("latin-1") + body + ("\r".join(tail) + "\r").encode("latin-1")


def _head(line: str | None, other: str | None, first: MshHeader | None) -> tuple[list[str], Delimiters]:
    """What the answer needs of the segment answered, and its delimiters: [encoding characters,
    fields 3, 4, 5, 6 (applications and facilities, as sent), "", "", field 11 (its control id)];
    from ``line``, else ``other`` (then without a control id to reference), else the first
    message's MSH, else nothing (the standard delimiters)."""
    for source in (line, other):
        if source is None:
            continue
        parts = source.split(source[3:4])
        try:
            d = delimiters_for(source[3:4], parts[1] if len(parts) > 1 else "")
        except NotHl7Error:  # a damaged envelope: the next source
            continue
        parts += [""] * (11 - len(parts))
        reference = parts[10] if source is line else ""
        return [d.encoding_chars, parts[2], parts[3], parts[4], parts[5], "", "", reference], d
    if first is not None:
        d = first.delimiters
        e = escape
        return [first.encoding_chars, e(first.sending_application, d), e(first.sending_facility, d),
                e(first.receiving_application, d), e(first.receiving_facility, d), "", "", ""], d
    d = DEFAULT_DELIMITERS
    return [d.encoding_chars, "", "", "", "", "", "", ""], d


def _segment(kind: str, d: Delimiters, head: list[str], stamp: str, name: str, control_id: str,
             reference: str) -> str:
    # FHS-3/4 (this side) are the answered segment's receiver, FHS-5/6 its sender.
    fields = [kind, head[0], head[3], head[4], head[1], head[2], stamp, "", name, "", control_id, reference]
    return d.field.join(fields)
