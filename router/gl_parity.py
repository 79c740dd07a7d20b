"""GL parity: the legacy GL export of a day against the journal entries Ficus made for that day.

For one posting day, the export's lines (router/gl_export.py) and Ficus's entries are summed per
account -- (facility, and the account segments the export carries: router/gl_layout.py) -- as net
money (debit - credit). Any account whose two nets differ is a difference, and the day is at zero
difference only when no account differs: that is what the flip gate counts (:func:`gate`).

The entries of a day are read from the posting index, FICUS_POSTIDX, where the posting consumer
puts a copy of each entry on ``postidx.<live|shadow>.<posting date>`` (router/posting.py): a
subject filter reads exactly that day, whatever time the entries were stored (an event that
arrives after midnight, a replay a week later), which a scan of the canonical stream bounded to
the day's time range would miss or mix up. Memo entries (recorded, not booked) are left out; an
entry stored twice (live and shadow, or again) counts once, by entry id.

The differences are then explained, each with its money, the entries and source events behind it
and the export lines (file, line, reference) it comes from:

- ``missing_in_export``: entries the export has no line for (by reference, when the export carries
  one; else entries whose lines each match what the account is short of);
- ``missing_in_ficus``: export lines no entry accounts for;
- ``account_differs``: two accounts of one facility whose differences net to zero and that differ
  in some segments (a wrong cost center: Ficus booked the money on one, the export on the other);
- ``amounts_differ``: what is left on an account after all that.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from canonical.posting.model import JournalEntryData, JournalEntryEvent
from canonical.subjects import subject_for
from router import gl_export, names, parity
from router.config import Mode
from router.gl_layout import SEGMENTS, GlLine
from router.routes import Route
from router.store import Outgoing, Store

__all__ = ["Difference", "Report", "compare", "day_entries", "entry_messages", "flip_verdict", "gate",
           "postidx_subject", "report"]

Key = tuple[str, ...]
"""An account as compared: (facility, then the export's segments but facility, in AccountRef order)."""
ZERO = Decimal(0)
LISTED = 50
"""Entries (and export lines) named per difference at most; the count says how many there are."""


def postidx_subject(mode: str, day: str) -> str:
    """Where the posting index keeps a copy of an entry posted on `day` (`mode`: live or shadow)."""
    return f"postidx.{mode}.{day}"


def entry_messages(entry: JournalEntryEvent, interface: str, mode: str) -> list[Outgoing]:
    """A journal entry as stored: on its subject (``shadow.`` prefixed when `mode` is shadow) in the
    canonical streams, and its copy in the posting index by posting day; the entry's own bytes
    (``to_json``, as ``ficus post`` prints them) and its id as Nats-Msg-Id in both."""
    subject = subject_for(entry.type, "live" if mode == "live" else "shadow")
    body = entry.to_json()
    headers = {names.HDR_INTERFACE: interface, names.HDR_EVENT_TYPE: entry.type}
    return [Outgoing(subject, body, entry.id, headers),
            Outgoing(postidx_subject(mode, entry.data.posting_date), body, entry.id, headers)]


def _key(segments: Sequence[str], values: dict[str, str | None]) -> Key:
    return tuple((values.get(s) or "").strip() for s in segments)


def _label(segments: Sequence[str], key: Key) -> dict[str, str]:
    return dict(zip(segments, key, strict=True))


def _money(value: Decimal) -> str:
    return str(value)


@dataclass
class _Side:
    debit: Decimal = ZERO
    credit: Decimal = ZERO

    @property
    def net(self) -> Decimal:
        return self.debit - self.credit


@dataclass
class Difference:
    """One explained difference: its kind, money, the accounts, entries, source events and lines behind it."""

    kind: str
    money: Decimal
    facility: str
    accounts: list[dict[str, str]]
    detail: str
    entries: list[str] = field(default_factory=list)
    source_events: list[str] = field(default_factory=list)
    export_lines: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "money": _money(self.money), "facility": self.facility, "accounts": self.accounts,
                "detail": self.detail, "entries": self.entries[:LISTED], "entries_count": len(self.entries),
                "source_events": self.source_events[:LISTED], "source_events_count": len(self.source_events),
                "export_lines": self.export_lines[:LISTED], "export_lines_count": len(self.export_lines)}


@dataclass
class Report:
    """A day's GL parity: totals per account on both sides, the accounts that differ, the differences."""

    day: str
    segments: tuple[str, ...]
    accounts: list[dict[str, Any]]
    differences: list[Difference]
    export_lines: int
    export_files: int
    entries: int
    memo_entries: int

    @property
    def zero(self) -> bool:
        """No account differs (the gate's test)."""
        return not any(Decimal(a["difference"]) for a in self.accounts)

    def as_dict(self) -> dict[str, Any]:
        differing = [a for a in self.accounts if Decimal(a["difference"])]
        return {"day": self.day, "segments": list(self.segments), "zero_difference": self.zero,
                "export": {"lines": self.export_lines, "files": self.export_files},
                "ficus": {"entries": self.entries, "memo_entries_left_out": self.memo_entries},
                "accounts_compared": len(self.accounts), "accounts_differing": differing,
                "differences": [d.as_dict() for d in self.differences]}


class _Entry:
    """An entry as parity sees it: its net per account key and the references it answers to."""

    def __init__(self, data: JournalEntryData, segments: Sequence[str]) -> None:
        self.data = data
        self.vector: dict[Key, Decimal] = defaultdict(Decimal)
        for line in data.lines:
            values: dict[str, str | None] = line.account.model_dump()
            self.vector[_key(segments, values)] += line.debit - line.credit
        self.refs = {data.entry_id, *data.source_event_ids, *([data.business_key] if data.business_key else [])}
        self.total = sum((line.debit for line in data.lines), ZERO)


def compare(day: str, segments: Sequence[str], lines: Iterable[GlLine],
            entries: Iterable[JournalEntryData]) -> Report:
    """The GL parity report of `day` from its export lines and its entries (pure; see the module doc)."""
    segs = ("facility", *[s for s in SEGMENTS if s in segments and s != "facility"])
    export = [line for line in lines if line.day == day]
    booked = [e for e in entries if e.posting_date == day]
    memo = sum(1 for e in booked if e.memo)
    unique: dict[str, _Entry] = {}
    for data in booked:
        if not data.memo:
            unique.setdefault(data.entry_id, _Entry(data, segs))
    ours = list(unique.values())
    totals: dict[Key, tuple[_Side, _Side]] = defaultdict(lambda: (_Side(), _Side()))
    for entry in ours:
        for line in entry.data.lines:
            side = totals[_key(segs, line.account.model_dump())][0]
            side.debit += line.debit
            side.credit += line.credit
    theirs: dict[Key, list[GlLine]] = defaultdict(list)
    for gl in export:
        key = _key(segs, {**gl.account, "facility": gl.facility})
        side = totals[key][1]
        side.debit += gl.debit
        side.credit += gl.credit
        theirs[key].append(gl)
    accounts = []
    residual: dict[Key, Decimal] = {}
    for key in sorted(totals):
        mine, other = totals[key]
        diff = mine.net - other.net
        if diff:
            residual[key] = diff
        accounts.append({"account": _label(segs, key),
                         "ficus": {"debit": _money(mine.debit), "credit": _money(mine.credit)},
                         "export": {"debit": _money(other.debit), "credit": _money(other.credit)},
                         "difference": _money(diff)})
    differences = _explain(segs, residual, ours, export)
    return Report(day, segs, accounts, differences, len(export), len({gl.file for gl in export}), len(ours), memo)


def _line_ref(gl: GlLine) -> dict[str, Any]:
    # File and line locate it; the reference's value is not echoed: a legacy reference may be a
    # patient account number, and the report is a viewer's read (accounts and money only).
    return {"file": gl.file, "line": gl.line, "debit": _money(gl.debit), "credit": _money(gl.credit)}


def _fits(vector: dict[Key, Decimal], residual: dict[Key, Decimal], exact: bool) -> bool:
    """Whether `vector` is part of `residual`: each of its accounts short by at least as much, same
    sign (`exact`: by exactly as much)."""
    for key, amount in vector.items():
        if not amount:
            continue
        have = residual.get(key, ZERO)
        if have * amount <= 0 or abs(have) < abs(amount) or (exact and have != amount):
            return False
    return any(vector.values())


def _take(vector: dict[Key, Decimal], residual: dict[Key, Decimal], sign: int = 1) -> None:
    for key, amount in vector.items():
        left = residual.get(key, ZERO) - sign * amount
        if left:
            residual[key] = left
        else:
            residual.pop(key, None)


def _sources(entries: Iterable[_Entry]) -> list[str]:
    return sorted({s for e in entries for s in e.data.source_event_ids})


def _explain(segs: tuple[str, ...], residual: dict[Key, Decimal], ours: list[_Entry],
             export: list[GlLine]) -> list[Difference]:
    """The differences of the accounts in `residual`, explained (see the module doc), money-ordered."""
    out: list[Difference] = []
    ficus_net: dict[Key, Decimal] = defaultdict(Decimal)
    export_net: dict[Key, Decimal] = defaultdict(Decimal)
    for entry in ours:
        for key, amount in entry.vector.items():
            ficus_net[key] += amount
    for gl in export:
        export_net[_key(segs, {**gl.account, "facility": gl.facility})] += gl.debit - gl.credit
    left = dict(residual)
    exported_refs = {gl.reference for gl in export if gl.reference}
    groups: dict[str, list[GlLine]] = defaultdict(list)
    for gl in export:
        groups[gl.reference or f"{gl.file}:{gl.index}"].append(gl)
    our_refs = set().union(*(e.refs for e in ours)) if ours else set()

    def touching(key: Key) -> list[_Entry]:
        return [e for e in ours if e.vector.get(key)]

    # Entries the export has no line for, exact matches first. With references in the export, an
    # entry must also be what its reference is short of: a reference may be shared (an account
    # number over several charges), so its being in the export does not mean the entry is.
    by_ref: dict[str, dict[Key, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    ref_of: dict[str, str | None] = {}
    for entry in ours:
        ref = min(entry.refs & exported_refs, default=None)
        ref_of[entry.data.entry_id] = ref
        if ref is not None:
            for key, amount in entry.vector.items():
                by_ref[ref][key] += amount
    for gl in export:
        if gl.reference in by_ref:
            by_ref[gl.reference][_key(segs, {**gl.account, "facility": gl.facility})] -= gl.debit - gl.credit
    taken: set[str] = set()
    for exact in (True, False):
        for entry in sorted(ours, key=lambda e: (ref_of[e.data.entry_id] is not None, -e.total, e.data.entry_id)):
            ref = ref_of[entry.data.entry_id]
            if entry.data.entry_id in taken or not _fits(entry.vector, left, exact):
                continue
            if ref is not None and not _fits(entry.vector, by_ref[ref], exact=False):
                continue
            _take(entry.vector, left)
            if ref is not None:
                _take(entry.vector, by_ref[ref])
            taken.add(entry.data.entry_id)
            out.append(Difference(
                "missing_in_export", entry.total, entry.data.facility,
                [_label(segs, k) for k in sorted(entry.vector)],
                f"entry {entry.data.entry_id} ({entry.data.source_event_type}) has no line in the export",
                [entry.data.entry_id], list(entry.data.source_event_ids)))
    # Export lines no entry accounts for (a group: the lines of one reference, else one line).
    for ref, group in sorted(groups.items()):
        if exported_refs and ref in our_refs:
            continue
        vector: dict[Key, Decimal] = defaultdict(Decimal)
        for gl in group:
            vector[_key(segs, {**gl.account, "facility": gl.facility})] += gl.debit - gl.credit
        negated = {k: -v for k, v in vector.items()}
        # Only a balanced group is a posting of its own: a lone line of an export without references
        # is one side of one, left to the account steps below.
        if sum(vector.values(), ZERO) == 0 and _fits(negated, left, exact=not exported_refs):
            _take(negated, left)
            money = sum((gl.debit for gl in group), ZERO)
            out.append(Difference(
                "missing_in_ficus", money, group[0].facility, [_label(segs, k) for k in sorted(vector)],
                "export line(s) of one reference with no entry in Ficus" if group[0].reference
                else "export line with no entry in Ficus",
                export_lines=[_line_ref(gl) for gl in group]))
    # Two accounts of a facility whose differences cancel, Ficus's lines making one of them and the
    # export's the other: the money is on the wrong account. (Two accounts Ficus's lines make both,
    # e.g. the AR and revenue of one entry, are not a move.)
    def made_by(net: dict[Key, Decimal], key: Key, sign: int) -> bool:
        have = net.get(key, ZERO) * sign
        return have * left[key] > 0 and abs(have) >= abs(left[key])

    for a in sorted(left):
        if a not in left:
            continue
        for b in sorted(left):
            if b == a or b[0] != a[0] or left.get(b) != -left[a]:
                continue
            if made_by(ficus_net, a, 1) and made_by(export_net, b, -1):
                ficus_key, export_key = a, b
            elif made_by(ficus_net, b, 1) and made_by(export_net, a, -1):
                ficus_key, export_key = b, a
            else:
                continue
            moved = [s for s, x, y in zip(segs, ficus_key, export_key, strict=True) if x != y]
            amount = abs(left[a])
            behind = [e for e in touching(ficus_key) if abs(e.vector[ficus_key]) <= amount]
            behind = [e for e in behind if abs(e.vector[ficus_key]) == amount] or behind
            lines = [gl for gl in export if _key(segs, {**gl.account, "facility": gl.facility}) == export_key]
            refs = {gl.reference for gl in lines if gl.reference}
            if refs:  # the export's lines on its account name the entries that went elsewhere
                named = [e for e in behind if e.refs & refs]
                behind = named or behind
                lines = [gl for gl in lines if any(gl.reference in e.refs for e in behind)] or lines
            out.append(Difference(
                "account_differs", amount, a[0], [_label(segs, ficus_key), _label(segs, export_key)],
                f"{', '.join(s.replace('_', ' ') for s in moved)} differs: Ficus booked {amount} on "
                f"{'-'.join(ficus_key)}, the export on {'-'.join(export_key)}",
                [e.data.entry_id for e in behind], _sources(behind), [_line_ref(gl) for gl in lines]))
            del left[a], left[b]
            break
    for key, diff in sorted(left.items()):
        behind = touching(key)
        out.append(Difference(
            "amounts_differ", abs(diff), key[0], [_label(segs, key)],
            f"Ficus nets {diff:+} against the export on {'-'.join(key)}",
            [e.data.entry_id for e in behind], _sources(behind),
            [_line_ref(gl) for gl in export if _key(segs, {**gl.account, "facility": gl.facility}) == key]))
    out.sort(key=lambda d: (-d.money, d.kind, d.facility))
    return out


async def day_entries(store: Store, day: str) -> list[JournalEntryData]:
    """The journal entries of posting day `day` (live and shadow) from the posting index."""
    out: list[JournalEntryData] = []
    after = 0
    while True:
        rows = await store.read(names.STREAM_POSTIDX, postidx_subject("*", day), after, 10_000)
        for seq, data, _ in rows:
            out.append(JournalEntryEvent.model_validate_json(data).data)
            after = seq
        if len(rows) < 10_000:
            return out


async def report(store: Store, interface: str, segments: Sequence[str], day: str) -> Report:
    """The GL parity report of `interface` (a gl-export interface) for `day`."""
    lines = await gl_export.day_lines(store, interface, day)
    return compare(day, segments, lines, await day_entries(store, day))


@dataclass(frozen=True)
class GateVerdict:
    """The GL gate's answer: why a flip to modern is refused (None: allowed) and the days it judged."""

    refusal: str | None
    days: list[dict[str, Any]]


async def gate(store: Store, interface: str, segments: Sequence[str], needed: int) -> GateVerdict:
    """Judges a flip of the GL export interface to modern: the `needed` latest days with an export
    must be consecutive calendar days, each at zero difference. A day without an export breaks the
    run: the ERP got no postings from the legacy path that day, so nothing was proven."""
    days = await gl_export.export_days(store, interface)
    judged: list[dict[str, Any]] = []
    run = 0
    previous: date | None = None
    for day in reversed(days):
        current = date.fromisoformat(day)
        if previous is not None and previous - current != timedelta(days=1):
            break
        result = await report(store, interface, segments, day)
        judged.append({"day": day, "zero_difference": result.zero, "differences": len(result.differences)})
        if not result.zero:
            break
        run += 1
        previous = current
        if run >= needed:
            return GateVerdict(None, judged)
    latest = f" (latest {days[-1]})" if days else ""
    return GateVerdict(f"GL parity of {interface}: {run} consecutive export day(s) at zero difference{latest}, "
                       f"{needed} needed (or force)", judged)


async def flip_verdict(store: Store, interface: str, segments: Sequence[str], gate_days: int, route: Route,
                       mode: Mode, facility: str | None) -> parity.Verdict:
    """The flip gate of the GL export interface (the posting path's route), in place of the sample
    gate of other interfaces (a GL export is not translated, so it has no samples): a flip to
    modern from shadow needs `gate_days` consecutive export days at zero difference."""
    current = route.mode_for(facility)
    window: dict[str, Any] = {"gate_days": gate_days, "days": []}
    if mode != "modern" or current == "modern":
        return parity.Verdict(None, window)
    if current != "shadow":
        return parity.Verdict(f"{interface} is in {current}: run it in shadow first to gather GL parity (or force)",
                              window)
    verdict = await gate(store, interface, segments, gate_days)
    return parity.Verdict(verdict.refusal, {**window, "days": verdict.days})
