"""The one processing stage every interface kind shares.

An interface kind is an *input* and a *delivery*, nothing more::

      input (the kind's own)                 the stage (shared)                   input again
    ┌────────────────────────┐   ┌─────────────────────────────────────────┐   ┌─────────────┐
    │ MLLP frame, file chunk,│   │ archive ─▶ translate ─▶ route ─▶ commit │   │ acknowledge │
    │ batch of rows          ├──▶│   raw      (off the     legacy/  events,├──▶│ ACK, resume │
    │ (+ legacy delivery)    │   │            loop when    shadow/  letters│   │ point, mark │
    └────────────────────────┘   │            big)         modern   parity,│   │ + checkpoint│
                                 │                    (+ facility) ledger  │   └─────────────┘
                                 └─────────────────────────────────────────┘

The input hands the stage a unit's translation as :class:`Record` objects (one per counted
unit: a message, a file record or 835 transaction, a row). The stage routes each record by
its facility (the interface's mode, or the facility's override: the canary), turns it into
what is stored -- its events on live or ``shadow.`` subjects, or a dead letter naming the
interface, the unit and the reason -- adds its ledger delta (router/ledger.py) and its
parity sample, and :meth:`Stage.commit` publishes the lot, ledger deltas last, in pieces
that share the NATS connection fairly. Only then does the input acknowledge: an MLLP ACK, a
file's resume point, a database mark and checkpoint. Replay (router/replay.py) runs the
same records through the same :class:`Outcome` with a replay token: events under new
Msg-Ids, counted as ``replayed`` in the ledger, nothing dead-lettered again.

What stays with each kind (router/mllp_pipeline.py, file_pipeline.py, odbc_pipeline.py):
how units arrive and are archived raw (an MLLP message under its control id, a file in the
object store, rows as JSON chunks), how a unit becomes records, how it is acknowledged, and
how the legacy path is delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from canonical.context import TranslationContext
from canonical.enrich import enrich
from canonical.envelope import CloudEvent
from canonical.errors import CanonicalError, TranslationError
from canonical.reference import ReferenceStore
from canonical.safe_text import safe_reason
from router import keyindex, ledger, names
from router.config import Mode
from router.dlq import DeadLetter, Kind, money, now_iso
from router.routes import Route, RouteTable
from router.stats import InterfaceStats
from router.store import INGEST, Objects, Outgoing, PubAck, Store, event_message, index_message
from router.tracing import current_traceparent, traced

log = logging.getLogger("ficus.stage")

PUBLISH_PIECE = 50
"""Messages per publish call: they share the NATS connection with every other interface,
whose messages wait behind those in flight (bench/ack_under_ingest.py: MLLP ACK p50 18 ms
behind pieces of 500 file events, 7 ms behind 100, 3-4 ms behind 50)."""
_MESSAGE_KINDS = 1024
"""(event type, mode) pairs whose subject and headers a stage remembers at most."""
LOGGED_LETTERS = 20
"""Dead letters logged one by one per commit; the rest are summed up in one line."""
_LETTER_LOG = {"stage": "publish", "outcome": "dead_lettered"}
"""What a JSON log line (router/logjson.py) says of a dead letter besides interface and unit."""


@dataclass
class Record:
    """One counted unit's translation: its events, or the error that kept it from having any.

    ``key`` identifies the unit for the ledger (stable across retries: a raw id, a file's content
    and record index, a table and row key); ``locator`` names it for people (a control id,
    "x.csv line 4", "charges:17"). ``facility`` is the unit's facility when known before (or
    without) translation -- MSH-4, a row's facility column; else its events' is used.
    ``mode`` forces the route mode (MLLP decides before translating); None routes by facility.
    """

    key: str
    locator: str
    events: list[CloudEvent] = field(default_factory=list)
    error: CanonicalError | None = None
    facility: str | None = None
    mode: Mode | None = None
    index: int = 0
    """Position in its unit (file record, row): batch ledger deltas name their range."""
    letter_id: str = ""
    """The dead letter's dedupe id (default: ``key``)."""
    msg_ids: Sequence[str] | None = None
    """Msg-Ids of the events (default: each event's id)."""
    raw: str = ""
    kind: Kind | None = None
    """Dead-letter kind (default: untranslatable for a TranslationError, else rejected)."""
    sender: str | None = None
    message_type: str | None = None
    legacy_ok: bool = True
    """For parity: whether the legacy path took it (the legacy consumer of a file or a table
    takes every unit; an MLLP engine answers per message)."""
    tag: Any = None
    """The input's own handle on the unit (a row key to mark), returned in Outcome.done."""

    @property
    def routed_facility(self) -> str | None:
        """The facility the ledger counts it under: its events' (as the mapping and the
        reference tables made it), else the one known before translation."""
        return ledger.facility_of(self.events, self.facility)

    @property
    def route_facility(self) -> str | None:
        """The facility the route (the canary) is decided by: the one known before translation
        (MSH-4, the row's facility column) -- a reference table may rename it in the events,
        and a unit must be routed as it would be without being translated -- else its events'."""
        return self.facility or ledger.facility_of(self.events)


@dataclass(frozen=True)
class Count:
    """One record's ledger entry, before it becomes a delta message at commit."""

    key: str
    mode: Mode
    entry: ledger.Entry


@dataclass
class Outcome:
    """What some records came to, ready for :meth:`Stage.commit`: the messages to store (events,
    dead letters; ledger deltas are made at commit, last), parity samples and counts for the
    input's acknowledgement. ``replay`` is a replay run's token (see :meth:`Stage.add`)."""

    replay: str = ""
    keep: bool = False
    """Keep the events themselves in ``published`` (a replay's dry run compares them)."""
    events: list[Outgoing] = field(default_factory=list)
    letters: list[Outgoing] = field(default_factory=list)
    index: list[Outgoing] = field(default_factory=list)
    """The event index's copies of `events` (router/events_api.py), published with them."""
    keyed: list[keyindex.Unit] = field(default_factory=list)
    """The units whose business keys :meth:`Stage.commit` indexes (router/keyindex.py)."""
    counts: list[Count] = field(default_factory=list)
    parity: list[tuple[str, bool, bool, str]] = field(default_factory=list)
    """(unit, legacy ok, Ficus ok, why they differ) of shadow records."""
    live: int = 0
    shadow: int = 0
    legacy: int = 0
    records: int = 0
    money: ledger.Money = field(default_factory=ledger.Money)
    """Money of the events (published, or that a replay would publish)."""
    done: list[Any] = field(default_factory=list)
    """Tags of the modern records whose events are in this outcome (ODBC marks those rows)."""
    failed: list[Record] = field(default_factory=list)
    """Records in error (dead-lettered; in a replay, still failing)."""
    published: list[CloudEvent] = field(default_factory=list)
    deltas: list[Outgoing] | None = None
    """The ledger delta messages, when made ahead of the commit (:meth:`Stage.prepare`)."""
    tally: dict[Mode, ledger.Batch] | None = None
    """Set (to an empty dict) for an outcome committed as one batch (a file chunk): each record's
    ledger entry is summed here, per mode, as it is added -- what :meth:`Stage.deltas` would merge
    ``counts`` into -- instead of a :class:`Count` per record that is kept until the commit."""
    unit_deltas: ledger.UnitDeltas | None = None
    """Set for an outcome whose records each get their own ledger delta, made as they are added
    (a batch of rows, in the worker thread): what :meth:`Stage.deltas` would make of ``counts``,
    without a :class:`Count` per record kept until then."""
    resends: bool = False
    """A duplicate PubAck of a record's delta means a re-send of a unit committed before (MLLP):
    counted once more, under ``duplicates``."""
    traceparent: str | None = field(default_factory=current_traceparent)
    """The trace its events carry (the CloudEvents extension): the span current where the
    outcome is made, in its unit's trace (router/tracing.py); None when tracing is off."""


@dataclass
class ReplayChunk:
    """Records re-translated from the raw archive, as a kind's input yields them to replay
    (router/replay.py): ``units`` raw units finished with this chunk (messages, rows, files),
    ``batch`` the ledger batch id for :meth:`Stage.commit` ("" = a delta per record), ``label``
    what progress may show (a file name, a key range; never content)."""

    records: list[Record]
    units: int = 0
    batch: str = ""
    label: str = ""
    remaining: int | None = None
    """Raw units still to come, when the input knows (progress shows time left from it)."""


class Stage:
    """The shared stage of one interface: route, outcome, commit (see the module docstring)."""

    def __init__(
        self, name: str, store: Store, routes: RouteTable, stats: InterfaceStats, *,
        reference: ReferenceStore | None = None, timezone: str = "UTC", money_format: str = "",
    ) -> None:
        self.name = name
        self.store = store
        self.routes = routes
        self.stats = stats
        self.reference = reference
        self.timezone = timezone
        self.money_format = money_format
        """``x12-835`` makes a dead letter's amount payments (else charges)."""
        self.raw_subject = names.raw_subject(name)
        self._messages: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        """Subject and headers per (event type, mode) (:meth:`_message`); the headers dict is
        shared by the messages: nothing changes an event message's headers once made."""

    # -- route ---------------------------------------------------------------------------

    def route(self) -> Route:
        """The interface's route now: read once per unit, so a flip mid-unit cannot split it."""
        return self.routes.get(self.name)

    def mode_for(self, facility: str | None = None) -> Mode:
        return self.routes.mode_for(self.name, facility)

    @staticmethod
    def translates(route: Route) -> bool:
        """Whether any unit on this route is translated (its mode, or a facility's, is not legacy)."""
        return route.mode != "legacy" or any(m != "legacy" for m in route.facilities.values())

    # -- translation ---------------------------------------------------------------------

    def context(self, raw_ref: str, route: Route | None = None, received: datetime | None = None,
                ) -> TranslationContext:
        """The translation context of a unit; events are re-routed per record by :meth:`add`."""
        mode = (route or self.route()).mode
        return TranslationContext(self.name, "shadow" if mode == "shadow" else "live", raw_ref,
                                  received or datetime.now(UTC), self.timezone)

    def enriched(self, events: list[CloudEvent]) -> list[CloudEvent]:
        """ERP fields from the reference tables (one snapshot per call: a reload mid-unit
        cannot mix two versions); raises TranslationError for an unmapped code."""
        if self.reference is None:
            return events
        return enrich(events, self.reference.data)

    # -- outcome -------------------------------------------------------------------------

    def add(self, out: Outcome, record: Record, route: Route | None = None) -> Mode:
        """Routes one record and adds what it comes to into ``out``; returns its mode.

        In a replay (``out.replay``, the run's token): events under Msg-Ids suffixed with the
        token (JetStream takes corrected events it saw within the duplicate window; consumers
        still see the same CloudEvents ``id`` and upsert by it), ledger ``replayed`` lines
        instead of receptions, and no dead letter (a replay reports its failures).
        """
        route = route or self.route()
        facility = record.routed_facility
        mode = record.mode or route.mode_for(record.route_facility)
        out.records += 1
        if mode == "legacy":
            out.legacy += 1
            if not out.replay:
                _count(out, record.key, mode, ledger.Entry(facility, "legacy"))
            return mode
        if record.error is not None:
            out.failed.append(record)
            if mode == "shadow":
                out.parity.append((record.locator, record.legacy_ok, False, record.error.reason))
            if out.replay:
                return mode
            letter = self._letter(record, mode)
            out.letters.append(letter.outgoing(record.letter_id or record.key))
            if self.store.cfg.key_index:
                out.keyed.append(keyindex.Unit(record, len(out.events), 0, len(out.letters) - 1))
            amount = ledger.letter_money(letter.amount, self.money_format)
            entry = ledger.Entry(letter.facility, "dead_lettered", money=amount)
            if mode == "shadow":
                _sampled(entry, record.legacy_ok, False)
            _count(out, record.key, mode, entry)
            return mode
        events = _in_mode(record.events, mode, out.traceparent)
        ids = record.msg_ids if record.msg_ids is not None else [ev.id for ev in events]
        suffix = out.replay and ".r" + out.replay
        message = self._message
        stored = [message(ev, msg_id + suffix) for ev, msg_id in zip(events, ids, strict=True)]
        if self.store.cfg.key_index:
            out.keyed.append(keyindex.Unit(record, len(out.events), len(stored), events=events))
        out.events.extend(stored)
        if self.store.cfg.event_index:
            out.index.extend(index_message(item, self.name, facility) for item in stored)
        amount = ledger.money_of(events)
        out.money.add(amount)
        if out.keep:
            out.published.extend(events)
        if mode == "modern":
            out.live += len(events)
            out.done.append(record.tag)
        else:
            out.shadow += len(events)
            out.parity.append((record.locator, record.legacy_ok, True,
                               "" if record.legacy_ok else "legacy refused a unit Ficus translated"))
        outcome: ledger.Line = "published" if events else "filtered"
        if out.replay:
            outcome = ledger.REPLAYED
        entry = ledger.Entry(facility, outcome, 1, len(events), amount)
        if mode == "shadow" and not out.replay:  # a replay is not a sample (router/ledger.py)
            _sampled(entry, record.legacy_ok, True)
        _count(out, record.key, mode, entry)
        return mode

    def add_translated(self, out: Outcome, events: list[CloudEvent], facility: str | None, locator: str,
                       route: Route) -> bool:
        """:meth:`add` of a file record translated whole -- its events, no error, the mode its
        route gives it, taken by the legacy path too -- without making a :class:`Record`: the
        same messages, counts and parity, for a fraction of the cost per record (a chunk holds
        hundreds). False when it is not that simple (a replay, the key index, kept events, a
        record routed legacy): nothing was added, the caller goes through :meth:`add`.
        """
        if out.replay or out.keep or out.tally is None or self.store.cfg.key_index:
            return False
        first = None
        for ev in events:  # ledger.facility_of, inline: it runs for every record
            if ev.ficusfacility:
                first = ev.ficusfacility
                break
        mode = route.mode_for(facility or first)
        if mode == "legacy":
            return False
        routed = first if first is not None else facility
        amount, agree = self._add_whole(out, events, None, routed, mode, locator, None)
        tally = out.tally.get(mode)
        if tally is None:
            tally = out.tally[mode] = ledger.Batch()
        entry = tally.entry(routed, "published" if events else "filtered")
        entry.units += 1
        entry.events += len(events)
        entry.agree += agree
        entry.money.add(amount)
        return True

    def add_unit(self, out: Outcome, key: str, locator: str, events: list[CloudEvent], msg_ids: Sequence[str],
                 facility: str | None, mode: Mode, tag: Any = None) -> None:
        """:meth:`add` of a unit translated whole (no error) whose ``mode`` is fixed and not
        legacy, taken by the legacy path too, into an outcome with ``unit_deltas`` (a batch of
        rows): the same messages, counts and parity, without a :class:`Record` per unit.
        Not for a replay, kept events or the key index: those go through :meth:`add`."""
        assert out.unit_deltas is not None and not out.replay and not out.keep and not self.store.cfg.key_index
        routed = facility
        for ev in events:  # ledger.facility_of, inline (Record.routed_facility)
            if ev.ficusfacility:
                routed = ev.ficusfacility
                break
        amount, agree = self._add_whole(out, events, msg_ids, routed, mode, locator, tag)
        outcome: ledger.Line = "published" if events else "filtered"
        if amount.is_zero():
            out.unit_deltas.count(mode, key, routed, outcome, 1, len(events), agree)
        else:
            out.unit_deltas.add(mode, ledger.Entry(routed, outcome, 1, len(events), amount, agree), key)

    def _add_whole(self, out: Outcome, events: list[CloudEvent], msg_ids: Sequence[str] | None,
                   routed: str | None, mode: Mode, locator: str, tag: Any) -> tuple[ledger.Money, int]:
        """What :meth:`add_translated` and :meth:`add_unit` add of a unit translated whole in
        ``mode`` (shadow or modern): its events in that mode as messages (under ``msg_ids``, else
        their ids) with their index copies, its money, counts and parity sample; returns its
        money and its parity agreement (1 in shadow: both paths took it) for its ledger entry."""
        want = "shadow" if mode == "shadow" else "live"
        for ev in events:  # _in_mode's check, inline: mostly one event, already in its mode
            if ev.ficusmode != want or out.traceparent is not None:
                events = _in_mode(events, mode, out.traceparent)
                break
        message = self._message
        if msg_ids is None:
            stored = [message(ev, ev.id) for ev in events]
        else:
            stored = [message(ev, msg_id) for ev, msg_id in zip(events, msg_ids, strict=True)]
        out.events += stored
        if self.store.cfg.event_index:
            out.index.extend(index_message(item, self.name, routed) for item in stored)
        amount = ledger.money_of(events)
        out.money.add(amount)
        out.records += 1
        if mode == "modern":
            out.live += len(events)
            out.done.append(tag)
            return amount, 0
        out.shadow += len(events)
        out.parity.append((locator, True, True, ""))
        return amount, 1

    def _message(self, event: CloudEvent, msg_id: str) -> Outgoing:
        """``event_message(event, self.name, msg_id)``, with its subject and headers from a table
        per event type and mode instead of worked out (and a headers dict made) per event."""
        key = (event.type, event.ficusmode)
        made = self._messages.get(key)
        if made is None:
            if len(self._messages) >= _MESSAGE_KINDS:
                self._messages.clear()
            template = event_message(event, self.name, msg_id)
            made = self._messages[key] = (template.subject, template.headers)
        subject, headers = made
        return Outgoing(subject, event.to_json(), msg_id or event.id, headers)

    def _letter(self, record: Record, mode: Mode) -> DeadLetter:
        exc = record.error
        assert exc is not None
        kind = record.kind or ("untranslatable" if isinstance(exc, TranslationError) else "rejected")
        return DeadLetter(
            interface=self.name, kind=kind, reason=exc.reason, mode=mode, unit=record.locator or "-",
            raw=record.raw or None, message_type=record.message_type, sender=record.sender,
            facility=getattr(exc, "facility", None) or record.facility,
            amount=money(getattr(exc, "amount", None)), locator=getattr(exc, "locator", None), at=now_iso(),
        )

    # -- commit --------------------------------------------------------------------------

    @traced("publish", lambda self, out, **_: {"interface": self.name, "events": len(out.events),
                                               "dead_letters": len(out.letters), "records": out.records})
    async def commit(self, out: Outcome, *, piece: int = PUBLISH_PIECE, batch: str = "",
                     fence: Callable[[], None] | None = None, bulk: bool = False) -> list[PubAck]:
        """Stores an outcome -- events, dead letters, then ledger deltas -- and counts it.

        Raises StoreUnavailable with nothing counted in the stats; a retry re-publishes the same
        Msg-Ids, so what was stored before is not stored twice. ``batch`` (a file chunk: its
        content and record range, which a retry from the resume point cuts again exactly) merges
        the records' ledger entries into one delta per mode: 500 records, one ledger message.
        ``fence`` (a polling interface's lease check, router/leases.py) is called before each
        piece is published and raises to stop: nothing more is published once the lease is lost.

        ``bulk`` (file chunks, row batches): events and dead letters go as fast-ingest batches
        when the store has them (router/fast_ingest.py), then the ledger deltas the same way;
        acknowledged per batch, so nothing comes back (an empty list). Not with the key index,
        which needs each event's sequence, nor with ``resends``.
        """
        deltas = out.deltas if out.deltas is not None else self.deltas(out, batch)
        if bulk and not out.keyed and not out.resends and self.store.ingest_mode == INGEST:
            await self.store.ingest([*out.events, *out.index, *out.letters], fence, piece)
            await self.store.ingest(deltas, fence, piece)  # last: counted only once all is stored
            self.counted(out)
            return []
        items = [*out.events, *out.index, *out.letters]
        acks: list[PubAck] = []
        keyed: list[Outgoing] = []
        if out.keyed:  # the key index names the events' and letters' sequences: they are stored first
            acks = await self._publish(items, piece, fence)
            keyed = keyindex.records(await keyindex.hasher(self.store), self.name, out.keyed, acks,
                                     len(out.events) + len(out.index), out.replay)
            items = []
        acks += await self._publish([*items, *keyed, *deltas], piece, fence)
        if out.resends and not batch:
            first = len(out.events) + len(out.index) + len(out.letters) + len(keyed)
            again = [ledger.resend_delta(self.name, c.mode, c.entry.facility)
                     for c, ack in zip(out.counts, acks[first:], strict=True) if ack.duplicate]
            if again:  # a re-send of a unit whose outcome was committed before
                if fence is not None:
                    fence()
                await self.store.publish(again)
        self.counted(out)
        return acks

    async def _publish(self, items: list[Outgoing], piece: int,
                       fence: Callable[[], None] | None = None) -> list[PubAck]:
        acks: list[PubAck] = []
        for start in range(0, len(items), piece):
            if fence is not None:
                fence()
            acks += await self.store.publish(items[start : start + piece])
        return acks

    def prepare(self, out: Outcome, batch: str = "") -> Outcome:
        """Makes the outcome's ledger delta messages now, for :meth:`commit`: in the worker thread
        that translated the unit, since a delta per row of a batch of 5,000 rows takes ~50 ms
        that would otherwise hold up the event loop (and every MLLP ACK of the process)."""
        out.deltas = self.deltas(out, batch)
        return out

    def deltas(self, out: Outcome, batch: str = "") -> list[Outgoing]:
        """The ledger delta messages of an outcome: one per record, or one per mode of a batch."""
        if out.tally is not None and not batch:
            raise ValueError("an outcome summed per batch has no delta per record")
        if out.unit_deltas is not None:
            if batch or out.replay:
                raise ValueError("an outcome with a delta per record has no batch or replay delta")
            return out.unit_deltas.messages
        if not batch:
            if out.replay:
                return [ledger.replay_batch_delta(self.name, c.mode, [c.entry], c.key, out.replay)
                        for c in out.counts]
            return ledger.unit_deltas(self.name, [(c.mode, c.entry, c.key) for c in out.counts])
        by_mode: dict[Mode, ledger.Batch] = out.tally if out.tally is not None else {}
        for c in out.counts:
            e = c.entry
            by_mode.setdefault(c.mode, ledger.Batch()).add(0, e.facility, e.outcome, e.events, e.money, e.units,
                                                           agree=e.agree, disagree=e.disagree)
        if out.replay:
            return [ledger.replay_batch_delta(self.name, mode, b.entries, batch, out.replay)
                    for mode, b in by_mode.items()]
        return [ledger.delta(self.name, mode, b.entries, batch) for mode, b in by_mode.items()]

    def counted(self, out: Outcome) -> None:
        """The stats, parity and log lines of a committed outcome."""
        stats = self.stats
        if out.replay:  # not traffic: counted apart, as the ledger does
            stats.replayed_events += len(out.events)
        else:
            stats.published += out.live
            stats.shadow_published += out.shadow
        for unit, legacy_ok, ficus_ok, why in out.parity:
            stats.parity.record(legacy_ok=legacy_ok, modern_ok=ficus_ok, unit=unit, detail=why)
        if not out.letters:
            return
        stats.dead_lettered += len(out.letters)
        for record in out.failed[:LOGGED_LETTERS]:
            assert record.error is not None
            log.info("%s: dead-lettered %s: %s", self.name, record.locator or "-", safe_reason(record.error.reason),
                     extra={"interface": self.name, "unit": record.locator or "-", **_LETTER_LOG})
        if len(out.failed) > LOGGED_LETTERS:
            log.info("%s: %d more dead-lettered in the same batch", self.name, len(out.failed) - LOGGED_LETTERS,
                     extra={"interface": self.name, **_LETTER_LOG})
        last = out.failed[-1].error
        stats.error(last.reason if last is not None else "dead-lettered")

    # -- raw archive ---------------------------------------------------------------------

    @traced("archive", lambda self, payload, raw_id, _h: {"interface": self.name, "unit": raw_id,
                                                          "bytes": len(payload)})
    async def archive(self, payload: bytes, raw_id: str, headers: dict[str, str]) -> tuple[str, PubAck]:
        """Stores a raw unit in ``raw.<interface>``; returns its reference and PubAck (a duplicate's
        carries the sequence of the copy stored first)."""
        (ack,) = await self.store.publish([Outgoing(self.raw_subject, payload, raw_id, headers)])
        return names.raw_ref(ack.stream, ack.seq), ack

    @traced("archive", lambda self, items: {"interface": self.name, "units": len(items)})
    async def archive_many(self, items: list[Outgoing]) -> list[str]:
        """Several raw units in one call; their references, in order."""
        return [names.raw_ref(ack.stream, ack.seq) for ack in await self.store.publish(items)]

    @traced("archive", lambda self, _o, _p, sha256: {"interface": self.name, "unit": sha256})
    async def archive_file(self, objects: Objects, path: Any, sha256: str) -> str:
        """A file's original bytes, once per content, in the raw object store; its reference."""
        obj = f"{self.name}/{sha256}"
        if not await objects.has(obj):
            with path.open("rb") as fh:
                await objects.put(obj, fh)
        return f"objectstore://{names.OBJ_RAW_FILES}/{obj}"


def _count(out: Outcome, key: str, mode: Mode, entry: ledger.Entry) -> None:
    """A record's ledger entry into ``out``: summed into its tally when it has one, else kept."""
    if out.unit_deltas is not None:
        out.unit_deltas.add(mode, entry, key)
        return
    tally = out.tally
    if tally is None:
        out.counts.append(Count(key, mode, entry))
        return
    batch = tally.get(mode)
    if batch is None:
        batch = tally[mode] = ledger.Batch()
    batch.add(0, entry.facility, entry.outcome, entry.events, entry.money, entry.units, agree=entry.agree,
              disagree=entry.disagree)


def _sampled(entry: ledger.Entry, legacy_ok: bool, ficus_ok: bool) -> None:
    """Marks a shadow unit's ledger entry with its parity sample, as ParityStats.record judges it:
    agreeing when both paths took the unit or both refused it."""
    if legacy_ok == ficus_ok:
        entry.agree = 1
    else:
        entry.disagree = 1


def _in_mode(events: list[CloudEvent], mode: Mode, trace: str | None = None) -> list[CloudEvent]:
    """The events as published in ``mode``: on ``shadow.`` subjects in shadow, live in modern.
    Translation used the interface's mode; a facility override (canary) differs from it.
    ``trace``: the ``traceparent`` they carry when tracing is on."""
    want = "shadow" if mode == "shadow" else "live"
    if trace is not None:
        return [ev.model_copy(update={"ficusmode": want, "traceparent": trace}) for ev in events]
    for ev in events:  # a loop, not all() over a generator: ~1 us a record on the row path
        if ev.ficusmode != want:
            break
    else:
        return events
    return [ev if ev.ficusmode == want else ev.model_copy(update={"ficusmode": want}) for ev in events]
