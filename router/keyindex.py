"""The business-key index (issue 16): where a unit's keys are written at commit, and how a key is hashed.

When a unit (an MLLP message, a file record or 835 transaction, a row) is committed, the stage
(router/stage.py) writes its index records on FICUS_KEYS, after its events and dead letters are
acknowledged (so the records name their stream sequences) and with its ledger deltas, before
the input acknowledges: a unit acknowledged is indexed, and a retry writes the same records
under the same Msg-Ids. Two kinds of record, both JSON:

- the unit's own, on ``keys.msg.<interface>.<H(correlation)>``: correlation, interface, mode,
  time, control id / unit locator, raw reference, every event (id, type, stream, sequence; the
  first MAX_EVENTS), its dead letters' ids, a replay's token, and its keys as hashes. The chain
  of a correlation is a direct get on ``keys.msg.*.<H>``; a search by interface and time is a
  page of ``keys.msg.<interface>.*`` from a time (the stream's time positions, bounded pages);
- one per business key value, on ``keys.<kind>.<H(kind, value)>``: the same unit summary with
  only the events that carry that value (a claim's claim, lines and adjustments; an account's
  charges), so a lookup by value is a direct get on one subject, never a scan.

Kinds: ``control`` (MSH-10), ``account`` (PID-18, an account column), ``encounter`` (PV1-19),
``claim`` (CLP01 and CLP07), ``trace`` (TRN02), ``unit`` (a file name and line, a table and
key: the unit's locator). H is HMAC-SHA256 under a per-deployment secret generated once and
kept in the KV bucket ``ficus-keys`` (every instance reads the same), cut to 32 hex digits:
subjects and keys carry no identifier in clear. The records' bodies carry the identifiers a
console shows (the correlation, the control id or locator), as the events they point at do,
under the same access rule and no longer than the raw archive keeps the units.

Sink deliveries (router/sinks.py) are recorded on ``keys.dlv.<event id>`` (an event id is a
hash already): sink, event id, status, attempts, time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from canonical.envelope import CloudEvent
from canonical.hl7v2.reader import MshHeader
from router import names
from router.store import Outgoing, PubAck, RevisionConflict, Store, StoreUnavailable

if TYPE_CHECKING:
    from router.stage import Record

log = logging.getLogger("ficus.keyindex")

KINDS = ("control", "account", "encounter", "claim", "trace", "unit")
"""Business key kinds, as the API's query names them (control_id = control)."""
SINGLE = ("control", "unit", "trace", "account", "encounter")
"""Kinds a search result names its unit by (one value each; a transaction's claims are many)."""
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "account": ("account_number",),
    "encounter": ("encounter_number",),
    "claim": ("patient_control_number", "payer_claim_control_number"),
    "trace": ("trace_number",),
}
"""The event data fields each kind is read from (canonical.events, canonical.x12.events)."""
MAX_EVENTS = 500
"""Events a unit's record lists (a big 835 transaction has thousands; `events_total` counts them)."""
MAX_KEY_EVENTS = 100
MAX_VALUES = 2000
"""Key values indexed per unit at most (a transaction of 1,000 claims has 2,000 claim numbers)."""
MAX_VALUE = 200
SECRET_KEY = "hmac-secret"


class Hasher:
    """The keyed hash of a business key value (see the module docstring)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __call__(self, kind: str, value: str) -> str:
        key = f"{kind}\x1f{value}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, key, hashlib.sha256).hexdigest()[:32]

    def correlation(self, correlation: str) -> str:
        return self("correlation", correlation)


_HASHERS: weakref.WeakKeyDictionary[Store, Hasher] = weakref.WeakKeyDictionary()


async def hasher(store: Store) -> Hasher:
    """The deployment's hasher: its secret read from KV, created there by the first instance
    (a create that loses the race reads the winner's). Cached per store."""
    found = _HASHERS.get(store)
    if found is not None:
        return found
    kv = await store.kv(names.KV_KEYS, history=1)
    entry = await kv.get(SECRET_KEY)
    if entry is None or not entry.value:
        with contextlib.suppress(RevisionConflict):  # another instance made it first: use theirs
            await kv.create(SECRET_KEY, secrets.token_hex(32).encode())
        entry = await kv.get(SECRET_KEY)
        if entry is None or not entry.value:
            raise StoreUnavailable("the key index secret could not be read back")
    made = Hasher(entry.value)
    _HASHERS[store] = made
    return made


@dataclass
class Unit:
    """One committed unit as the stage saw it: its record, its events' positions in the
    outcome's events, its dead letter's position in the outcome's letters (-1: none)."""

    record: Record
    first: int
    count: int
    letter: int = -1
    events: list[CloudEvent] = field(default_factory=list)


def correlation_of(record: Record, events: Sequence[CloudEvent]) -> str:
    """The unit's correlation id: its events' (`ficuscorrelation`), else -- a unit with no
    events, dead-lettered -- what its events would have had where the input knows it (an HL7
    message: ``<MSH-3>^<MSH-4>:<MSH-10>``), else the unit's ledger key."""
    if events:
        return events[0].ficuscorrelation
    tag = record.tag
    if isinstance(tag, MshHeader) and tag.control_id:
        return f"{tag.sender}:{tag.control_id}"
    return record.key


def control_of(record: Record) -> str | None:
    tag = record.tag
    return tag.control_id if isinstance(tag, MshHeader) and tag.control_id else None


def values_of(record: Record, events: Sequence[CloudEvent]) -> dict[tuple[str, str], list[int]]:
    """(kind, value) -> positions of the events carrying it (none for the unit's own keys)."""
    out: dict[tuple[str, str], list[int]] = {}
    control = control_of(record)
    if control:
        out[("control", control)] = []
    elif record.locator and record.locator != "-":
        out[("unit", record.locator)] = []
    for i, ev in enumerate(events):
        data = ev.data
        for kind, fields in EVENT_FIELDS.items():
            for name in fields:
                value = getattr(data, name, None)
                if not isinstance(value, str) or not value or len(value) > MAX_VALUE:
                    continue
                found = out.get((kind, value))
                if found is None:
                    if len(out) >= MAX_VALUES:
                        continue
                    found = out[(kind, value)] = []
                if not found or found[-1] != i:
                    found.append(i)
    return out


def _msg_id(*parts: str) -> str:
    return "key-" + hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def records(hash_: Hasher, interface: str, units: Iterable[Unit], acks: Sequence[PubAck], letters_at: int,
            replay: str = "") -> list[Outgoing]:
    """The index records of committed units (see the module docstring). ``acks`` are the
    outcome's acknowledgements, the events' first and its dead letters' from ``letters_at``."""
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    out: list[Outgoing] = []
    for unit in units:
        record, events = unit.record, unit.events
        correlation = correlation_of(record, events)
        listed = [{"id": ev.id, "type": ev.type, "stream": acks[unit.first + i].stream,
                   "seq": acks[unit.first + i].seq} for i, ev in enumerate(events[:MAX_EVENTS])]
        letters = [acks[letters_at + unit.letter].seq] if unit.letter >= 0 else []
        values = values_of(record, events)
        hashed = {key: hash_(*key) for key in values}
        single: dict[str, str] = {}
        for (kind, _), digest in hashed.items():
            if kind in SINGLE:
                single.setdefault(kind, digest)
        mode = record.mode or (events[0].ficusmode if events else "")
        base: dict[str, Any] = {
            "correlation": correlation, "interface": interface, "mode": mode, "received_at": at,
            "control_id": control_of(record), "unit": record.locator or None, "raw": record.raw or None,
            "dead_letters": letters,
        }
        if replay:
            base["replay"] = replay
        whole = {**base, "events": listed, "events_total": len(events),
                 "keys": {kind: sorted({d for (k, _), d in hashed.items() if k == kind})
                          for kind in KINDS if any(k == kind for k, _ in hashed)}}
        # Retries, re-sends and replays of the same unit keep one record each (Msg-Id per unit and run).
        ident = (record.key, mode, replay)
        headers = {names.HDR_INTERFACE: interface}
        out.append(Outgoing(names.keys_msg_subject(interface, hash_.correlation(correlation)),
                            json.dumps(whole, separators=(",", ":")).encode(), _msg_id("msg", *ident), headers))
        for (kind, value), digest in hashed.items():
            # The unit's own keys (MSH-10, a locator) name all its events; a value carried by
            # events, those events (a claim's among a transaction's).
            positions = values[(kind, value)] or range(len(listed))
            body = {**base, "kind": kind, "events": [listed[i]["id"] for i in positions[:MAX_KEY_EVENTS]
                                                     if i < len(listed)],
                    "keys": {**single, kind: digest}}
            out.append(Outgoing(names.keys_subject(kind, digest), json.dumps(body, separators=(",", ":")).encode(),
                                _msg_id(kind, digest, *ident), headers))
    return out


def delivery(sink: str, event_id: str, status: int, attempts: int, msg_seq: int) -> Outgoing:
    """One sink delivery outcome, readable by event id (``keys.dlv.<event id>``)."""
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    body = {"sink": sink, "event_id": event_id, "status": status, "attempts": attempts, "at": at}
    return Outgoing(names.keys_delivery_subject(event_id), json.dumps(body, separators=(",", ":")).encode(),
                    _msg_id("dlv", sink, event_id, str(msg_seq), str(status), at))
