"""X12 835 (005010X221A1, and 4010 files of the same shape) to canonical events.

:func:`translate_835` reads a byte stream once, in constant memory, and yields
one :class:`TransactionResult` per ST..SE: either its events or a
:class:`TranslationError` that dead-letters the whole transaction.

Balancing needs the totals of a transaction before anything of it may be
published, so each transaction is built into a compact :class:`Transaction`
(decimals and codes, no raw text) and checked at SE; its events are then built
lazily, claim by claim, from that record. Memory is bounded by the largest
transaction (about 1.5 KB per claim), never by the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent
from canonical.errors import TranslationError
from canonical.x12.balance import check_transaction
from canonical.x12.emit import TransactionEvents, facility_of
from canonical.x12.model import Envelope, ParseError, Transaction, TransactionBuilder
from canonical.x12.reader import Segment, X12Reader, X12SyntaxError, is_segment_id

__all__ = ["TransactionResult", "translate_835"]

_ENVELOPE_SEGMENTS = frozenset({"ISA", "GS", "GE", "IEA"})


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The outcome of one transaction (or of an unreadable stretch of the file).

    Exactly one of ``events`` (re-iterable, built lazily) and ``error`` is set.
    ``st_control`` is ST02, None when the problem lies outside any transaction
    (no ST in the file, an envelope error). ``transaction`` is the parsed record
    when the transaction could be read (for totals), else None.
    """

    st_control: str | None
    events: Iterable[CloudEvent] | None = None
    error: TranslationError | None = None
    transaction: Transaction | None = None


class _Translator:
    """The state of one pass over a file: current envelope and open transaction."""

    def __init__(self, ctx: TranslationContext, source_name: str, component: str) -> None:
        self.ctx = ctx
        self.source = source_name
        self.component = component
        self.envelope = Envelope()
        self.builder: TransactionBuilder | None = None
        self.failure: ParseError | None = None
        self.transactions = 0

    def error(self, reason: str, segment: int | None, tx: Transaction | None = None) -> TransactionResult:
        st = tx.st_control if tx is not None else None
        where = f"ST {st} of {self.source}" if st is not None else self.source
        at = f" (segment {segment})" if segment is not None else ""
        return TransactionResult(
            st,
            error=TranslationError(
                f"{where}: {reason}{at}",
                control_id=st or "",
                locator=None if segment is None else f"segment {segment}",
                facility=facility_of(tx) or None if tx is not None else None,
                amount=tx.bpr_amount if tx is not None and tx.bpr else None,
            ),
            transaction=tx,
        )

    def close_open(self, seg: Segment | None) -> Iterator[TransactionResult]:
        """A transaction still open where another starts or the file ends: missing SE."""
        if self.builder is not None:
            tx = self.builder.transaction
            self.builder = None
            where = f"missing SE before {seg.id}" if seg is not None else "missing SE at end of file"
            if self.failure is not None:
                # The first problem is the more useful one ("not an 835", a bad number).
                yield self.error(f"{self.failure.reason} (segment {self.failure.segment}); {where}", None, tx)
            else:
                yield self.error(where, seg.number if seg is not None else None, tx)

    def segment(self, seg: Segment) -> Iterator[TransactionResult]:
        sid = seg.elements[0]
        if not is_segment_id(sid):
            failure = ParseError("broken segment id", seg.number)
            if self.builder is None:
                yield self.error(failure.reason, seg.number)
            elif self.failure is None:
                self.failure = failure
        elif sid == "ST":
            yield from self.close_open(seg)
            self.start(seg)
        elif sid == "SE":
            yield from self.finish(seg)
        elif sid in _ENVELOPE_SEGMENTS:
            yield from self.close_open(seg)
            yield from self.envelope_segment(seg)
        elif self.builder is not None and self.failure is None:
            try:
                self.builder.add(seg)
            except ParseError as exc:
                self.failure = exc
        elif self.builder is not None:
            self.builder.transaction.segment_count += 1

    def start(self, seg: Segment) -> None:
        self.transactions += 1
        self.builder = TransactionBuilder(seg, self.envelope, self.component)
        self.failure = None
        if seg.get(1) != "835":
            self.failure = ParseError(f"not an 835: ST01 {seg.get(1) or '(empty)'}", seg.number)

    def finish(self, se: Segment) -> Iterator[TransactionResult]:
        if self.builder is None:
            yield self.error("SE without ST", se.number)
            return
        tx, failure = self.builder.transaction, self.failure
        self.builder = None
        tx.segment_count += 1
        if failure is not None:
            yield self.error(failure.reason, failure.segment, tx)
        elif se.get(2) != tx.st_control:
            yield self.error(f"SE02 {se.get(2)} != ST02", se.number, tx)
        elif se.get(1) != str(tx.segment_count):
            yield self.error(f"SE01 {se.get(1)} != {tx.segment_count} segments", se.number, tx)
        elif not tx.bpr:
            yield self.error("no BPR segment", se.number, tx)
        elif (reason := check_transaction(tx)) is not None:
            yield self.error(reason, None, tx)
        else:
            yield TransactionResult(tx.st_control, events=TransactionEvents(tx, self.ctx), transaction=tx)

    def envelope_segment(self, seg: Segment) -> Iterator[TransactionResult]:
        env = self.envelope
        if seg.id == "ISA":
            self.envelope = Envelope(seg.get(13).strip(), None, seg.get(6).strip(), None)
        elif seg.id == "GS":
            self.envelope = Envelope(env.interchange_control, seg.get(6), env.sender, seg.get(8))
        elif seg.id == "IEA" and seg.get(2).strip() != (env.interchange_control or ""):
            # Transactions of this interchange were already yielded and stand on
            # their own; the mismatch is reported so operations see the envelope fault.
            yield self.error(f"IEA02 {seg.get(2).strip()} != ISA13 {env.interchange_control}", seg.number)


def translate_835(
    stream: BinaryIO | Iterable[bytes], ctx: TranslationContext, *, source_name: str
) -> Iterator[TransactionResult]:
    """Translate an 835 byte stream, one :class:`TransactionResult` per transaction.

    ``stream`` is a binary file object or an iterable of bytes chunks,
    ``source_name`` the file name used in error reasons. Every problem - not X12,
    no ST, a transaction set other than 835, broken segment ids, unreadable
    numbers or dates, a missing SE, wrong SE counts, out-of-balance figures, an
    IEA02 that differs from ISA13 - is a result with ``error`` set; the only
    exceptions are those raised by ``stream`` itself (``OSError``).
    """
    reader = X12Reader(stream)
    translator: _Translator | None = None
    try:
        for seg in reader:
            if translator is None:
                assert reader.delimiters is not None
                translator = _Translator(ctx, source_name, reader.delimiters.component)
            yield from translator.segment(seg)
    except X12SyntaxError as exc:
        yield TransactionResult(None, error=TranslationError(f"{source_name}: {exc}", control_id=""))
        return
    if translator is None:
        yield TransactionResult(None, error=TranslationError(f"{source_name}: empty file", control_id=""))
        return
    yield from translator.close_open(None)
    if translator.transactions == 0:
        yield translator.error("no ST transaction in file", None)
