"""Replay: translating stored raw units again, after a mapping or reference-table fix.

For every interface kind, through the one stage (router/stage.py): each kind's input reads
its raw archive back (``replay_chunks``: MLLP messages and database rows from the raw stream,
files from the raw object store by their manifest entries) and hands the records to the
stage as at reception, with a replay token. Two entry points:

- every raw unit of an interface since a time (``POST /api/v1/replay/{iface}``,
  ``ficus replay IFACE --since T``), optionally as a dry run that publishes nothing and
  says how the result differs from what was published before: counts and money, then the
  first differing events (:class:`Diff`);
- one dead letter of an MLLP interface (``POST /api/v1/dlq/{id}/replay``, ``ficus dlq
  replay``), recorded in the KV bucket ``ficus-dlq-replays`` so listings show it as done.

Replayed events carry their usual CloudEvents ids (consumers upsert by them) under Msg-Ids
suffixed with the run's token, so JetStream takes corrected events it saw within the
duplicate window; the ledger counts them on a ``replayed`` line, beside the equation of
receptions (router/ledger.py). A unit that still does not translate is reported, not
dead-lettered again. An interface routed ``legacy`` replays onto ``shadow.`` subjects:
evidence for the flip, never live events of an interface the ERP does not take yet.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, cast

from canonical.envelope import CloudEvent
from router import dlq, ledger, names
from router.mllp_pipeline import REUSED_CONTROL_ID, MllpPipeline
from router.sinks import redeliver_letter
from router.stage import Outcome, Record, ReplayChunk, Stage
from router.store import Store, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from router.service import Running

KV_REPLAYS = "ficus-dlq-replays"
FIRST_DIFFERENCES = 10
"""Differing events a dry run describes one by one."""
MAX_REASONS = 20


class ReplayError(Exception):
    """A replay that cannot be done; `status` is the HTTP status."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Replayable(Protocol):
    """What replay needs of a kind's input: its stage and its raw units read back."""

    stage: Stage

    def replay_chunks(self, since: datetime) -> AsyncGenerator[ReplayChunk, None]: ...


@dataclass
class Progress:
    """Where a replay is: raw units done (of a total when the input knows it)."""

    units: int = 0
    records: int = 0
    events: int = 0
    remaining: int | None = None
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        return {"units": self.units, "records": self.records, "events": self.events,
                "total": None if self.remaining is None else self.units + self.remaining,
                "seconds": round(seconds, 1), "rate": round(self.units / seconds, 1) if seconds > 0 else 0.0}


@dataclass
class ReplayResult:
    interface: str = ""
    dry_run: bool = False
    replayed: int = 0
    """Records (messages, file records, rows) translated again and published (or publishable)."""
    units: int = 0
    """Raw units read back (messages, files, rows)."""
    events: int = 0
    failed: int = 0
    legacy: int = 0
    money: ledger.Money = field(default_factory=ledger.Money)
    reasons: list[str] = field(default_factory=list)
    token: str = ""
    diff: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interface": self.interface, "dry_run": self.dry_run, "replayed": self.replayed,
                               "units": self.units, "events": self.events, "failed": self.failed,
                               "money": self.money.as_json(), "reasons": self.reasons[:MAX_REASONS]}
        if self.token:
            out["token"] = self.token
        if self.diff is not None:
            out["diff"] = self.diff
        return out


def _input(svc: Running, interface: str) -> Replayable:
    running = svc.interfaces.get(interface)
    if running is None:
        raise ReplayError(f"unknown interface {interface!r}", 404)
    pipeline = running.pipeline
    if not hasattr(pipeline, "replay_chunks") or not hasattr(pipeline, "stage"):
        raise ReplayError(f"{interface}: a {running.cfg.kind} interface cannot be replayed")
    return cast(Replayable, pipeline)


def _token() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)


def _routed(stage: Stage, records: list[Record]) -> None:
    """Fixes each record's mode for a replay: the route now; legacy means shadow (see above)."""
    route = stage.route()
    for record in records:
        mode = record.mode or route.mode_for(record.route_facility)
        record.mode = "shadow" if mode == "legacy" else mode


async def replay_since(
    svc: Running, interface: str, since: datetime, *, dry_run: bool = False, limit: int = 1_000_000,
    progress: Callable[[Progress], None] | None = None,
) -> ReplayResult:
    """Re-translates every raw unit of an interface stored since ``since`` (see the module
    docstring); ``progress`` is called after each chunk. Raises ReplayError."""
    source = _input(svc, interface)
    stage = source.stage
    result = ReplayResult(interface=interface, dry_run=dry_run, token="" if dry_run else _token())
    diff = Diff() if dry_run else None
    where = Progress()
    try:
        async with contextlib.aclosing(source.replay_chunks(since)) as chunks:
            async for chunk in chunks:
                _routed(stage, chunk.records)
                out = Outcome(replay=result.token or "dry-run", keep=dry_run)
                for record in chunk.records:
                    stage.add(out, record)
                if diff is not None:
                    diff.after(out.published)
                    diff.raws.update(r.raw for r in chunk.records if r.raw)
                else:
                    await stage.commit(out, batch=chunk.batch)
                result.units += chunk.units
                result.replayed += out.records - len(out.failed)
                result.events += len(out.events)
                result.failed += len(out.failed)
                result.money.add(out.money)
                result.reasons += [f"{r.locator}: {r.error.reason}" for r in out.failed
                                   if r.error is not None][: max(0, MAX_REASONS - len(result.reasons))]
                where.units, where.records, where.events = result.units, result.replayed, result.events
                where.remaining = chunk.remaining
                if progress is not None:
                    progress(where)
                if result.units >= limit:
                    break
        if diff is not None:
            await diff.before(svc.store, interface, since)
            result.diff = diff.report()
    except StoreUnavailable as exc:
        raise ReplayError(f"{interface}: replay stopped after {result.units} units: {exc.reason}", 503) from exc
    except StoreError as exc:
        raise ReplayError(f"{interface}: replay stopped after {result.units} units: {exc}", 503) from exc
    return result


# -- dry run: what would change -------------------------------------------------------------


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """What a replay may change in an event: its type, facility and data (not its time of
    reception, mode or raw reference)."""
    return {"type": body.get("type"), "ficusfacility": body.get("ficusfacility"), "data": body.get("data")}


def _money_of_json(body: dict[str, Any]) -> ledger.Money:
    """The money of a stored event, from its JSON (the ledger's definitions)."""
    kind, data = str(body.get("type", "")), body.get("data") or {}
    out = ledger.Money()
    try:
        if ".revenue.charge." in kind:
            out.charges += Decimal(str(data.get("amount") or 0))
        elif ".claims.claim.adjudicated." in kind:
            out.charges += Decimal(str(data.get("charge") or 0))
            out.payments += Decimal(str(data.get("paid") or 0))
            out.adjustments += Decimal(str(data.get("adjustment_total") or 0))
        elif ".claims.remittance.received." in kind:
            out.adjustments += Decimal(str(data.get("total_provider_adjustment") or 0))
    except ArithmeticError:
        pass
    return out


def _changed_fields(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """The leaves that differ between two JSON values, with their values before and after."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += _changed_fields(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    if a == b:
        return []
    return [{"field": path, "before": a, "after": b}]


class Diff:
    """A dry run's comparison: the events a replay would publish against those published
    before for the same raw units (matched by CloudEvents id)."""

    def __init__(self) -> None:
        self.new: dict[str, dict[str, Any]] = {}
        self.old: dict[str, dict[str, Any]] = {}
        self.raws: set[str] = set()

    def after(self, events: list[CloudEvent]) -> None:
        for ev in events:
            self.new[ev.id] = json.loads(ev.to_json())

    async def before(self, store: Store, interface: str, since: datetime) -> None:
        """The events published for the replayed raw units (the last version of each id)."""
        for stream in (names.STREAM_CANONICAL, names.STREAM_SHADOW):
            async with contextlib.aclosing(store.scan(stream, ">", since)) as stored:
                async for msg in stored:
                    if msg.headers.get(names.HDR_INTERFACE) != interface:
                        continue
                    body = json.loads(msg.data)
                    if body.get("ficusraw") in self.raws:
                        self.old[str(body.get("id"))] = body

    def report(self) -> dict[str, Any]:
        def totals(events: dict[str, dict[str, Any]]) -> dict[str, Any]:
            money = ledger.Money()
            types: dict[str, int] = {}
            for body in events.values():
                money.add(_money_of_json(body))
                types[str(body.get("type"))] = types.get(str(body.get("type")), 0) + 1
            return {"events": len(events), "money": money.as_json(), "types": dict(sorted(types.items()))}

        changed = added = removed = 0
        first: list[dict[str, Any]] = []
        for ident in [*self.new, *(i for i in self.old if i not in self.new)]:  # replay order
            a, b = self.old.get(ident), self.new.get(ident)
            if a is None:
                added += 1
                entry: dict[str, Any] = {"id": ident, "type": b and b.get("type"), "change": "added"}
            elif b is None:
                removed += 1
                entry = {"id": ident, "type": a.get("type"), "change": "removed"}
            else:
                fields = _changed_fields(_comparable(a), _comparable(b))
                if not fields:
                    continue
                changed += 1
                entry = {"id": ident, "type": b.get("type"), "change": "changed", "fields": fields[:20]}
            if len(first) < FIRST_DIFFERENCES:
                first.append(entry)
        return {"before": totals(self.old), "after": totals(self.new), "changed": changed, "added": added,
                "removed": removed, "unchanged": len(set(self.new) & set(self.old)) - changed, "first": first}


def without_values(diff: dict[str, Any]) -> dict[str, Any]:
    """A dry run's differences without the fields' values (for a caller who may not read
    message content): which events and which fields would change, and the totals."""
    first = [{**entry, "fields": [{"field": f["field"]} for f in entry.get("fields", [])]}
             if "fields" in entry else entry for entry in diff.get("first", [])]
    return {**diff, "first": first}


# -- one dead letter ---------------------------------------------------------------------------


async def replay_dead_letter(svc: Running, letter_id: int, *, dry_run: bool = False) -> dict[str, Any]:
    """Re-translates the raw unit of one dead letter; raises ReplayError.

    A dry run translates and stores nothing: it answers what the replay would publish (each
    event's type and id, their money) or why it would still fail (the console shows it before
    the operator confirms)."""
    letter = await dlq.get(svc.store, letter_id)
    if letter is None:
        raise ReplayError(f"no dead letter {letter_id}", 404)
    if letter.reason == REUSED_CONTROL_ID:
        # Its events would carry the ids of the other message under that control id (and be
        # dropped as duplicates, or replace it at consumers that upsert by id).
        raise ReplayError(f"dead letter {letter_id}: {REUSED_CONTROL_ID}; the sender must send it again "
                          "under a new control id")
    if letter_id in await discarded_ids(svc):
        raise ReplayError(f"dead letter {letter_id} was discarded; it is not replayed")
    if letter.interface.startswith(SINK_LETTERS):
        if dry_run:
            return {"letter": letter_id, "interface": letter.interface, "events": 1, "dry_run": True,
                    "would_publish": [], "error": None, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        return await _redeliver(svc, letter_id, letter)
    running = svc.interfaces.get(letter.interface)
    if running is None:
        raise ReplayError(f"unknown interface {letter.interface!r}", 404)
    pipeline = running.pipeline
    if not isinstance(pipeline, MllpPipeline):
        raise ReplayError(f"dead letter {letter_id} is of a {running.cfg.kind} interface: replay its records with "
                          f"`ficus replay {letter.interface} --since T` after the fix")
    if not letter.raw or not letter.raw.startswith("jetstream://"):
        raise ReplayError(f"dead letter {letter_id} has no raw message to replay ({letter.raw or 'none'})")
    stream, seq = names.parse_raw_ref(letter.raw)
    msg = await svc.store.get_msg(stream, seq)
    if msg is None:
        raise ReplayError(f"raw message {letter.raw} is no longer stored (retention)", 410)
    (record,) = pipeline.replay_records([msg]).records
    _routed(pipeline.stage, [record])
    # One token per letter: replaying it twice stores and counts nothing twice.
    out = Outcome(replay=f"dlq{letter_id}")
    pipeline.stage.add(out, record)
    if dry_run:
        return _dry_letter(letter_id, letter.interface, out, record.error.reason if record.error else None)
    if record.error is not None:
        raise ReplayError(f"still not translatable: {record.error.reason}", 422)
    try:
        await pipeline.stage.commit(out)
    except StoreUnavailable as exc:
        raise ReplayError(exc.reason, 503) from exc
    kv = await svc.store.kv(KV_REPLAYS, history=1)
    done = {"letter": letter_id, "interface": letter.interface, "events": len(out.events),
            "at": datetime.now(UTC).isoformat(timespec="seconds")}
    await kv.put(str(letter_id), json.dumps(done).encode())
    return done


def _dry_letter(letter_id: int, interface: str, out: Outcome, error: str | None) -> dict[str, Any]:
    """A dead letter's dry run: the events a replay would publish (type and id) and their money."""
    would = []
    for item in out.events:
        try:
            body = json.loads(item.payload)
        except ValueError:
            continue
        if isinstance(body, dict):
            would.append({"type": str(body.get("type", "")), "id": str(body.get("id", ""))})
    return {"letter": letter_id, "interface": interface, "events": 0 if error else len(would), "dry_run": True,
            "would_publish": [] if error else would, "money": out.money.as_json(), "error": error,
            "at": datetime.now(UTC).isoformat(timespec="seconds")}


SINK_LETTERS = "sink."
"""A sink's dead letters are on `dlq.sink.<name>`, interface `sink.<name>` (router/sinks.py)."""


async def _redeliver(svc: Running, letter_id: int, letter: dlq.DeadLetter) -> dict[str, Any]:
    """A sink's dead letter: its event sent once more by its sink; done on a 2xx."""
    try:
        attempt = await redeliver_letter(svc.sinks, letter)
    except LookupError as exc:
        raise ReplayError(f"dead letter {letter_id}: {exc}", 410 if "no longer" in str(exc) else 409) from exc
    if not attempt.ok:
        raise ReplayError(f"dead letter {letter_id}: the receiver still refuses it ({attempt.status or 'no answer'}: "
                          f"{attempt.reason})", 422)
    kv = await svc.store.kv(KV_REPLAYS, history=1)
    done = {"letter": letter_id, "interface": letter.interface, "events": 1, "status": attempt.status,
            "at": datetime.now(UTC).isoformat(timespec="seconds")}
    await kv.put(str(letter_id), json.dumps(done).encode())
    return done


KV_DISCARDS = "ficus-dlq-discards"


async def discard_dead_letter(svc: Running, letter_id: int, reason: str, actor: str) -> dict[str, Any]:
    """Marks a dead letter as needing no replay (a test message, a unit sent again under a new
    control id): it stays in the stream and in the ledger's ``dead_lettered``; listings show it
    discarded, with who and why, and it is no longer replayed. Raises ReplayError."""
    letter = await dlq.get(svc.store, letter_id)
    if letter is None:
        raise ReplayError(f"no dead letter {letter_id}", 404)
    if letter_id in await replayed_ids(svc):
        raise ReplayError(f"dead letter {letter_id} was replayed: nothing to discard")
    kv = await svc.store.kv(KV_DISCARDS, history=1)
    done = {"letter": letter_id, "interface": letter.interface, "reason": reason, "actor": actor,
            "at": datetime.now(UTC).isoformat(timespec="seconds")}
    await kv.put(str(letter_id), json.dumps(done).encode())
    return done


async def discarded_ids(svc: Running) -> set[int]:
    """Dead letters discarded (see :func:`discard_dead_letter`)."""
    kv = await svc.store.kv(KV_DISCARDS, history=1)
    return {int(k) for k in await kv.keys() if k.isdigit()}


async def replayed_ids(svc: Running) -> set[int]:
    """Dead letters already replayed successfully."""
    kv = await svc.store.kv(KV_REPLAYS, history=1)
    keys = await kv.keys()
    return {int(k) for k in keys if k.isdigit()}
