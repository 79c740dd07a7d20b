"""The reconciliation ledger: per interface, UTC day of receipt and facility, where every unit went.

    received = published + dead_lettered + filtered + duplicates + legacy

with the money of each (charges, payments, adjustments). A ledger that does not balance is a bug.

Units, per kind: an MLLP message; a file's record (CSV, fixed width) or 835 transaction (ST..SE)
-- a file routed ``legacy`` is not read by Ficus and counts as one unit; an ODBC row.

Outcomes (exactly one per counted unit):

- ``published``: its events are stored (live subjects in modern mode, ``shadow.`` in shadow;
  the ``shadow`` column says how many of a row's units were translated in shadow mode);
- ``dead_lettered``: a dead letter was stored for it (rejected, untranslatable, or a file
  dead-lettered whole -- one unit: the part of it never read);
- ``filtered``: translated without error into zero events (a message or record the mapping
  deliberately produces nothing for); no mapping does this today, the column is kept so the
  equation stays true when one does;
- ``duplicates``: a re-send recognised. MLLP: a message whose ledger entry for the same raw
  id, mode and outcome is already stored (its events deduped too) -- the sender sent it again
  after its outcome was committed. Files: a file skipped because a file with the same content
  is done (``dedupe_content``); it counts the units of that file, without money (it is not
  read). ODBC: never (the poller reads only rows after the checkpoint; a batch read again
  after a crash is Ficus's own retry and is counted once, see below);
- ``legacy``: delivered to the legacy path only, untranslated (route mode ``legacy``; in
  shadow, an MLLP message that is not HL7 at all). Shadow units are forwarded too but count
  under their translation's outcome.

Replayed -- a line beside the equation, not a reception. A replay re-translates stored raw
units after a mapping fix (router/replay.py) and publishes their events again, under new ids
(or, for a dead letter, events that were never published). Those units were already counted
when received, so a replay counts them again under ``replayed`` (units re-translated and
published again), ``replayed_events`` and ``money["replayed"]``, and never under ``received``
or an outcome. So, per interface, after a replay:

    stored events = published events + replayed events

(money likewise), while received = published + dead_lettered + filtered + duplicates + legacy
holds unchanged. A replayed dead letter still counts under ``dead_lettered`` (where it went
when received); its events show under ``replayed``. A replay delta (:func:`replay_delta`,
:func:`replay_batch_delta`) goes on the day of the replay -- the day its events were published
-- and its id is derived from the unit, mode and the replay run's token: a replay retried with
the same token (its events re-published under the same ids, in the same ``Store.publish`` call
as the delta, last) counts once; another replay run counts again. A replay delta that comes
back as a JetStream duplicate is that retry, not a re-send: no ``duplicates`` entry follows it.

Money (Decimal, summed exactly): charges = FT1-11 of charge events (``ChargeData.amount``) and
CLP03 of 835 claims; payments = CLP04 of 835 claims; adjustments = CAS totals of 835 claims
(claim and line level) plus the PLB total of the remittance. A dead letter's ``amount`` is
payments on an x12-835 interface, charges elsewhere.

Storage -- why an append-only stream and not counters in KV. Each counted unit (or file
batch) is one *delta* message on ``ledger.<iface>.<day>`` (stream ``FICUS_LEDGER``) whose
``Nats-Msg-Id`` is derived from the unit (raw id, file content + record range, table + row
key) and its mode and outcome, and which travels in the same ``Store.publish`` call as the
unit's events or dead letter, last. So it is exactly as durable as they are: a unit
processed again after a crash or an outage re-publishes the same ids and JetStream's
duplicate window drops the copies -- counted once. A KV counter updated after the events
would lose counts on a crash in between, and one updated before would count units whose
events never made it; neither can be fenced per unit. Reading folds the deltas
(:class:`Reader` keeps the fold and the sequence it reached per process, so a repeated read
only folds what is new); every instance folds the same stream, so every instance shows the
same ledger. The delta of an MLLP re-send comes back from JetStream as a duplicate: a
second, per-reception delta then counts it under ``duplicates``.

Parity, per day and facility. A unit translated in shadow is a parity sample: did Ficus and
the legacy path agree (both took it, or both refused it)? Its entry says so (``parity_agree``
or ``parity_disagree``, one of the two per shadow unit), so the evidence is kept by day and
facility as durably as the counts, shared by every instance, and counted once under the same
rules: a unit processed again re-publishes the same delta id (dropped), a re-send counts under
``duplicates`` without a sample, and a replay is not a sample (it re-translates a unit whose
sample was counted when it was received). The flip gate still judges the current window
(router/parity.py); these rows are its history. Deltas written before these counts existed
read as zero samples (their days show shadow units without samples).

Counted once an outcome is committed: a unit answered "resend later" (NATS away, legacy
destination down) is not counted -- its retry is. Legacy-mode MLLP counts are written just
after the legacy reply, off the sender's path (the legacy path never waits for the store);
a crash in those milliseconds, or NATS away, loses that unit's count (logged). Detection of
re-sends holds within the duplicate window (``nats.duplicate_window_seconds``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from canonical.envelope import CloudEvent
from canonical.events import ChargeData
from canonical.x12.events import ClaimData, RemittanceData
from router import names
from router.store import Outgoing, Store

log = logging.getLogger("ficus.ledger")

Outcome = Literal["published", "dead_lettered", "filtered", "duplicates", "legacy"]
OUTCOMES: tuple[Outcome, ...] = ("published", "dead_lettered", "filtered", "duplicates", "legacy")
"""Where a received unit went: the right-hand side of the equation."""
Replayed = Literal["replayed"]
REPLAYED: Replayed = "replayed"
"""Not a reception: a unit replayed and published again (beside the equation, see above)."""
Line = Outcome | Replayed
"""What an entry counts: a receipt outcome or a replay."""
MONEY_KINDS = ("charges", "payments", "adjustments")
ZERO = Decimal(0)
_NO_FACILITY = ""


@dataclass
class Money:
    """Charges, payments and adjustments of some units."""

    charges: Decimal = ZERO
    payments: Decimal = ZERO
    adjustments: Decimal = ZERO

    def add(self, other: Money) -> None:
        """Adds ``other`` into this one."""
        self.charges += other.charges
        self.payments += other.payments
        self.adjustments += other.adjustments

    def is_zero(self) -> bool:
        """Whether every amount is zero."""
        return not (self.charges or self.payments or self.adjustments)

    def as_json(self) -> dict[str, str]:
        """Amounts as strings (money never travels as a float)."""
        return {"charges": str(self.charges), "payments": str(self.payments), "adjustments": str(self.adjustments)}


def money_of(events: Iterable[CloudEvent]) -> Money:
    """The money of a unit's events (see the module docstring for what counts where)."""
    out = Money()
    for ev in events:
        data: Any = ev.data
        if isinstance(data, ChargeData):
            out.charges += data.amount or ZERO
        elif isinstance(data, ClaimData):
            out.charges += data.charge
            out.payments += data.paid
            out.adjustments += data.adjustment_total
        elif isinstance(data, RemittanceData):
            out.adjustments += data.total_provider_adjustment
    return out


def letter_money(amount: Decimal | str | None, fmt: str = "") -> Money:
    """The money a dead letter holds up: payments on an 835 interface, charges elsewhere."""
    if amount is None:
        return Money()
    try:
        value = Decimal(amount)
    except (InvalidOperation, ValueError):
        return Money()
    if not value.is_finite():
        return Money()
    return Money(payments=value) if fmt == "x12-835" else Money(charges=value)


def facility_of(events: Sequence[CloudEvent], fallback: str | None = None) -> str | None:
    """The facility of a unit: its first event's, else ``fallback``."""
    for ev in events:
        if ev.ficusfacility:
            return ev.ficusfacility
    return fallback


@dataclass
class Entry:
    """Units of one facility with one outcome, or replayed (one delta carries one or more)."""

    facility: str | None
    outcome: Line
    units: int = 1
    events: int = 0
    money: Money = field(default_factory=Money)
    agree: int = 0
    """Parity samples (units in shadow) where Ficus and the legacy path agreed."""
    disagree: int = 0
    """Parity samples where they did not."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"f": self.facility, "o": self.outcome, "n": self.units, "e": self.events}
        if self.agree:  # only when there are samples: most entries are not in shadow
            out["pa"] = self.agree
        if self.disagree:
            out["pd"] = self.disagree
        if not self.money.is_zero():
            out["c"], out["p"], out["a"] = str(self.money.charges), str(self.money.payments), str(
                self.money.adjustments)
        return out


class Batch:
    """Entries of a batch of units, merged per (facility, outcome): one delta for a file batch."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str | None, Line], Entry] = {}
        self.first: int | None = None
        self.last: int | None = None

    def add(self, index: int, facility: str | None, outcome: Line, events: int = 0,
            money: Money | None = None, units: int = 1, *, agree: int = 0, disagree: int = 0) -> None:
        """Counts ``units`` units (at position ``index``) with this outcome (and their parity samples)."""
        if self.first is None:
            self.first = index
        self.last = index
        entry = self._entries.get((facility, outcome))
        if entry is None:
            entry = self._entries[(facility, outcome)] = Entry(facility, outcome, 0)
        entry.units += units
        entry.events += events
        entry.agree += agree
        entry.disagree += disagree
        if money is not None:
            entry.money.add(money)

    def entry(self, facility: str | None, outcome: Line) -> Entry:
        """The merged entry of (facility, outcome), made empty when new: for a caller that adds
        into it directly, a record at a time (Stage.add_translated)."""
        entry = self._entries.get((facility, outcome))
        if entry is None:
            entry = self._entries[(facility, outcome)] = Entry(facility, outcome, 0)
        return entry

    @property
    def entries(self) -> list[Entry]:
        """The merged entries."""
        return list(self._entries.values())

    def __bool__(self) -> bool:
        return bool(self._entries)


def day_of(at: datetime | None = None) -> str:
    """The ledger day (UTC date of receipt) of a time, now by default."""
    return (at or datetime.now(UTC)).astimezone(UTC).date().isoformat()


def delta(interface: str, mode: str, entries: Sequence[Entry], unit_id: str, *,
          at: datetime | None = None) -> Outgoing:
    """The delta message of a unit (or batch): its id from ``unit_id``, mode and outcomes.

    The day is not in the id: the same unit retried after midnight is still the same unit.
    """
    outcomes = ",".join(sorted({e.outcome for e in entries}))
    return _delta(interface, mode, entries, "ledger-" + _digest(interface, unit_id, mode, outcomes), at)


def unit_deltas(interface: str, counts: Iterable[tuple[str, Entry, str]]) -> list[Outgoing]:
    """``delta(interface, mode, [entry], unit_id)`` of each (mode, entry, unit_id), the same
    messages (one day for all: the call's), with the body of entries without money encoded
    once: a batch of rows has few distinct bodies, and encoding each cost ~20 us per row."""
    out = UnitDeltas(interface)
    for mode, entry, unit_id in counts:
        out.add(mode, entry, unit_id)
    return out.messages


class UnitDeltas:
    """The delta message of each unit of a batch, made as the units are counted (:func:`unit_deltas`
    in pieces): one day for all (when made), a body per distinct entry without money."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.day = day_of()
        self.messages: list[Outgoing] = []
        self._subject = names.ledger_subject(interface, self.day)
        self._headers = {names.HDR_INTERFACE: interface}
        self._bodies: dict[tuple[str, str | None, str, int, int, int, int], bytes] = {}

    def add(self, mode: str, entry: Entry, unit_id: str) -> None:
        """``delta(interface, mode, [entry], unit_id)``, appended to :attr:`messages`."""
        if not entry.money.is_zero():
            self._append(_body(self.interface, self.day, mode, [entry]), unit_id, mode, entry.outcome)
            return
        self.count(mode, unit_id, entry.facility, entry.outcome, entry.units, entry.events, entry.agree,
                   entry.disagree)

    def count(self, mode: str, unit_id: str, facility: str | None, outcome: Line, units: int = 1, events: int = 0,
              agree: int = 0, disagree: int = 0) -> None:
        """:meth:`add` of an entry without money, from its fields (no :class:`Entry` made)."""
        memo = (mode, facility, outcome, units, events, agree, disagree)
        body = self._bodies.get(memo)
        if body is None:
            entry = Entry(facility, outcome, units, events, agree=agree, disagree=disagree)
            body = self._bodies[memo] = _body(self.interface, self.day, mode, [entry])
        self._append(body, unit_id, mode, outcome)

    def _append(self, body: bytes, unit_id: str, mode: str, outcome: str) -> None:
        msg_id = "ledger-" + _digest(self.interface, unit_id, mode, outcome)
        self.messages.append(Outgoing(self._subject, body, msg_id, self._headers))


def _delta(interface: str, mode: str, entries: Sequence[Entry], msg_id: str, at: datetime | None) -> Outgoing:
    day = day_of(at)
    return _message(interface, day, _body(interface, day, mode, entries), msg_id)


def _body(interface: str, day: str, mode: str, entries: Sequence[Entry]) -> bytes:
    body = {"v": 1, "i": interface, "d": day, "m": mode, "u": [e.as_json() for e in entries]}
    return json.dumps(body, separators=(",", ":")).encode()


def _message(interface: str, day: str, body: bytes, msg_id: str) -> Outgoing:
    return Outgoing(names.ledger_subject(interface, day), body, msg_id, {names.HDR_INTERFACE: interface})


def unit_delta(interface: str, mode: str, unit_id: str, facility: str | None, outcome: Outcome,
               events: int = 0, money: Money | None = None, units: int = 1) -> Outgoing:
    """The delta of one unit (or ``units`` units of one outcome)."""
    return delta(interface, mode, [Entry(facility, outcome, units, events, money or Money())], unit_id)


def resend_delta(interface: str, mode: str, facility: str | None) -> Outgoing:
    """A re-send recognised: one more unit received, under ``duplicates``; its own id per reception."""
    return unit_delta(interface, mode, "resend-" + secrets.token_hex(16), facility, "duplicates")


def replay_delta(interface: str, mode: str, unit_id: str, token: str, facility: str | None, events: int,
                 money: Money | None = None) -> Outgoing:
    """The delta of one unit replayed: ``events`` events (with ``money``) published again.

    ``token`` names the replay run: the same unit, mode and token give the same id (a retried
    replay counts once), another token another id (another replay counts again).
    """
    return replay_batch_delta(interface, mode, [Entry(facility, REPLAYED, 1, events, money or Money())],
                              unit_id, token)


def replay_batch_delta(interface: str, mode: str, entries: Sequence[Entry], unit_id: str, token: str) -> Outgoing:
    """The delta of a batch of replayed units (a file chunk), entries with outcome ``replayed``;
    its id as :func:`replay_delta`'s, from ``unit_id`` (the batch's), mode and ``token``."""
    if not entries or any(e.outcome != REPLAYED for e in entries):
        raise ValueError("a replay delta holds replayed entries only, at least one")
    # Five parts where a receipt delta's id has four: the two never collide.
    return _delta(interface, mode, entries, "ledger-replay-" + _digest(interface, unit_id, mode, REPLAYED, token),
                  None)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


# -- the fold ------------------------------------------------------------------------------


@dataclass
class Tally:
    """One ledger row: the units of a facility (or a whole day) by outcome, with their money."""

    received: int = 0
    published: int = 0
    dead_lettered: int = 0
    filtered: int = 0
    duplicates: int = 0
    legacy: int = 0
    shadow: int = 0
    events: int = 0
    replayed: int = 0
    replayed_events: int = 0
    parity_agree: int = 0
    parity_disagree: int = 0
    money: dict[str, Money] = field(
        default_factory=lambda: {k: Money() for k in ("received", *OUTCOMES, REPLAYED)})

    def add(self, entry: Entry, mode: str) -> None:
        """Folds one entry in (a replayed one beside the equation, never into ``received``)."""
        if entry.outcome == REPLAYED:
            self.replayed += entry.units
            self.replayed_events += entry.events
            self.money[REPLAYED].add(entry.money)
            return
        self.received += entry.units
        setattr(self, entry.outcome, getattr(self, entry.outcome) + entry.units)
        if mode == "shadow" and entry.outcome in ("published", "dead_lettered", "filtered"):
            self.shadow += entry.units
        self.events += entry.events
        self.parity_agree += entry.agree
        self.parity_disagree += entry.disagree
        self.money["received"].add(entry.money)
        self.money[entry.outcome].add(entry.money)

    def merge(self, other: Tally) -> None:
        """Adds another row into this one (facilities into the day's total)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, m in other.money.items():
            self.money[key].add(m)

    def problems(self) -> list[str]:
        """Why this row does not balance (empty when it does)."""
        out: list[str] = []
        parts = sum(getattr(self, o) for o in OUTCOMES)
        if self.received != parts:
            out.append(f"received {self.received} != published + dead_lettered + filtered + duplicates + legacy "
                       f"{parts}")
        for kind in MONEY_KINDS:
            total = getattr(self.money["received"], kind)
            split = sum((getattr(self.money[o], kind) for o in OUTCOMES), ZERO)
            if total != split:
                out.append(f"{kind}: received {total} != sum of outcomes {split}")
        return out

    def as_json(self) -> dict[str, Any]:
        """The API's view of the row."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _COUNTS}
        out["money"] = {k: m.as_json() for k, m in self.money.items()}
        out["balanced"] = not self.problems()
        return out


_COUNTS = ("received", *OUTCOMES, "shadow", "events", REPLAYED, "replayed_events", "parity_agree",
           "parity_disagree")

Days = dict[str, dict[str, Tally]]
"""day -> facility ("" for none) -> row."""


def fold(payloads: Iterable[bytes], into: Days | None = None) -> Days:
    """Folds delta messages into rows per day and facility; an unreadable delta is skipped, logged."""
    days: Days = {} if into is None else into
    for payload in payloads:
        try:
            body = json.loads(payload)
            day, mode = str(body["d"]), str(body["m"])
            entries = [_entry(u) for u in body["u"]]
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            log.error("ledger: unreadable delta skipped (%s)", type(exc).__name__)
            continue
        rows = days.setdefault(day, {})
        for entry in entries:
            rows.setdefault(entry.facility or _NO_FACILITY, Tally()).add(entry, mode)
    return days


def _entry(raw: dict[str, Any]) -> Entry:
    outcome = raw["o"]
    if outcome not in OUTCOMES and outcome != REPLAYED:
        raise ValueError("unknown outcome")
    money = Money(Decimal(raw.get("c", 0)), Decimal(raw.get("p", 0)), Decimal(raw.get("a", 0)))
    # "pa"/"pd" (parity samples) are absent from deltas written before them: zero.
    return Entry(raw.get("f"), outcome, int(raw["n"]), int(raw.get("e", 0)), money,
                 int(raw.get("pa", 0)), int(raw.get("pd", 0)))


def day_view(day: str, rows: dict[str, Tally]) -> dict[str, Any]:
    """One day of an interface for the API: the total, each facility, whether it balances."""
    total = Tally()
    for row in rows.values():
        total.merge(row)
    problems = [f"{f or '-'}: {p}" for f, row in sorted(rows.items()) for p in row.problems()] + total.problems()
    return {
        "day": day,
        "total": total.as_json(),
        "facilities": [{"facility": f or None, **row.as_json()} for f, row in sorted(rows.items())],
        "balanced": not problems,
        "problems": problems,
    }


class Reader:
    """Folds an interface's deltas on read, keeping per process the fold and the sequence reached,
    so a repeated read (the dashboard's) folds only what is new."""

    BATCH = 10_000

    def __init__(self) -> None:
        self._folds: dict[str, tuple[int, Days]] = {}

    async def days(self, store: Store, interface: str) -> Days:
        """Every day of ``interface`` still in the stream (raises StoreError when NATS is away)."""
        seq, days = self._folds.get(interface, (0, {}))
        subject = names.ledger_subject(interface, "*")
        while True:
            msgs = await store.read(names.STREAM_LEDGER, subject, after=seq, limit=self.BATCH)
            if not msgs:
                break
            fold((data for _, data, _ in msgs), days)
            seq = msgs[-1][0]
            self._folds[interface] = (seq, days)
            if len(msgs) < self.BATCH:
                break
        self._folds[interface] = (seq, days)
        return days

    async def view(self, store: Store, interface: str, day: str | None = None) -> dict[str, Any]:
        """The API's answer: the interface's days (newest first), or one day."""
        days = await self.days(store, interface)
        wanted = [day] if day is not None else sorted(days, reverse=True)
        views = [day_view(d, days.get(d, {})) for d in wanted]
        return {"interface": interface, "days": views, "balanced": all(v["balanced"] for v in views)}


def valid_day(text: str) -> bool:
    """Whether ``text`` is a day as the ledger names them (YYYY-MM-DD)."""
    try:
        return len(text) == 10 and datetime.strptime(text, "%Y-%m-%d").date().isoformat() == text
    except ValueError:
        return False


def summary(view: dict[str, Any]) -> str:
    """One day's total in one line: received = published + dead-lettered + filtered + duplicates + legacy,
    then the units replayed that day when there are any."""
    t = view["total"]
    mark = "ok" if view["balanced"] else "UNBALANCED"
    replayed = f", {t['replayed']} replayed" if t.get("replayed") else ""
    return (f"{t['received']} = {t['published']}+{t['dead_lettered']}+{t['filtered']}+{t['duplicates']}"
            f"+{t['legacy']} {mark}{replayed}")
