"""What happens to one HL7 message received on an `hl7-mllp` interface, per route mode.

- legacy: archive the raw bytes, forward them to the legacy engine, hand its ACK back
  byte for byte. No positive ACK is invented when the legacy engine fails.
- shadow: as legacy; then, off the sender's path, translate and publish on `shadow.`
  subjects and record whether the two paths agree (parity).
- modern: archive, translate, publish on live subjects, and answer AA only after
  JetStream acknowledged everything. Anything not stored is answered negatively, so the
  sender keeps the message and sends it again.

A raw message is archived under an id derived from (interface, sender, MSH-10), so a
re-send is found by JetStream's duplicate window. When the window already holds that id,
the stored bytes are read back (the rare path) and compared: the same bytes (but for MSH-7,
which some engines stamp again on a retry) are a re-send (answered as before, its events
dedupe), other bytes are a *reused control id* -- a
different message whose events would vanish as duplicates. Those bytes are archived under a
content-hash id (kept), counted, dead-lettered ("control id reused with different content")
and never answered AA; in shadow the translation is dead-lettered instead. Detection holds
within the stream's duplicate window (`nats.duplicate_window_seconds`), which is also the
only span in which the events would have been dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

from canonical.errors import CanonicalError, NotHl7Error, TranslationError, UnsupportedMessageError
from canonical.hl7v2.ack import AckError, ack_code, build_ack, echoable
from canonical.hl7v2.dft import amount_at_risk
from canonical.hl7v2.reader import MshHeader, peek_header
from canonical.reference import ReferenceStore
from canonical.safe_text import bounded_id, safe_reason
from canonical.translate import translate_hl7
from legacy.mllp_sender import LegacyError, MllpSender
from router import names
from router.config import MllpInterfaceConfig, Mode
from router.offload import off_loop
from router.routes import RouteTable
from router.stage import Outcome, Record, ReplayChunk, Stage
from router.stats import InterfaceStats
from router.store import Store, StoredMsg, StoreError, StoreUnavailable
from router.tracing import span, traced_sync, traced_unit
from wrappers.mllp_listener import Peer

log = logging.getLogger("ficus.pipeline")

POSITIVE = frozenset({"AA", "CA"})
# HL7 table 0357 codes used in ERR segments.
ERR_UNSUPPORTED = "200"
ERR_INTERNAL = "207"
ERR_DATA = "102"
ERR_SEGMENT = "100"
ERR_DUPLICATE_KEY = "205"
REUSED_CONTROL_ID = "control id reused with different content"
# MSH-10 is ST(199) from HL7 v2.7 (20 before): a longer one is refused in modern mode,
# since its ACK would have to echo it whole (MSA-2) and its events would carry it.
MAX_CONTROL_ID = 199
REPLAY_CHUNK = 200
"""Raw messages per chunk a replay translates off the loop."""
TOO_LONG_CONTROL_ID = f"MSH-10 control id is longer than {MAX_CONTROL_ID} characters"


class Refused(CanonicalError):
    """A message modern mode refuses before translating it (see :func:`_refusal`)."""

    def __init__(self, reason: str, hl7_code: str) -> None:
        super().__init__(reason)
        self.hl7_code = hl7_code


class MllpPipeline:
    """The hl7-mllp input of the stage (router/stage.py): see the module docstring.

    Its own parts: the raw archive under the control id (re-sends and reused control ids),
    the legacy forward, and the answer (ACK) built from the committed outcome.
    """

    def __init__(
        self,
        cfg: MllpInterfaceConfig,
        store: Store,
        routes: RouteTable,
        legacy: MllpSender | None,
        stats: InterfaceStats,
        *,
        reference: ReferenceStore | None = None,
        shadow_concurrency: int = 256,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.legacy = legacy
        self.stats = stats
        self.stage = Stage(cfg.name, store, routes, stats, reference=reference, timezone=cfg.timezone)
        self._mapping = cfg.hl7_mapping  # a property of a frozen config, read per message otherwise
        self._shadow_slots = asyncio.Semaphore(shadow_concurrency)
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._ledger_tasks: set[asyncio.Task[bool]] = set()

    # -- the handler -------------------------------------------------------------------

    async def __call__(self, payload: bytes, peer: Peer) -> bytes | None:
        stats = self.stats
        stats.received += 1
        stats.in_flight += 1
        stats.last_message_at = time.time()
        started = time.perf_counter()
        try:
            try:
                header: MshHeader | None = peek_header(payload)
                reject: str | None = None
            except NotHl7Error as exc:
                header, reject = None, exc.reason
            facility = header.sending_facility if header is not None else None
            mode = self.stage.mode_for(facility)
            if mode == "modern":
                reply = await self._modern(payload, header, reject, peer)
            else:
                reply = await self._legacy(payload, header, peer, mode)
        finally:
            stats.in_flight -= 1
        stats.ack_latency.observe(time.perf_counter() - started)
        return reply

    async def on_oversize(self, peer: Peer, size: int) -> bytes | None:
        """A frame over max_message_bytes was discarded: reject it (it cannot be kept)."""
        reason = f"message of {size} bytes exceeds max_message_bytes {self.cfg.max_message_bytes}"
        self.stats.received += 1
        self.stats.error(reason)
        record = self._record(None, "", f"oversize-{peer.connection_id}-{size}", NotHl7Error(reason))
        await self._commit_quietly(record, "modern")
        return self._reply(None, "AR", reason, ERR_SEGMENT)

    async def on_malformed(self, peer: Peer, payload: bytes, reason: str) -> bytes | None:
        """A frame with a stray MLLP block byte inside (protocols/mllp.py): keep its
        bytes, dead-letter it, reject it (AR, CR in enhanced mode); never forwarded to the
        legacy engine, never AA, in every route mode -- it is not one whole message.

        Archived under its content hash, not its MSH-10, so the sender's corrected re-send
        is not taken for a reused control id. ``reason`` names a byte offset, no content.
        """
        self.stats.received += 1
        try:
            header: MshHeader | None = peek_header(payload)  # for MSA-2 and the letter's fields
        except NotHl7Error:
            header = None
        try:
            raw_ref, raw_id, _ = await self._archive(payload, None, peer)
        except StoreUnavailable as exc:
            return self._unavailable(header, exc)
        record = self._record(header, raw_ref, raw_id, Refused(f"malformed MLLP frame: {reason}", ERR_SEGMENT))
        return await self._answer(record, "modern")

    # -- modes -------------------------------------------------------------------------

    @traced_unit("receive", lambda self, payload, header, *_: _unit_of(self.name, header),
                 lambda reply: _ack_outcome(reply))
    async def _modern(
        self, payload: bytes, header: MshHeader | None, reject: str | None, peer: Peer
    ) -> bytes | None:
        received = datetime.now(UTC)
        try:
            raw_ref, raw_id, reused = await self._archive(payload, header, peer)
        except StoreUnavailable as exc:
            return self._unavailable(header, exc)
        record = self.translated(payload, header, reject, reused, raw_ref, raw_id, received)
        return await self._answer(record, "modern")

    @traced_sync("translate", lambda self, payload, header, _r, _u, _ref, raw_id, *_: {
        "interface": self.name, "unit": raw_id, "bytes": len(payload)})
    def translated(
        self, payload: bytes, header: MshHeader | None, reject: str | None, reused: bool, raw_ref: str,
        raw_id: str, received: datetime | None = None,
    ) -> Record:
        """The message as a record of the stage: its events, or why it has none (a refusal
        before translation: not HL7, a reused or over-long control id; or a translation error)."""
        if header is None:
            return self._record(None, raw_ref, raw_id, NotHl7Error(reject or "not an HL7 v2 message"))
        refusal = _refusal(header, reused)
        if refusal is not None:
            return self._record(header, raw_ref, raw_id, Refused(refusal, ERR_DUPLICATE_KEY if reused else ERR_DATA))
        ctx = self.stage.context(raw_ref, received=received)
        try:
            result = translate_hl7(payload, self._mapping, ctx, encoding=self.cfg.encoding,
                                   fallback=self.cfg.fallback_encoding, header=header)
            events = self.stage.enriched(result.events)
        except CanonicalError as exc:
            return self._record(header, raw_ref, raw_id, exc)
        record = self._record(header, raw_ref, raw_id, None)
        record.events = events
        return record

    def _record(self, header: MshHeader | None, raw_ref: str, raw_id: str, error: CanonicalError | None,
                ) -> Record:
        unit = (bounded_id(header.control_id) if header is not None else "") or "-"
        return Record(
            key=raw_id or f"{unit}|{error.reason if error else ''}", locator=unit, error=error,
            facility=header.sending_facility if header is not None else None, raw=raw_ref,
            sender=header.sender if header is not None else None, message_type=_message_type(header),
            tag=header,
        )

    async def _answer(self, record: Record, mode: Mode) -> bytes | None:
        """Commits a modern record and answers: AA/CA only once everything is stored."""
        header: MshHeader | None = record.tag
        record.mode = mode
        out = Outcome(resends=True)
        self.stage.add(out, record)
        try:
            with self.stats.commit_latency.timed():
                await self.stage.commit(out)
        except StoreUnavailable as exc:
            return self._unavailable(header, exc)
        error = record.error
        if error is None:
            assert header is not None
            return self._positive(header)
        if isinstance(error, TranslationError):
            assert header is not None
            if header.enhanced or self.cfg.on_untranslatable == "AA":
                # Commit ACK (or the interface's policy): the message is safely stored, in the DLQ.
                return self._positive(header)
            return self._reply(header, "AE", error.reason, error.hl7_code or ERR_DATA)
        err = error.hl7_code if isinstance(error, (Refused, UnsupportedMessageError, NotHl7Error)) else ERR_UNSUPPORTED
        return self._reply(header, "AR", error.reason, err)

    @traced_unit("receive", lambda self, payload, header, *_: _unit_of(self.name, header),
                 lambda reply: _ack_outcome(reply))
    async def _legacy(
        self, payload: bytes, header: MshHeader | None, peer: Peer, mode: Mode
    ) -> bytes | None:
        received = datetime.now(UTC)
        raw_ref, raw_id, reused = "", "", False
        try:
            raw_ref, raw_id, reused = await self._archive(payload, header, peer)
        except StoreUnavailable:
            # The legacy path must not gain a dependency on Ficus's store: forward anyway.
            self.stats.archive_errors += 1
        control_id = header.control_id if header is not None else ""
        if self.legacy is None:
            self.stats.error("no legacy destination configured")
            return self._reply(header, "AR", "no legacy destination configured", ERR_INTERNAL)
        try:
            # MSH-10 as sent: the engine echoes the field's bytes, escapes and all.
            with span("legacy forward", interface=self.name):
                reply = await self.legacy.send(payload, header.control_id_raw if header is not None else "")
        except LegacyError as exc:
            self.stats.legacy_errors += 1
            # For the alerts (router/alerts.py): the facility and money this refusal leaves unsent.
            self.stats.legacy_refused.append((time.time(), header.sending_facility if header is not None else None,
                                              amount_at_risk(payload)))
            self.stats.error(f"legacy destination: {exc.reason}")
            log.warning("%s: legacy delivery of %s failed: %s", self.name, bounded_id(control_id) or "-",
                        safe_reason(exc.reason))
            return self._reply(header, "AR", "legacy destination unavailable; resend later", ERR_INTERNAL,
                               transient=True)
        self.stats.legacy_forwarded += 1
        self.stats.legacy_ok_at = time.time()
        code = _reply_code(reply)
        if code in POSITIVE:
            self.stats.acked += 1
        else:
            self.stats.nacked += 1
        if mode == "shadow" and header is not None:
            await self._spawn_shadow(payload, header, raw_ref, raw_id or _content_id(self.name, payload),
                                     code in POSITIVE, received, reused)
        else:
            self._count_forwarded(payload, header, raw_id, mode)
        return reply

    # -- replay ------------------------------------------------------------------------

    async def replay_chunks(self, since: datetime) -> AsyncGenerator[ReplayChunk, None]:
        """The raw messages stored since ``since``, translated again (router/replay.py), in
        chunks translated off the loop. A copy kept for a reused control id stays refused: its
        events would carry the ids of the other message under that control id."""
        async with contextlib.aclosing(self.store.scan(names.STREAM_RAW, names.raw_subject(self.name), since)) as raw:
            pending: list[StoredMsg] = []
            async for msg in raw:
                pending.append(msg)
                if len(pending) >= REPLAY_CHUNK or msg.pending == 0:
                    yield await off_loop(self.replay_records, pending)
                    pending = []
            if pending:
                yield await off_loop(self.replay_records, pending)

    def replay_records(self, msgs: list[StoredMsg]) -> ReplayChunk:
        """Stored raw messages as records, translated with the mapping and tables of now."""
        records: list[Record] = []
        for msg in msgs:
            ref = names.raw_ref(names.STREAM_RAW, msg.seq)
            try:
                header: MshHeader | None = peek_header(msg.data)
                reject: str | None = None
            except NotHl7Error as exc:
                header, reject = None, exc.reason
            reused = bool(msg.headers.get(names.HDR_REUSED))
            if header is not None and header.control_id and not reused:
                raw_id = _digest(b"msh10", self.name, header.sender, header.control_id)
            else:
                raw_id = _content_id(self.name, msg.data)
            records.append(self.translated(msg.data, header, reject, reused, ref, raw_id))
        label = f"raw {msgs[0].seq}..{msgs[-1].seq}"
        return ReplayChunk(records, units=len(msgs), label=label, remaining=msgs[-1].pending)

    # -- shadow ------------------------------------------------------------------------

    async def _spawn_shadow(
        self, payload: bytes, header: MshHeader, raw_ref: str, raw_id: str, legacy_ok: bool,
        received: datetime, reused: bool,
    ) -> None:
        # Waiting for a slot pushes back on the sender only when shadow work piles up.
        await self._shadow_slots.acquire()
        self.stats.shadow_backlog += 1
        task = asyncio.create_task(self._shadow(payload, header, raw_ref, raw_id, legacy_ok, received, reused))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task[None]) -> None:
        self._shadow_tasks.discard(task)
        self._shadow_slots.release()
        self.stats.shadow_backlog -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: shadow translation crashed: %r", self.name, type(task.exception()).__name__)

    async def _shadow(
        self, payload: bytes, header: MshHeader, raw_ref: str, raw_id: str, legacy_ok: bool,
        received: datetime, reused: bool,
    ) -> None:
        record = self.translated(payload, header, None, reused, raw_ref, raw_id, received)
        record.mode, record.legacy_ok = "shadow", legacy_ok
        await self._commit_quietly(record, "shadow")

    async def _commit_quietly(self, record: Record, mode: Mode) -> bool:
        """Commits a record off the sender's path: NATS away is counted and logged, not raised."""
        record.mode = record.mode or mode
        out = Outcome(resends=True)
        self.stage.add(out, record)
        try:
            with self.stats.commit_latency.timed():
                await self.stage.commit(out)
        except StoreUnavailable as exc:
            self.stats.store_unavailable += 1
            self.stats.error(f"{mode} outcome not stored: {exc.reason}")
            return False
        return True

    async def drain(self, timeout: float = 10.0) -> None:
        """Waits for shadow work still running (at shutdown)."""
        if self._shadow_tasks:
            await asyncio.wait(set(self._shadow_tasks), timeout=timeout)
        if self._ledger_tasks:
            await asyncio.wait(set(self._ledger_tasks), timeout=timeout)

    def _count_forwarded(self, payload: bytes, header: MshHeader | None, raw_id: str, mode: Mode) -> None:
        """Counts a message forwarded untranslated, off the sender's path: the legacy path
        never waits for the store (a crash in these milliseconds loses the count)."""
        record = self._record(header, "", raw_id or _content_id(self.name, payload), None)
        record.mode = "legacy"
        task = asyncio.create_task(self._commit_quietly(record, mode))
        self._ledger_tasks.add(task)
        task.add_done_callback(self._ledger_tasks.discard)

    # -- storage -----------------------------------------------------------------------

    async def _archive(self, payload: bytes, header: MshHeader | None, peer: Peer) -> tuple[str, str, bool]:
        """Stores the raw unit; returns its reference, its dedupe id and whether it reuses a
        control id already stored with other bytes (see the module docstring)."""
        control_id = header.control_id if header is not None else ""
        # The interface is in the subject and the arrival time in JetStream's own metadata;
        # every header costs on the hot path, so only what is not derivable travels.
        headers = {names.HDR_PEER: f"{peer.host}:{peer.port}"}
        if peer.cert_subject:
            # Who sent it, as the verified client certificate names it (issue 13): the
            # sender's identity, bounded by protocols.tls.peer_subject, not message content.
            headers[names.HDR_PEER_CERT] = peer.cert_subject
        if header is not None and control_id:
            raw_id = _digest(b"msh10", self.name, header.sender, control_id)
            headers[names.HDR_CONTROL_ID] = bounded_id(control_id)
        else:
            raw_id = _content_id(self.name, payload)
        try:
            ref, ack = await self.stage.archive(payload, raw_id, headers)
            if ack.duplicate and control_id and not await self._stored_bytes_are(ack.stream, ack.seq, payload):
                raw_id = _content_id(self.name, payload)
                headers[names.HDR_REUSED] = "1"
                ref, ack = await self.stage.archive(payload, raw_id, headers)
                self.stats.reused_control_ids += 1
                log.warning("%s: control id %s reused with different content; raw kept as %s",
                            self.name, bounded_id(control_id), ref)
                return ref, raw_id, True
        except StoreUnavailable:
            self.stats.store_unavailable += 1
            raise
        return ref, raw_id, False

    async def _stored_bytes_are(self, stream: str, seq: int, payload: bytes) -> bool:
        """Whether raw message `seq` holds exactly `payload` (only after a duplicate PubAck)."""
        try:
            stored = await self.store.get_msg(stream, seq)
        except StoreError as exc:
            kind = type(exc.__cause__ or exc).__name__
            raise StoreUnavailable(f"stored raw message not readable: {kind}") from exc
        if stored is None:
            # Gone (retention) while its id is still in the window: keep these bytes too.
            return False
        return same_message(stored.data, payload)

    # -- answers -----------------------------------------------------------------------

    def _unavailable(self, header: MshHeader | None, exc: StoreUnavailable) -> bytes | None:
        self.stats.error(f"not stored: {exc.reason}")
        return self._reply(header, "AR", "message not stored; resend later", ERR_INTERNAL, transient=True)

    def _positive(self, header: MshHeader) -> bytes:
        self.stats.acked += 1
        return build_ack(_echoable(header), "CA" if header.enhanced else "AA")

    def _reply(
        self, header: MshHeader | None, code: str, text: str, err: str, *, transient: bool = False
    ) -> bytes | None:
        """A negative answer; in enhanced mode a commit ACK (CE transient, CR rejected)."""
        self.stats.nacked += 1
        if header is not None and header.enhanced:
            code = "CE" if transient else "CR"
        text = safe_reason(text)  # the one boundary for ERR and MSA-3 text: bounded, no controls
        return build_ack(_echoable(header), code, text=text, error=AckError(err, text))


def _unit_of(interface: str, header: MshHeader | None) -> tuple[str, str, dict[str, str]]:
    """A message as a unit (router/tracing.py): its bounded control id for log lines, as the
    text logs show it; for span attributes the hash its raw copy is stored under, not the id."""
    if header is None or not header.control_id:
        return interface, "-", {}
    return interface, bounded_id(header.control_id), {"unit": _digest(b"msh10", interface, header.sender,
                                                                       header.control_id)}


def _ack_outcome(reply: bytes | None) -> str:
    """A unit's outcome for its span and its log line: the ACK code it was answered with."""
    return (_reply_code(reply) or "no ACK") if reply is not None else "no ACK"


def _refusal(header: MshHeader, reused: bool) -> str | None:
    """Why modern mode refuses a message before translating it, or None."""
    if reused:
        # Its events would carry the ids of the first message's and vanish as duplicates.
        return REUSED_CONTROL_ID
    if _too_long(header):
        return TOO_LONG_CONTROL_ID
    return None


def _too_long(header: MshHeader) -> bool:
    # As sent (the field, components and escapes included) and decoded: either may be echoed.
    return len(header.control_id) > MAX_CONTROL_ID or len(header.control_id_raw) > MAX_CONTROL_ID


def _code_like(value: str) -> bool:
    return len(value) <= 8 and value.isascii() and value.isalnum()


def _message_type(header: MshHeader | None) -> str | None:
    """MSH-9 for a dead letter, when it has the shape of a code (else the sender's text: omitted)."""
    if header is None or not _code_like(header.message_type) or not (_code_like(header.trigger) or not header.trigger):
        return None
    return f"{header.message_type}^{header.trigger}"


def _echoable(header: MshHeader | None) -> MshHeader | None:
    """The header as Ficus's own ACK may echo it (canonical.hl7v2.ack.echoable)."""
    return echoable(header, MAX_CONTROL_ID)


def _digest(kind: bytes, *parts: str) -> str:
    key = b"\0".join([kind, *(p.encode("utf-8", "surrogatepass") for p in parts)])
    return hashlib.sha256(key).hexdigest()[:32]


def same_message(stored: bytes, received: bytes) -> bool:
    """Whether `received` is a re-send of `stored`: the same bytes, but for MSH-7.

    Some engines rebuild MSH on a retry and stamp a new MSH-7 (date/time of message); that
    is still the same message, not a reused control id. Any other byte that differs makes it
    another message.
    """
    if stored == received:
        return True
    head_a, sep_a, rest_a = _split_msh(stored)
    head_b, sep_b, rest_b = _split_msh(received)
    if rest_a != rest_b or sep_a != sep_b or head_a[:4] != head_b[:4] or len(head_a) < 4:
        return False
    fields_a, fields_b = head_a.split(head_a[3:4]), head_b.split(head_b[3:4])
    # MSH.split(separator): index 6 is MSH-7 (MSH-1, the separator itself, is consumed).
    return len(fields_a) == len(fields_b) and all(
        i == 6 or x == y for i, (x, y) in enumerate(zip(fields_a, fields_b, strict=True)))


def _split_msh(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """The MSH segment, its terminator and the rest of the message."""
    cut = min((i for i in (payload.find(b"\r"), payload.find(b"\n")) if i >= 0), default=len(payload))
    return payload[:cut], payload[cut:cut + 1], payload[cut + 1:]


def _content_id(interface: str, payload: bytes) -> str:
    """The dedupe id of raw bytes without a control id (or reusing one): their hash."""
    return hashlib.sha256(interface.encode() + b"\0" + payload).hexdigest()[:32]


def _reply_code(reply: bytes) -> str:
    try:
        return ack_code(reply)[0]
    except (ValueError, IndexError):
        return ""
