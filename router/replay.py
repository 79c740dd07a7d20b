"""Replay: translating stored raw units again, after a mapping or reference-table fix.

Two entry points, both for interfaces whose raw units are in the raw stream (hl7-mllp):
a dead letter (`POST /api/v1/dlq/{id}/replay`, `ficus dlq replay`), and every raw unit
of an interface since a time (`POST /api/v1/replay/{iface}`, `ficus replay --since`).
A replayed dead letter is recorded in the KV bucket `ficus-dlq-replays`, so listings show
it as done. File records are replayed by dropping the file again (see the README).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from canonical.errors import CanonicalError
from router import dlq, names
from router.mllp_pipeline import REUSED_CONTROL_ID, MllpPipeline
from router.store import StoreUnavailable

if TYPE_CHECKING:
    from router.service import Running

KV_REPLAYS = "ficus-dlq-replays"


class ReplayError(Exception):
    """A replay that cannot be done; `status` is the HTTP status."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class ReplayResult:
    replayed: int = 0
    events: int = 0
    failed: int = 0
    reasons: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "events": self.events, "failed": self.failed,
                "reasons": (self.reasons or [])[:20]}


def _pipeline(svc: Running, interface: str) -> MllpPipeline:
    running = svc.interfaces.get(interface)
    if running is None:
        raise ReplayError(f"unknown interface {interface!r}", 404)
    if not isinstance(running.pipeline, MllpPipeline):
        raise ReplayError(f"{interface} is a {running.cfg.kind} interface: replay a file by dropping it again; "
                          "a database row by resetting the checkpoint")
    return running.pipeline


async def replay_dead_letter(svc: Running, letter_id: int) -> dict[str, Any]:
    """Re-translates the raw unit of one dead letter; raises ReplayError."""
    letter = await dlq.get(svc.store, letter_id)
    if letter is None:
        raise ReplayError(f"no dead letter {letter_id}", 404)
    if not letter.raw or not letter.raw.startswith("jetstream://"):
        raise ReplayError(f"dead letter {letter_id} has no raw message to replay ({letter.raw or 'none'})")
    if letter.reason == REUSED_CONTROL_ID:
        # Its events would carry the ids of the other message under that control id (and be
        # dropped as duplicates, or replace it at consumers that upsert by id).
        raise ReplayError(f"dead letter {letter_id}: {REUSED_CONTROL_ID}; the sender must send it again "
                          "under a new control id")
    pipeline = _pipeline(svc, letter.interface)
    stream, seq = names.parse_raw_ref(letter.raw)
    msg = await svc.store.get_msg(stream, seq)
    if msg is None:
        raise ReplayError(f"raw message {letter.raw} is no longer stored (retention)", 410)
    try:
        events = await pipeline.replay(msg.data, letter.raw)
    except CanonicalError as exc:
        raise ReplayError(f"still not translatable: {exc.reason}", 422) from exc
    except StoreUnavailable as exc:
        raise ReplayError(exc.reason, 503) from exc
    kv = await svc.store.kv(KV_REPLAYS, history=1)
    record = {"letter": letter_id, "interface": letter.interface, "events": events,
              "at": datetime.now(UTC).isoformat(timespec="seconds")}
    await kv.put(str(letter_id), json.dumps(record).encode())
    return record


async def replayed_ids(svc: Running) -> set[int]:
    """Dead letters already replayed successfully."""
    kv = await svc.store.kv(KV_REPLAYS, history=1)
    keys = await kv.keys()
    return {int(k) for k in keys if k.isdigit()}


async def replay_since(svc: Running, interface: str, since: datetime, limit: int = 1_000_000) -> ReplayResult:
    """Re-translates every raw unit of an interface stored since `since`."""
    pipeline = _pipeline(svc, interface)
    token = ".r" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    subject = names.raw_subject(interface)
    result = ReplayResult(reasons=[])
    async with contextlib.aclosing(svc.store.scan(names.STREAM_RAW, subject, since)) as stored:
        async for msg in stored:
            ref = names.raw_ref(names.STREAM_RAW, msg.seq)
            if msg.headers.get(names.HDR_REUSED):
                # See replay_dead_letter: never published under another message's event ids.
                result.failed += 1
                assert result.reasons is not None
                result.reasons.append(f"{ref}: {REUSED_CONTROL_ID}")
            else:
                try:
                    result.events += await pipeline.replay(msg.data, ref, msg_id_suffix=token)
                    result.replayed += 1
                except CanonicalError as exc:
                    result.failed += 1
                    assert result.reasons is not None
                    result.reasons.append(f"{ref}: {exc.reason}")
            if result.replayed + result.failed >= limit:
                break
    return result
