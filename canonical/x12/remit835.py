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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent
from canonical.errors import TranslationError
from canonical.safe_text import bounded_id
from canonical.x12.balance import check_transaction
from canonical.x12.emit import TransactionEvents, facility_of
from canonical.x12.model import Envelope, ParseError, Transaction, TransactionBuilder
from canonical.x12.reader import X12Reader, X12SyntaxError, is_segment_id

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


def _ignore(elements: list[str], number: int) -> None:
    """The handler of a well-formed segment the events do not need (NM1, PER, AMT...)."""


_NO_RESULTS: list[TransactionResult] = []


class _Translator:
    """The state of one pass over a file: current envelope and open transaction.

    Body segments of a readable open transaction are dispatched by the caller
    straight to :attr:`route` (segment id -> handler); every other segment goes
    through :meth:`segment`, which may change :attr:`route`.
    """

    def __init__(self, ctx: TranslationContext, source_name: str, component: str) -> None:
        self.ctx = ctx
        self.source = source_name
        self.envelope = Envelope()
        self.builder = TransactionBuilder(component)
        self.tx: Transaction | None = None
        self.failure: ParseError | None = None
        # Broken segments of the open transaction: SE01 does not count them.
        self.skipped = 0
        self.transactions = 0
        # The builder's handlers plus the well-formed ids learnt to need none.
        self.routes: dict[str, Callable[[list[str], int], None]] = dict(self.builder.handlers)
        self.route: dict[str, Callable[[list[str], int], None]] = {}

    def fail(self, failure: ParseError) -> None:
        """The open transaction is unreadable: keep the first problem, stop building it."""
        if self.failure is None:
            self.failure = failure
        self.route = {}

    def error(self, reason: str, segment: int | None, tx: Transaction | None = None) -> TransactionResult:
        st = tx.st_control if tx is not None else None
        where = f"ST {bounded_id(st)} of {self.source}" if st is not None else self.source
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

    def close_open(self, sid: str | None, number: int) -> list[TransactionResult]:
        """A transaction still open where segment ``number`` starts another or the file ends: missing SE.

        ``sid`` is the id of that segment, None at the end of the file (``number`` is then the last segment's).
        """
        tx = self.tx
        if tx is None:
            return _NO_RESULTS
        self.tx, self.route = None, {}
        tx.segment_count = number - tx.first_segment - self.skipped + (sid is None)
        where = f"missing SE before {sid}" if sid is not None else "missing SE at end of file"
        if self.failure is not None:
            # The first problem is the more useful one ("not an 835", a bad number).
            return [self.error(f"{self.failure.reason} (segment {self.failure.segment}); {where}", None, tx)]
        return [self.error(where, number if sid is not None else None, tx)]

    def segment(self, elements: list[str], number: int) -> list[TransactionResult]:
        """Any segment that is not the body segment of a readable open transaction."""
        sid = elements[0]
        if not is_segment_id(sid):
            if self.tx is None:
                return [self.error("broken segment id", number)]
            self.fail(ParseError("broken segment id", number))
            self.skipped += 1
        elif sid == "ST":
            results = self.close_open(sid, number)
            self.start(elements, number)
            return results
        elif sid == "SE":
            return self.finish(elements, number)
        elif sid in _ENVELOPE_SEGMENTS:
            return self.close_open(sid, number) + self.envelope_segment(elements, number)
        elif self.tx is not None and self.failure is None:
            # Well-formed, and no handler (else it had been dispatched): skip it from now on.
            self.routes[sid] = _ignore
        return _NO_RESULTS

    def start(self, st: list[str], number: int) -> None:
        self.transactions += 1
        self.tx = self.builder.start(st, number, self.envelope)
        self.failure, self.skipped, self.route = None, 0, self.routes
        kind = st[1] if len(st) > 1 else ""
        if kind != "835":
            # ST01 is a three-digit code: named when it is one, else the sender's text stays out.
            named = kind if len(kind) == 3 and kind.isdigit() else ("is empty" if not kind else "is not a code")
            self.fail(ParseError(f"not an 835: ST01 {named}", number))

    def finish(self, se: list[str], number: int) -> list[TransactionResult]:
        tx, failure = self.tx, self.failure
        if tx is None:
            return [self.error("SE without ST", number)]
        self.tx, self.route = None, {}
        tx.segment_count = number - tx.first_segment + 1 - self.skipped
        count, control = (se[1] if len(se) > 1 else ""), (se[2] if len(se) > 2 else "")
        if failure is not None:
            return [self.error(failure.reason, failure.segment, tx)]
        if control != tx.st_control:
            return [self.error(f"SE02 {control} != ST02", number, tx)]
        if count != str(tx.segment_count):
            return [self.error(f"SE01 {count} != {tx.segment_count} segments", number, tx)]
        if not tx.bpr:
            return [self.error("no BPR segment", number, tx)]
        if (reason := check_transaction(tx)) is not None:
            return [self.error(reason, None, tx)]
        return [TransactionResult(tx.st_control, events=TransactionEvents(tx, self.ctx), transaction=tx)]

    def envelope_segment(self, seg: list[str], number: int) -> list[TransactionResult]:
        env, sid = self.envelope, seg[0]
        seg = seg + [""] * (14 - len(seg)) if len(seg) < 14 else seg
        if sid == "ISA":
            self.envelope = Envelope(seg[13].strip(), None, seg[6].strip(), None)
        elif sid == "GS":
            self.envelope = Envelope(env.interchange_control, seg[6], env.sender, seg[8])
        elif sid == "IEA" and seg[2].strip() != (env.interchange_control or ""):
            # Transactions of this interchange were already yielded and stand on
            # their own; the mismatch is reported so operations see the envelope fault.
            return [self.error(f"IEA02 {seg[2].strip()} != ISA13 {env.interchange_control}", number)]
        return _NO_RESULTS


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
    number = 0
    try:
        for batch in reader.batches():
            if translator is None:
                assert reader.delimiters is not None
                translator = _Translator(ctx, source_name, reader.delimiters.component)
            route, sep = translator.route, reader.element_separator
            for text in batch:
                number += 1
                elements = text.split(sep)
                handler = route.get(elements[0])
                if handler is not None:
                    try:
                        handler(elements, number)
                    except ParseError as exc:
                        translator.fail(exc)
                        route = translator.route
                    continue
                results = translator.segment(elements, number)
                route = translator.route
                if results:
                    yield from results
    except X12SyntaxError as exc:
        yield TransactionResult(None, error=TranslationError(f"{source_name}: {exc}", control_id=""))
        return
    if translator is None:
        yield TransactionResult(None, error=TranslationError(f"{source_name}: empty file", control_id=""))
        return
    yield from translator.close_open(None, number)
    if translator.transactions == 0:
        yield translator.error("no ST transaction in file", None)
