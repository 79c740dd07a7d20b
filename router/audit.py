"""The audit trail: who did what, when, from where, to what, with what result.

Records go to the JetStream stream FICUS_AUDIT (router/store/core.py `audit_stream`), which
is append-only: deletes and purges are refused by the server, and records end only when
`[audit] retention_days` (six years by default) has passed. Subjects are
`ficus.audit.actions.<action>`; the route history of router/routes.py shares the stream
under `ficus.audit.routes.<interface>`.

A record names identifiers and counts only, never message content or field values:
the authenticated actor, its role and how it authenticated, the peer address and client
certificate subject, the action, the interface, the target (event sequence numbers, a dead
letter id, a replay's time and counts) and the result with its HTTP status.

Order, as the API writes them (router/api.py):
- a read of message content is recorded after the read and before the answer: when the
  record cannot be stored the answer is a 503 and nothing is served;
- a change (a flip, a replay, a dead-letter replay) is recorded as `started` before it is
  made: when that record cannot be stored the change is not made (503). Its outcome (`ok`,
  `refused`, `failed`) is a second record; if that one cannot be stored the change stands,
  audited by the first, and an ERROR line says so;
- a request refused before anything was done (wrong role, bad input, unknown id) is one
  `refused` record with its status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from router import names
from router.store import Outgoing, Store, StoredMsg, StoreError

log = logging.getLogger("ficus.audit")
SUBJECT_PREFIX = "ficus.audit.actions"
"""Under names.SUBJECTS_AUDIT, beside the route history's `ficus.audit.routes.<interface>`."""
SUBJECTS = f"{SUBJECT_PREFIX}.>"
Action = Literal["route_flip", "forced_flip", "replay", "dlq_replay", "dlq_discard", "events_list", "event_read",
                 "sink_pause", "sink_resume", "sink_replay",
                 "claim_read", "remittance_read", "charges_read", "views_rebuild",
                 "dlq_list", "dlq_read", "events_stream",
                 "message_search", "message_read", "lease_release"]
ACTIONS: tuple[Action, ...] = ("route_flip", "forced_flip", "replay", "dlq_replay", "dlq_discard", "events_list",
                               "sink_pause", "sink_resume", "sink_replay",
                               "event_read", "claim_read", "remittance_read", "charges_read", "views_rebuild",
                               "dlq_list", "dlq_read", "events_stream",
                               "message_search", "message_read", "lease_release")
Result = Literal["started", "ok", "refused", "failed"]
SCAN_MAX = 20_000
"""Records examined by one query at most; `next_after` says where to go on."""


class AuditUnavailable(Exception):
    """A record could not be stored; `reason` is the store's (an operation and an error kind)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def result_of(status: int) -> Result:
    """The result an HTTP status stands for."""
    return "ok" if status < 400 else "refused" if status < 500 else "failed"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Record:
    """One audit record as stored (JSON)."""

    actor: str
    role: str
    via: str
    action: Action
    result: Result
    status: int | None
    """The HTTP status answered; None for a `started` record."""
    source: dict[str, str]
    """`ip`: the peer address; `cert`: the verified client certificate's subject (mutual TLS)."""
    interface: str | None = None
    target: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=now_iso)

    def outgoing(self) -> Outgoing:
        return Outgoing(f"{SUBJECT_PREFIX}.{self.action}", json.dumps(asdict(self)).encode(),
                        f"audit-{secrets.token_hex(16)}")


def matches(record: dict[str, Any], *, since: datetime | None, actor: str | None, interface: str | None,
            action: str | None) -> bool:
    """Whether a stored record passes the query's filters (an interface matches the record's
    own or one of the interfaces its target lists)."""
    if actor is not None and record.get("actor") != actor:
        return False
    if action is not None and record.get("action") != action:
        return False
    if interface is not None and record.get("interface") != interface:
        listed = (record.get("target") or {}).get("interfaces") or []
        if interface not in listed:
            return False
    if since is not None:
        try:
            at = datetime.fromisoformat(str(record.get("at")))
        except ValueError:
            return False
        if at < since:
            return False
    return True


class AuditTrail:
    """Writes and reads the audit records of the API's actions."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def write(self, record: Record) -> None:
        """Stores one record (acknowledged by JetStream); AuditUnavailable when it was not."""
        try:
            await self.store.publish([record.outgoing()])
        except StoreError as exc:
            raise AuditUnavailable(exc.reason) from exc

    async def query(self, *, since: datetime, after: int = 0, actor: str | None = None,
                    interface: str | None = None, action: str | None = None,
                    limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Records at or after `since` (and after sequence `after`, when given), oldest first,
        filtered; at most `limit`. Returns them with `next_after`: the last sequence examined
        when the query stopped before the end (page on with `after=`), else None."""
        out: list[dict[str, Any]] = []
        examined = 0
        last: int | None = None
        async for msg in self._messages(since, after):
            examined += 1
            last = msg.seq
            try:
                record = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(record, dict) and matches(record, since=since, actor=actor, interface=interface,
                                                    action=action):
                out.append({"seq": msg.seq, **record})
            if len(out) >= limit or examined >= SCAN_MAX:
                return out, (last if msg.pending else None)
        return out, None

    async def _messages(self, since: datetime, after: int) -> AsyncIterator[StoredMsg]:
        if after:
            while True:
                rows = await self.store.read(names.STREAM_AUDIT, SUBJECTS, after, 500)
                for seq, data, headers in rows:
                    yield StoredMsg(seq, "", data, headers, pending=1)
                if len(rows) < 500:
                    return
                after = rows[-1][0]
        else:
            async with contextlib.aclosing(self.store.scan(names.STREAM_AUDIT, SUBJECTS, since)) as scan:
                async for msg in scan:
                    yield msg
