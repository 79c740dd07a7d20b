"""Status lookups kept as views: claims, remittances and account charges, in JetStream KV.

A durable consumer (`VIEWS_CONSUMER`) on the live canonical stream applies each event to
the view entries it touches. An entry keeps one *fact* per event id (what the lookup needs
of that event, with its stream sequence); the answer is derived from the facts when read.
So applying an event twice changes nothing, a replayed event (same CloudEvent id, new
sequence) replaces its earlier fact instead of counting twice, and the views can be rebuilt
from the stream at any time (`rebuild`). Writes are compare-and-set on the entry's
revision, so several instances sharing the consumer and the buckets never lose a fact.

Cheap enough to leave on while a large file is ingested (docs/benchmarks.md section 7):
the consumer applies a batch of events at a time, one write per entry per batch; an entry's
head keeps only its newest facts and seals older ones into pages of their own (keys
``<key>.<revision>``), so a write costs a few kilobytes however many claims a remittance or
charges an account has; and the consumer takes a bounded share of the event loop, a small
one while a file or a batch of rows is translated, so it lags behind a large file and
catches up afterwards instead of delaying MLLP ACKs.

Only live (modern) events are kept: shadow events are a rehearsal and have no views.
Keys: KV keys allow only ``[-/_=.a-zA-Z0-9]``, so an id is stored under its URL-safe
base64 form (`key_of`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from canonical.subjects import CHARGE_CREDITED, CHARGE_POSTED
from canonical.x12.events import ADJUSTMENT_RECORDED, CLAIM_ADJUDICATED, DENIAL_RECORDED, REMITTANCE_RECEIVED
from router import names, offload
from router.offload import off_loop
from router.store import Bucket, Entry, RevisionConflict, Store, StoredMsg, StoreError
from router.store.durable import consume, delete_bucket, delete_consumer

log = logging.getLogger(__name__)

View = Literal["claims", "remittances", "charges"]
BUCKETS: dict[View, str] = {
    "claims": "ficus-view-claims",
    "remittances": "ficus-view-remittances",
    "charges": "ficus-view-charges",
}
VIEWS_CONSUMER = "ficus-views"
"""The durable consumer every instance shares on FICUS_CANONICAL."""
CAS_ATTEMPTS = 50
BATCH = 500
"""Events the consumer fetches and applies together: each entry is written once per batch."""
CONCURRENT_WRITES = 16
"""Entries of a batch written at the same time (compare-and-set requests in flight)."""
PAGE_BYTES = 8 * 1024
"""An entry's head keeps its newest facts up to about this size, then seals them into a page."""
HEADS_CACHED = 4096
"""Entry heads remembered after writing them: the next batch's write needs no read first."""
SHARE = 0.5
"""The consumer's most of the loop's (wall) time, batch work against pauses."""
SHARE_WHILE_INGESTING = 0.05
"""... while a file or a batch of rows is worked on (`offload.busy`): ingest comes first."""
MAX_PAUSE_SECONDS = 10.0
"""The longest pause after one batch (a batch slowed by a busy server does not stop the views)."""


def key_of(ident: str) -> str:
    """The KV key of a claim number, trace or account: URL-safe base64, no padding."""
    return base64.urlsafe_b64encode(ident.encode("utf-8")).decode("ascii").rstrip("=") or "_"


@dataclass(frozen=True, slots=True)
class Fact:
    """What one event contributes to one view entry."""

    view: View
    ident: str
    event_id: str
    body: dict[str, Any]


def _money(value: Any) -> str | None:
    return None if value is None else str(value)


def facts_of(event: dict[str, Any], seq: int) -> list[Fact]:
    """The facts a canonical event (decoded JSON) gives; none for types without a view."""
    etype, eid, data = event.get("type"), event.get("id"), event.get("data")
    if not isinstance(eid, str) or not isinstance(data, dict):
        return []
    base = {"seq": seq, "type": etype}
    remit = {k: data.get(k) for k in ("trace_number", "st_control", "interchange_control")}
    claim = data.get("payer_claim_control_number")
    out: list[Fact] = []
    if etype == CLAIM_ADJUDICATED.name:
        body = {**base, **remit, "kind": "claim",
                **{k: data.get(k) for k in ("patient_control_number", "status_code", "reversal", "denied",
                                            "claim_index")},
                **{k: _money(data.get(k)) for k in ("charge", "paid", "patient_responsibility")}}
        if claim:
            out.append(Fact("claims", claim, eid, body))
        if remit["trace_number"]:
            out.append(Fact("remittances", remit["trace_number"], eid, {**body, "payer_claim_control_number": claim}))
    elif etype == ADJUSTMENT_RECORDED.name and claim:
        out.append(Fact("claims", claim, eid, {**base, "kind": "adjustment", "group": data.get("group_code"),
                                              "reason": data.get("reason_code"), "amount": _money(data.get("amount")),
                                              "line_index": data.get("line_index")}))
    elif etype == DENIAL_RECORDED.name and claim:
        out.append(Fact("claims", claim, eid, {**base, **remit, "kind": "denial",
                                              "reason_codes": data.get("reason_codes", []),
                                              "remark_codes": data.get("remark_codes", [])}))
    elif etype == REMITTANCE_RECEIVED.name and remit["trace_number"]:
        keep = ("handling_code", "credit_debit", "payment_method", "payment_date", "production_date", "payer_id",
                "payee_id", "claim_count", "group_control")
        money = ("amount", "total_charge", "total_paid", "total_provider_adjustment")
        out.append(Fact("remittances", remit["trace_number"], eid,
                        {**base, **remit, "kind": "remittance", **{k: data.get(k) for k in keep},
                         **{k: _money(data.get(k)) for k in money}}))
    elif etype in (CHARGE_POSTED.name, CHARGE_CREDITED.name) and data.get("account_number"):
        out.append(Fact("charges", data["account_number"], eid, {**base, "event_id": eid, "charge": data}))
    return out


def _encoded(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def page_key(key: str, revision: int) -> str:
    """The KV key of an entry's page sealed from its head at `revision` (``.`` is not in `key_of`)."""
    return f"{key}.{revision}"


def _keep_latest(into: dict[str, Any], facts: dict[str, Any]) -> None:
    """Merges facts by event id, the copy with the highest sequence winning (a replayed event)."""
    for eid, fact in facts.items():
        old = into.get(eid)
        if old is None or old["seq"] < fact["seq"]:
            into[eid] = fact


def _grouped(msgs: Sequence[StoredMsg]) -> dict[tuple[View, str], list[Fact]]:
    """The facts of stored canonical events by entry (view, id), each entry's in stream order."""
    groups: dict[tuple[View, str], list[Fact]] = {}
    for msg in msgs:
        try:
            event = json.loads(msg.data)
        except ValueError:
            continue
        if isinstance(event, dict):
            for fact in facts_of(event, msg.seq):
                groups.setdefault((fact.view, fact.ident), []).append(fact)
    return groups


def _facts(entry: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return sorted((f for f in entry["facts"].values() if f.get("kind", "charge") == kind), key=lambda f: f["seq"])


def _sum(facts: Iterable[dict[str, Any]], name: str) -> str:
    return str(sum((Decimal(f[name]) for f in facts if f.get(name) is not None), Decimal(0)))


def claim_answer(entry: dict[str, Any]) -> dict[str, Any]:
    """A claim's latest known state: money netted over every remittance that carried it."""
    claims, adjustments, denials = (_facts(entry, k) for k in ("claim", "adjustment", "denial"))
    originals = [c for c in claims if not c.get("reversal")]
    latest = originals[-1] if originals else (claims[-1] if claims else {})
    groups: dict[str, dict[str, Decimal]] = {}
    for adj in adjustments:
        reasons = groups.setdefault(str(adj["group"]), {})
        reasons[str(adj["reason"])] = reasons.get(str(adj["reason"]), Decimal(0)) + Decimal(adj["amount"])
    reversals = [c for c in claims if c.get("reversal")]
    denial = denials[-1] if denials and latest.get("denied") else None
    return {
        "payer_claim_control_number": entry["id"],
        "truncated": bool(entry.get("truncated")),
        "patient_control_number": latest.get("patient_control_number"),
        "status_code": latest.get("status_code"),
        "reversed": bool(reversals),
        "reversals_applied": len(reversals),
        "denied": bool(latest.get("denied")),
        "denial": None if denial is None else {"reason_codes": denial["reason_codes"],
                                               "remark_codes": denial["remark_codes"]},
        "charge": _sum(claims, "charge"),
        "paid": _sum(claims, "paid"),
        "patient_responsibility": _sum(claims, "patient_responsibility"),
        "adjustments": {g: {r: str(a) for r, a in sorted(rs.items())} for g, rs in sorted(groups.items())},
        "remittances": [{k: c.get(k) for k in ("trace_number", "st_control", "interchange_control", "status_code",
                                                "charge", "paid", "reversal", "seq")} for c in claims],
    }


def remittance_answer(entry: dict[str, Any]) -> dict[str, Any]:
    """A remittance's totals, its claims, and whether each transaction balances (BPR02 = CLP04s - PLBs)."""
    transactions = []
    for r in _facts(entry, "remittance"):
        balanced = Decimal(r["amount"]) == Decimal(r["total_paid"]) - Decimal(r["total_provider_adjustment"])
        transactions.append({**{k: v for k, v in r.items() if k not in ("kind", "type")}, "balanced": balanced})
    claims = _facts(entry, "claim")
    return {
        "trace_number": entry["id"],
        "transactions": transactions,
        "amount": _sum(transactions, "amount"),
        "total_charge": _sum(transactions, "total_charge"),
        "total_paid": _sum(transactions, "total_paid"),
        "total_provider_adjustment": _sum(transactions, "total_provider_adjustment"),
        "balanced": all(t["balanced"] for t in transactions),
        "truncated": bool(entry.get("truncated")),
        "claims": [{k: c.get(k) for k in ("payer_claim_control_number", "patient_control_number", "st_control",
                                          "status_code", "charge", "paid", "patient_responsibility", "reversal",
                                          "denied")} for c in claims],
    }


def charge_date(charge: dict[str, Any]) -> str | None:
    """The date a charge is filtered by: its service date, else its posting date (ISO 8601)."""
    value = charge.get("service_date") or charge.get("posting_date")
    return str(value)[:10] if value else None


def charges_answer(entry: dict[str, Any], since: str | None, until: str | None) -> dict[str, Any]:
    """An account's charges with a service (else posting) date within [since, until], in stream order."""
    picked = []
    for fact in sorted(entry["facts"].values(), key=lambda f: f["seq"]):
        day = charge_date(fact["charge"])
        if (since or until) and day is None:
            continue
        if (since and day is not None and day < since) or (until and day is not None and day > until):
            continue
        picked.append({"event_id": fact["event_id"], "type": fact["type"], **fact["charge"]})
    return {"account": entry["id"], "from": since, "to": until, "charges": picked,
            "truncated": bool(entry.get("truncated")),
            "net_amount": _sum(picked, "net_amount")}


class Views:
    """The three view buckets and the consumer that keeps them."""

    def __init__(self, store: Store, max_entry: int | None = None, page_bytes: int = PAGE_BYTES) -> None:
        self.store = store
        self._buckets: dict[View, Bucket] = {}
        # A KV value is one NATS message: an entry stops growing below the server's max_payload.
        self.max_entry = max_entry if max_entry is not None else max(4096, store.max_payload - 64 * 1024)
        self.page_bytes = page_bytes
        self._heads: dict[tuple[View, str], Entry] = {}
        """The heads this instance wrote last (at most `HEADS_CACHED`, oldest dropped first)."""
        self._full: set[tuple[View, str]] = set()
        """Entries known to be full here: later facts skip them without reading them."""
        self.applied = 0
        """Facts written since start (for tests and status)."""

    async def bucket(self, view: View) -> Bucket:
        if view not in self._buckets:
            self._buckets[view] = await self.store.kv(BUCKETS[view], history=1)
        return self._buckets[view]

    async def get(self, view: View, ident: str) -> dict[str, Any] | None:
        """The stored entry of an id (its head's facts and its sealed pages' together), or None."""
        bucket = await self.bucket(view)
        key = key_of(ident)
        current = await bucket.get(key)
        if current is None or not current.value:
            return None
        head = json.loads(current.value)
        facts = await self._sealed(bucket, key, head)
        _keep_latest(facts, head["facts"])
        return {"id": head["id"], "facts": facts, "truncated": bool(head.get("truncated"))}

    async def _sealed(self, bucket: Bucket, key: str, head: dict[str, Any]) -> dict[str, Any]:
        """The facts of an entry's sealed pages (none for most entries), the latest copy of each event."""
        facts: dict[str, Any] = {}
        for page in await asyncio.gather(*(bucket.get(page_key(key, rev)) for rev in head.get("pages", []))):
            if page is None or not page.value:  # written before the head that names it: only a lost bucket
                raise StoreError(f"{bucket.name}: a page of an entry is missing")
            _keep_latest(facts, json.loads(page.value))
        return facts

    async def apply(self, msg: StoredMsg) -> int:
        """Applies one stored canonical event; returns how many entries changed."""
        return await self.apply_batch([msg])

    async def apply_batch(self, msgs: Sequence[StoredMsg]) -> int:
        """Applies stored canonical events (in stream order); returns how many entries changed.

        The facts are grouped by entry, so an entry is read and written once per batch, not
        once per event: a remittance of a thousand claims is rewritten a few times, not a
        thousand. The entries are written concurrently, `CONCURRENT_WRITES` at a time.
        """
        groups = await off_loop(_grouped, msgs) if len(msgs) > 1 else _grouped(msgs)
        items = list(groups.items())
        changed = 0
        try:
            for start in range(0, len(items), CONCURRENT_WRITES):
                done = await asyncio.gather(*(self._merge(view, ident, facts)
                                              for (view, ident), facts in items[start:start + CONCURRENT_WRITES]),
                                            return_exceptions=True)
                for result in done:  # every write of the chunk finished: no task is left behind
                    if isinstance(result, BaseException):
                        raise result
                    changed += result
        except StoreError:
            self._buckets.clear()  # a rebuild may have replaced a bucket: look it up again next time
            raise
        return changed

    async def _merge(self, view: View, ident: str, facts: list[Fact]) -> int:
        """Adds an entry's facts of one batch with one compare-and-set write of its head; 1 if it changed."""
        bucket = await self.bucket(view)
        key = key_of(ident)
        if (view, key) in self._full:
            return 0
        # The head this instance wrote last is likely still current (else the write conflicts and
        # reads it); an id not seen is likely new (a claim is adjudicated once): create it unread.
        current: Entry | None = self._heads.pop((view, key), None)
        read = False
        for _ in range(CAS_ATTEMPTS):
            if read:
                current = await bucket.get(key)
            head: dict[str, Any] = (json.loads(current.value) if current is not None and current.value
                                    else {"id": ident, "facts": {}})
            last = head["seq"] if "seq" in head else max((f["seq"] for f in head["facts"].values()), default=0)
            # A fact at or below the entry's last sequence may be there already (applied twice, or
            # another instance's later batch came first): compare with every fact it keeps.
            sealed = (await self._sealed(bucket, key, head) if any(f.body["seq"] <= last for f in facts)
                      else None)
            page, full = self._merged(head, last, facts, sealed)
            if full and (view, key) not in self._full:
                self._full.add((view, key))
                log.warning("views: an entry of %s is full (%s bytes); later facts are not kept", BUCKETS[view],
                            head.get("size"))
            if page is None:
                if current is not None:
                    self._heads[(view, key)] = current
                return 0
            if page and current is not None:
                # Sealed under the head revision it came from: a rival writer seals the same facts
                # under the same key, so the unconditional write is safe; the head names it after.
                await bucket.put(page_key(key, current.revision), _encoded(page))
                head["pages"] = [*head.get("pages", []), current.revision]
            value = _encoded(head)
            try:
                if current is None:
                    revision = await bucket.create(key, value)
                else:
                    revision = await bucket.update(key, value, current.revision)
            except RevisionConflict:
                read = True  # it exists, or another instance wrote first: read its value and apply on top
                continue
            self._heads[(view, key)] = Entry(key, value, revision)
            while len(self._heads) > HEADS_CACHED:
                del self._heads[next(iter(self._heads))]  # the least recently written
            self.applied += 1
            return 1
        raise RevisionConflict(f"{BUCKETS[view]}: {CAS_ATTEMPTS} conflicting writes in a row")

    def _merged(self, head: dict[str, Any], last: int, facts: list[Fact],
                sealed: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        """Adds `facts` to `head` in place. Returns the page to seal first (None: nothing changes;
        empty: nothing to seal) and whether the entry is full.

        The same event again (or an older copy of it) changes nothing; a later copy is added
        and the read keeps the latest copy of each event. An entry keeps its newest facts in its
        head and seals them into a page of their own when they pass `page_bytes`, so a write
        costs the head's size, not the entry's. A fact that would take the entry past
        `max_entry` (a huge remittance or account) is not kept, nor any after it: the entry
        keeps what it has and says it is incomplete (the lookup answers stay bounded).
        """
        kept: dict[str, Any] = head["facts"]
        if "size" in head:
            size, in_head = head["size"], head["head_size"]
        else:  # a head written before pages: all its facts are in it
            size = in_head = len(_encoded(kept))
        page: dict[str, Any] = {}
        if in_head >= self.page_bytes:
            page, kept, in_head = kept, {}, 0
            head["facts"] = kept
        added = full = False
        for fact in facts:
            seq = fact.body["seq"]
            if seq <= last:
                old = kept.get(fact.event_id) or (sealed or {}).get(fact.event_id) or page.get(fact.event_id)
                if old is not None and old["seq"] >= seq:
                    continue
            # "id":{...}, -- counted in full even when it replaces a fact: the size only errs high.
            grows = len(_encoded({fact.event_id: fact.body}))
            if size + grows > self.max_entry:
                full = True
                break
            kept[fact.event_id] = fact.body
            size += grows
            in_head += grows
            last = max(last, seq)
            added = True
        if full and not head.get("truncated"):
            head["truncated"] = True
        elif not added:
            return None, full
        head["size"], head["head_size"], head["seq"] = size, in_head, last
        return page, full

    async def run(self) -> None:
        """The durable consumer on the live canonical stream; runs until cancelled.

        The views have a lower priority than ingest: after each batch the consumer pauses in
        proportion to the time the batch took, so it uses at most `SHARE` of the loop's time
        (`SHARE_WHILE_INGESTING` while a file or a batch of rows is worked on). The views may
        lag behind a large file, then catch up; an MLLP ACK does not wait behind them.
        """
        spent = 0.0

        async def handle(msgs: list[StoredMsg]) -> None:
            nonlocal spent
            started = time.monotonic()
            await self.apply_batch(msgs)
            spent = time.monotonic() - started

        async def rest() -> None:  # after the batch is acknowledged: a long pause is no redelivery
            share = SHARE_WHILE_INGESTING if offload.busy() else SHARE
            await asyncio.sleep(min(MAX_PAUSE_SECONDS, spent * (1 - share) / share))

        await consume(self.store, names.STREAM_CANONICAL, names.SUBJECTS_CANONICAL, VIEWS_CONSUMER, handle,
                      batch=BATCH, after=rest)

    async def rebuild(self) -> int:
        """Drops the view buckets and applies the whole live stream again; returns the events read.

        The durable consumer keeps running meanwhile: what it writes during the rebuild is a
        fact the scan writes too, and the per-event facts make the two agree.
        """
        for view, name in BUCKETS.items():
            await delete_bucket(self.store, name)
            self._buckets.pop(view, None)
        self._full.clear()
        self._heads.clear()
        read = 0
        batch: list[StoredMsg] = []
        async with contextlib.aclosing(self.store.scan(names.STREAM_CANONICAL, names.SUBJECTS_CANONICAL,
                                                       datetime(1970, 1, 1, tzinfo=UTC))) as scan:
            async for msg in scan:
                batch.append(msg)
                read += 1
                if len(batch) >= BATCH:
                    await self.apply_batch(batch)
                    batch = []
        if batch:
            await self.apply_batch(batch)
        return read


_VIEWS: weakref.WeakKeyDictionary[Store, Views] = weakref.WeakKeyDictionary()


def views_of(store: Store) -> Views:
    """One `Views` per store, shared by the consumer and the API (its buckets looked up once)."""
    if store not in _VIEWS:
        _VIEWS[store] = Views(store)
    return _VIEWS[store]


async def reset_consumer(store: Store) -> None:
    """Forgets the shared consumer's position (it starts again from the first event)."""
    await delete_consumer(store, names.STREAM_CANONICAL, VIEWS_CONSUMER)


async def keep(views: Views) -> None:
    """The task a service runs: the consumer, restarted after an unexpected error."""
    while True:
        try:
            await views.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged by kind, retried: the views must not stop
            log.warning("views: consumer stopped (%s); restarting", type(exc).__name__)
            await asyncio.sleep(1.0)
