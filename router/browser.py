"""The message browser (issue 16): find units by business key, interface and time, and follow
their links through the correlation id.

Search (``GET /api/v1/messages``) reads the key index (router/keyindex.py), never a scan: with a
key (``control_id``, ``account``, ``encounter``, ``claim``, ``trace``, ``unit``) the value is
hashed with the deployment's keyed hash and its one subject ``keys.<kind>.<hash>`` is paged
(by time when ``from`` is given); without one, ``keys.msg.<interface>.*`` is paged from ``from``
(the stream's time positions). Further keys, ``interface`` and ``to`` filter the page, so a page
may hold fewer than ``limit`` results; its ``cursor`` goes on where it stopped.

The chain (``GET /api/v1/messages/{correlation}``) gathers the unit's records on
``keys.msg.*.<hash of the correlation>`` (its first commit, a re-send's, a replay's): the raw
units they name (reference and size), the events (read by stream sequence), the dead letters
(router/dlq.py), their replays (the KV ``ficus-dlq-replays``, router/replay.py) and each event's
sink deliveries (``keys.dlv.<event id>``, router/sinks.py).

Both answers are message content (identifiers, events): they need content access (an admin or a
client granted content, router/api.py CONSUMER) and are audited as ``message_search`` and
``message_read``, whose records name the keys' hashes, never their values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, ClassVar

from aiohttp import web
from pydantic import Field

from router import dlq, keyindex, names, queries
from router.replay import KV_REPLAYS
from router.store import Store, StoredMsg

SEARCH_MAX = 200
"""Results one page holds at most."""
CHAIN_UNITS = 50
"""Index records of one correlation read (a unit's commits, re-sends and replays)."""
CHAIN_EVENTS = 100
"""Events a chain reads in full (the rest are listed by id and sequence)."""
DELIVERIES_PER_EVENT = 20
QUERY_KINDS = {"control_id": "control", "claim": "claim", "trace": "trace", "account": "account",
               "encounter": "encounter", "unit": "unit"}
"""Query parameter -> key kind, the most selective first (the one whose subject is paged)."""


class MessagesQuery(queries.Query):
    """GET /api/v1/messages."""

    REASONS: ClassVar[dict[str, str]] = {
        "interface": "interface names are slugs: lowercase letters, digits, - and _",
        "from": 'from must be an ISO 8601 time, e.g. "2026-11-25T08:00:00Z"',
        "to": 'to must be an ISO 8601 time, e.g. "2026-11-25T08:00:00Z"',
        "limit": "limit must be a non-negative integer",
        "cursor": "not a cursor of this API",
        **{name: f"{name} is at most {keyindex.MAX_VALUE} characters" for name in QUERY_KINDS},
    }

    interface: queries.Interface | None = Field(None, description="units of this interface")
    start: queries.Time | None = Field(None, alias="from", description="units committed at or after this time")
    end: queries.Time | None = Field(None, alias="to", description="units committed up to this time")
    control_id: str | None = Field(None, max_length=keyindex.MAX_VALUE, description="MSH-10")
    account: str | None = Field(None, max_length=keyindex.MAX_VALUE, description="an account number (PID-18)")
    encounter: str | None = Field(None, max_length=keyindex.MAX_VALUE, description="an encounter number (PV1-19)")
    claim: str | None = Field(None, max_length=keyindex.MAX_VALUE, description="a claim number (CLP01 or CLP07)")
    trace: str | None = Field(None, max_length=keyindex.MAX_VALUE, description="an EFT or check trace (TRN02)")
    unit: str | None = Field(None, max_length=keyindex.MAX_VALUE, description=(
        "a unit's locator: a file name and line, a table and key"))
    limit: queries.Count = Field(50, description=f"results per page; at most {SEARCH_MAX} are served")
    cursor: str | None = Field(None, max_length=1024, description="where the previous page ended (its `cursor`)")

    def keys(self) -> dict[str, str]:
        """The key values asked for, by kind, in QUERY_KINDS order."""
        return {kind: value for name, kind in QUERY_KINDS.items() if (value := getattr(self, name))}


class SearchError(ValueError):
    """A search the API answers with 400."""


def _digest(subject: str, hashed: dict[str, str], query: MessagesQuery) -> str:
    key = json.dumps([subject, hashed, query.interface, query.end.isoformat() if query.end else None])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def encode_cursor(digest: str, next_seq: int) -> str:
    raw = json.dumps({"q": next_seq, "h": digest}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, digest: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        seq, made = data["q"], data["h"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise SearchError("not a cursor of this API") from None
    if not isinstance(seq, int) or not 0 < seq <= 2**63 - 1:
        raise SearchError("not a cursor of this API")
    if made != digest:
        raise SearchError("this cursor was made with other filters: give the same filters, or none of the cursor")
    return seq


def result(rec: dict[str, Any]) -> dict[str, Any]:
    """One search result from an index record (a unit's own or a key's)."""
    events = [e["id"] if isinstance(e, dict) else e for e in rec.get("events", [])]
    keys = {kind: (digest[0] if isinstance(digest, list) else digest)
            for kind, digest in (rec.get("keys") or {}).items() if digest}
    out = {"correlation": rec.get("correlation"), "interface": rec.get("interface"),
           "received_at": rec.get("received_at"), "control_id": rec.get("control_id"), "unit": rec.get("unit"),
           "raw": rec.get("raw"), "mode": rec.get("mode"), "events": events,
           "dead_letters": rec.get("dead_letters", []), "keys": keys}
    if rec.get("replay"):
        out["replay"] = rec["replay"]
    return out


def _matches(rec: dict[str, Any], hashed: dict[str, str]) -> bool:
    keys = rec.get("keys") or {}
    for kind, digest in hashed.items():
        have = keys.get(kind)
        if not (have == digest or (isinstance(have, list) and digest in have)):
            return False
    return True


async def search(store: Store, query: MessagesQuery) -> tuple[list[dict[str, Any]], str | None, dict[str, str]]:
    """A page of results, the cursor past it (None at the end), and the keys' hashes (for the audit)."""
    hash_ = await keyindex.hasher(store)
    hashed = {kind: hash_(kind, value) for kind, value in query.keys().items()}
    if hashed:
        kind, digest = next(iter(hashed.items()))
        subject = names.keys_subject(kind, digest)
        rest = {k: v for k, v in hashed.items() if k != kind}
    else:
        subject = names.keys_msg_subject(query.interface or "*", "*")
        rest = {}
    digest_ = _digest(subject, hashed, query)
    start = decode_cursor(query.cursor, digest_) if query.cursor else 0
    limit = min(max(query.limit, 1), SEARCH_MAX)
    msgs = await store.page(names.STREAM_KEYS, subject, start_seq=start,
                            start_time=query.start if not start else None, limit=limit)
    found: list[dict[str, Any]] = []
    next_seq, more = start, False
    for msg in msgs:
        if query.end is not None and msg.time is not None and msg.time > query.end:
            more = False
            break
        next_seq, more = msg.seq + 1, msg.pending > 0
        rec = _record(msg)
        if rec is None or (query.interface and rec.get("interface") != query.interface):
            continue
        if query.start is not None and msg.time is not None and msg.time < query.start:
            continue
        if _matches(rec, rest):
            found.append({**result(rec), "stored_at": msg.time.isoformat() if msg.time else None})
    return found, encode_cursor(digest_, next_seq) if more else None, hashed


def _record(msg: StoredMsg) -> dict[str, Any] | None:
    try:
        rec = json.loads(msg.data)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


async def chain(store: Store, correlation: str) -> dict[str, Any] | None:
    """Everything linked to a correlation id (see the module docstring); None when unknown."""
    hash_ = await keyindex.hasher(store)
    msgs = await store.page(names.STREAM_KEYS, names.keys_msg_subject("*", hash_.correlation(correlation)),
                            limit=CHAIN_UNITS)
    recs = [r for r in map(_record, msgs) if r is not None and r.get("correlation") == correlation]
    if not recs:
        return None
    units, raws, letters = [], [], []
    events: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in recs:
        units.append({k: rec.get(k) for k in ("interface", "mode", "received_at", "control_id", "unit", "replay",
                                              "events_total")})
        if rec.get("raw") and rec["raw"] not in raws:
            raws.append(rec["raw"])
        letters += [d for d in rec.get("dead_letters", []) if d not in letters]
        for ev in rec.get("events", []):
            if isinstance(ev, dict):
                events.setdefault((str(ev.get("stream")), int(ev.get("seq", 0))), ev)
    listed_raws = await _raws(store, raws)
    return {
        "correlation": correlation, "interface": recs[0].get("interface"), "control_id": recs[0].get("control_id"),
        "unit": recs[0].get("unit"), "units": units,
        "raw": listed_raws[0] if listed_raws else None, "raws": listed_raws,
        "events": await _events(store, list(events.values())),
        "dead_letters": [dlq.summary(letter) for d in letters if (letter := await dlq.get(store, int(d)))],
        "replays": await _replays(store, letters, recs),
        "deliveries": await _deliveries(store, [str(e["id"]) for e in list(events.values())[:CHAIN_EVENTS]]),
    }


async def _raws(store: Store, refs: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ref in refs:
        item: dict[str, Any] = {"ref": ref}
        if ref.startswith("jetstream://"):
            stream, seq = names.parse_raw_ref(ref)
            msg = await store.get_msg(stream, seq)
            item.update(stream=stream, seq=seq, stored=msg is not None,
                        size=len(msg.data) if msg is not None else None)
        out.append(item)
    return out


async def _events(store: Store, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n, ev in enumerate(listed):
        item = {"id": ev.get("id"), "type": ev.get("type"), "stream": ev.get("stream"), "seq": ev.get("seq")}
        if n < CHAIN_EVENTS:
            msg = await store.get_msg(str(ev.get("stream")), int(ev.get("seq", 0)))
            body = _record(msg) if msg is not None else None
            # A sequence of a replayed event shows the version stored then (same CloudEvents id).
            item["event"] = body if body is not None and body.get("id") == ev.get("id") else None
        out.append(item)
    return out


async def _replays(store: Store, letters: list[int], recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if letters:
        kv = await store.kv(KV_REPLAYS, history=1)
        for letter in letters:
            entry = await kv.get(str(letter))
            if entry is not None:
                out.append(json.loads(entry.value))
    seen = {f"dlq{r.get('letter')}" for r in out}
    for rec in recs:  # replays of the interface since a time (and the dead letters' own runs)
        token = rec.get("replay")
        if token and token not in seen:
            seen.add(token)
            out.append({"token": token, "interface": rec.get("interface"), "events": rec.get("events_total", 0),
                        "at": rec.get("received_at")})
    return out


async def _deliveries(store: Store, event_ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ident in event_ids:
        for msg in await store.page(names.STREAM_KEYS, names.keys_delivery_subject(ident),
                                    limit=DELIVERIES_PER_EVENT):
            rec = _record(msg)
            if rec is not None:
                out.append({k: rec.get(k) for k in ("sink", "event_id", "status", "at", "attempts")})
    return out


# -- handlers (router/api.py ENDPOINTS) ------------------------------------------------------


def _enabled(request: web.Request) -> Store:
    from router.api import STORE, ApiProblem

    store = request.app[STORE]
    if not store.cfg.key_index:
        raise ApiProblem(409, "the message browser needs the key index (nats.key_index = true)")
    return store


async def search_messages(request: web.Request) -> web.Response:
    """GET /api/v1/messages?interface=&from=&to=&control_id=&account=&encounter=&claim=&trace=&limit=&cursor="""
    from router import api

    query = queries.of(request, MessagesQuery)
    store = _enabled(request)
    if not query.keys() and query.start is None and query.interface is None and not query.cursor:
        raise api.ApiProblem(400, "give a key (control_id, account, encounter, claim, trace, unit), "
                             "or an interface or a from time")
    try:
        found, cursor, hashed = await search(store, query)
    except SearchError as exc:
        raise api.ApiProblem(400, str(exc)) from None
    # The audit record names the keys' hashes (the index's own), never the values.
    api.note(request, keys=hashed, count=len(found), correlations=len(found),
             **{"from": query.start.isoformat() if query.start else None,
                "to": query.end.isoformat() if query.end else None})
    return web.json_response({"messages": found, "cursor": cursor})


async def get_message(request: web.Request) -> web.Response:
    """GET /api/v1/messages/{correlation}: the unit's chain (raw, events, dead letters, replays, deliveries)."""
    from router import api

    correlation = request.match_info["correlation"]
    if not correlation or len(correlation) > 1024:
        raise api.ApiProblem(400, "a correlation id is 1 to 1024 characters")
    store = _enabled(request)
    hash_ = await keyindex.hasher(store)
    api.note(request, correlation=hash_.correlation(correlation))
    found = await chain(store, correlation)
    if found is None:
        raise api.ApiProblem(404, "no unit with this correlation id in the key index")
    request[api.PENDING].interface = found.get("interface")
    api.note(request, events=[e["seq"] for e in found["events"]], dead_letters=[d.get("id") for d in
                                                                                 found["dead_letters"]])
    return web.json_response(found)
