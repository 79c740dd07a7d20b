"""The batch acknowledgement of an HL7 v2 file on a folder or sftp interface (``ack_file``).

Each message of the file gets the ACK the MLLP path would give it (router/mllp_pipeline.py):
AA when its events were published (or it had none to publish), AE with an ERR for a message
dead-lettered as untranslatable, AR for one refused (not HL7, a type the mapping does not
handle). Those ACKs are collected while the file's units are read -- every unit, those below
a resume point included, since a file resumed after a crash is read from its start -- and the
file's ACK (canonical/hl7v2/batch_ack.py) is made once the last chunk is committed.

The ACK is a function of the file alone: its time is the file's mtime and its control ids
come from the file's SHA-256 and each message's position, so an ACK written again after a
crash is the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from canonical.errors import TranslationError
from canonical.hl7v2.ack import AckError, build_ack, echoable
from canonical.hl7v2.batch import envelope_of
from canonical.hl7v2.batch_ack import build_batch_ack
from canonical.hl7v2.reader import MshHeader
from canonical.safe_text import safe_reason
from router.file_units import Unit

HEAD_BYTES = 64 * 1024
"""How much of a file is read for its FHS and BHS (they come before its first message)."""


@dataclass
class AckFile:
    """The ACKs of one file's messages, collected as its units are read."""

    sha256: str
    mtime: float
    acks: list[bytes] = field(default_factory=list)
    first: MshHeader | None = None

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.mtime, UTC)

    def collect(self, units: Iterator[Unit]) -> Iterator[Unit]:
        """The units, unchanged, each one's ACK kept on the way."""
        for unit in units:
            if self.first is None and unit.header is not None:
                self.first = unit.header
            self.acks.append(unit_ack(unit, f"{self.sha256[:8].upper()}{unit.index:012d}", self.time))
            yield unit

    def content(self, head: bytes, name: str) -> bytes:
        """The ACK file answering the file called ``name`` whose first bytes are ``head``."""
        return build_batch_ack(envelope_of(head), echoable(self.first), self.acks, file_name=name,
                               now=self.time, control_id=self.sha256[:19].upper())


def unit_ack(unit: Unit, control_id: str, now: datetime) -> bytes:
    """One message's ACK: AA, AE (untranslatable) or AR (refused), with an ERR for the last two."""
    header = echoable(unit.header)
    error = unit.error
    if error is None:
        return build_ack(header, "AA", now=now, ack_control_id=control_id)
    text = safe_reason(error.reason)
    code = "AE" if isinstance(error, TranslationError) else "AR"
    found = AckError(error.hl7_code, text, getattr(error, "locator", None))
    return build_ack(header, code, text=text, error=found, now=now, ack_control_id=control_id)
