"""Status lookups kept as views: claims, remittances and account charges, in JetStream KV.

A durable consumer (`VIEWS_CONSUMER`) on the live canonical stream applies each event to
the view entries it touches. An entry keeps one *fact* per event id (what the lookup needs
of that event, with its stream sequence); the answer is derived from the facts when read.
So applying an event twice changes nothing, a replayed event (same CloudEvent id, new
sequence) replaces its earlier fact instead of counting twice, and the views can be rebuilt
from the stream at any time (`rebuild`). Writes are compare-and-set on the entry's
revision, so several instances sharing the consumer and the buckets never lose a fact.

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
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from canonical.subjects import CHARGE_CREDITED, CHARGE_POSTED
from canonical.x12.events import ADJUSTMENT_RECORDED, CLAIM_ADJUDICATED, DENIAL_RECORDED, REMITTANCE_RECEIVED
from router import names
from router.store import Bucket, RevisionConflict, Store, StoredMsg, StoreError
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

    def __init__(self, store: Store, max_entry: int | None = None) -> None:
        self.store = store
        self._buckets: dict[View, Bucket] = {}
        # A KV value is one NATS message: an entry stops growing below the server's max_payload.
        self.max_entry = max_entry if max_entry is not None else max(4096, store.max_payload - 64 * 1024)
        self._full: set[tuple[View, str]] = set()
        """Entries known to be full here: later facts skip them without reading them."""
        self.applied = 0
        """Facts written since start (for tests and status)."""

    async def bucket(self, view: View) -> Bucket:
        if view not in self._buckets:
            self._buckets[view] = await self.store.kv(BUCKETS[view], history=1)
        return self._buckets[view]

    async def get(self, view: View, ident: str) -> dict[str, Any] | None:
        """The stored entry of an id, or None."""
        entry = await (await self.bucket(view)).get(key_of(ident))
        return json.loads(entry.value) if entry is not None and entry.value else None

    async def apply(self, msg: StoredMsg) -> int:
        """Applies one stored canonical event; returns how many entries changed."""
        try:
            event = json.loads(msg.data)
        except ValueError:
            return 0
        if not isinstance(event, dict):
            return 0
        changed = 0
        try:
            for fact in facts_of(event, msg.seq):
                changed += await self._put(fact)
        except StoreError:
            self._buckets.clear()  # a rebuild may have replaced a bucket: look it up again next time
            raise
        return changed

    async def _put(self, fact: Fact) -> int:
        bucket = await self.bucket(fact.view)
        key = key_of(fact.ident)
        if (fact.view, key) in self._full:
            return 0
        for _ in range(CAS_ATTEMPTS):
            current = await bucket.get(key)
            entry: dict[str, Any] = (json.loads(current.value) if current is not None and current.value
                                     else {"id": fact.ident, "facts": {}})
            old = entry["facts"].get(fact.event_id)
            # The same event again (or an older copy of it) changes nothing; a later copy replaces it.
            if old is not None and old["seq"] >= fact.body["seq"]:
                return 0
            entry["facts"][fact.event_id] = fact.body
            value = json.dumps(entry, separators=(",", ":"), default=str).encode()
            if len(value) > self.max_entry:
                # A huge remittance (or account): the entry keeps what it has and says it is
                # incomplete, rather than blocking the consumer on a write the server refuses.
                self._full.add((fact.view, key))
                if entry.get("truncated"):
                    return 0
                del entry["facts"][fact.event_id]
                entry["truncated"] = True
                log.warning("views: an entry of %s is full (%d bytes); later facts are not kept",
                            BUCKETS[fact.view], len(value))
                value = json.dumps(entry, separators=(",", ":"), default=str).encode()
            try:
                if current is None:
                    await bucket.create(key, value)
                else:
                    await bucket.update(key, value, current.revision)
            except RevisionConflict:
                continue  # another instance wrote first: read its value and apply on top
            self.applied += 1
            return 1
        raise RevisionConflict(f"{BUCKETS[fact.view]}: {CAS_ATTEMPTS} conflicting writes in a row")

    async def run(self) -> None:
        """The durable consumer on the live canonical stream; runs until cancelled."""
        async def handle(msg: StoredMsg) -> None:
            await self.apply(msg)

        await consume(self.store, names.STREAM_CANONICAL, names.SUBJECTS_CANONICAL, VIEWS_CONSUMER, handle)

    async def rebuild(self) -> int:
        """Drops the view buckets and applies the whole live stream again; returns the events read.

        The durable consumer keeps running meanwhile: what it writes during the rebuild is a
        fact the scan writes too, and the per-event facts make the two agree.
        """
        for view, name in BUCKETS.items():
            await delete_bucket(self.store, name)
            self._buckets.pop(view, None)
        self._full.clear()
        read = 0
        async with contextlib.aclosing(self.store.scan(names.STREAM_CANONICAL, names.SUBJECTS_CANONICAL,
                                                       datetime(1970, 1, 1, tzinfo=UTC))) as scan:
            async for msg in scan:
                await self.apply(msg)
                read += 1
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
