"""What happens to the rows of an `odbc` interface (a legacy database job), per route mode.

One loop per interface: read the checkpoint from KV bucket ``ficus-checkpoints`` (key =
interface name), ask the poller for the rows after it, and for each batch

1. archive the rows in ``raw.<interface>`` (JSON chunks that fit the NATS payload limit,
   Msg-Id from interface, table and the chunk's first and last key);
2. translate the rows routed ``shadow`` or ``modern`` into canonical events (``shadow.``
   subjects in shadow); a row that does not convert is dead-lettered with its table,
   key and reason and the rows after it go on;
3. publish events and dead letters, all acknowledged by JetStream; every event's
   Msg-Id comes from interface, table, row key and event type, so a batch read again
   after a crash or an outage stores nothing twice (within the stream's duplicate
   window, ``nats.duplicate_window_seconds``);
4. modern rows only, when ``mark_statement`` is set: mark the rows whose events were
   published, in one database transaction, the way the legacy job did;
5. only then store ``checkpoint_after`` in KV.

Ordering, and what a crash at each point costs. Before 3 completes: the batch is read
again from the old checkpoint and its events dedupe. Between 4 and 5: the rows are
marked but the checkpoint is old; they are read again (the watermark, not the mark,
decides what is read), their events dedupe by Msg-Id and the mark statement runs again,
which must therefore be idempotent (``SET exported = 1`` is). The mark is never run
before the events are acknowledged, so a marked row always has its events stored.
The next batch is read (after the unstored ``checkpoint_after``) while one is processed;
that read moves nothing, and it is discarded when the batch fails or another writer's
checkpoint is stored instead.

Route modes of a database job (per row when the route has facility overrides, with the
facility taken from the mapping's ``facility_field``):

- ``legacy``: the legacy job is authoritative. Ficus only reads (never marks), archives
  the rows raw as the product contract asks of every interface, publishes nothing
  canonical, and advances its checkpoint: a later flip to shadow starts at the rows
  that arrive after the flip, not at the table's history (the raw archive has those).
- ``shadow``: events on ``shadow.`` subjects for parity; never marks (the legacy job
  still does).
- ``modern``: events on live subjects, then ``mark_statement``. Dead-lettered rows are
  not marked, so a rollback to the legacy job still exports them.

The mode is read once per batch, so a flip takes effect at the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from canonical.context import TranslationContext
from canonical.enrich import enrich
from canonical.envelope import CloudEvent
from canonical.errors import TranslationError
from canonical.records import map_record, row_values
from canonical.reference import ReferenceStore
from protocols.backoff import Backoff
from router import ledger, names
from router.config import Mode, OdbcInterfaceConfig
from router.dlq import DeadLetter, money, now_iso
from router.offload import gc_paused, off_loop
from router.routes import RouteTable
from router.stats import InterfaceStats
from router.store import Bucket, Outgoing, RevisionConflict, Store, StoreError, event_message
from wrappers.odbc_poller import Batch, OdbcPoller, OdbcSettings, QueryError
from wrappers.watermark import Checkpoint, Key

log = logging.getLogger("ficus.odbc")
T = TypeVar("T")

PUBLISH_CHUNK = 1000
"""Messages per Store.publish call: each call is bounded by the publish timeout."""
_RAW_HEADROOM = 4096
"""Bytes kept free below the server's max_payload for headers and the JSON wrapper."""
_FIRST_RETRY = 0.5


def odbc_settings(cfg: OdbcInterfaceConfig) -> OdbcSettings:
    """The poller's part of an odbc interface's config."""
    return OdbcSettings(
        connection_string=cfg.connection_string, query=cfg.query, mode=cfg.watermark,
        key_column=cfg.key_column, timestamp_column=cfg.timestamp_column,
        safety_lag_seconds=cfg.safety_lag_seconds, batch_size=cfg.batch_size, poll_seconds=cfg.poll_seconds,
        query_timeout=cfg.query_timeout_seconds, reconnect_max_backoff=cfg.reconnect_max_backoff_seconds,
        mark_statement=cfg.mark_statement, limit_clause=cfg.limit_clause,
    )


@dataclass
class _Outcome:
    """One batch translated: what to publish, and which modern rows it covers."""

    events: list[Outgoing] = field(default_factory=list)
    letters: list[Outgoing] = field(default_factory=list)
    # One ledger delta per row (router/ledger.py), published after the events and letters: a
    # batch read again after a crash may be longer, so only per-row ids dedupe exactly.
    counts: list[Outgoing] = field(default_factory=list)
    live: int = 0
    shadow: int = 0
    marked_keys: list[Key] = field(default_factory=list)
    # Shadow evidence, applied only once the batch is acknowledged: (unit, translated, why not).
    parity: list[tuple[str, bool, str]] = field(default_factory=list)


class CheckpointStore:
    """The interface's checkpoint in KV, written with compare-and-set on its revision.

    Compare-and-set fences a second instance polling the same interface: the one whose
    write is refused reloads the other's checkpoint instead of moving it backwards.
    """

    def __init__(self, kv: Bucket, key: str) -> None:
        self.kv = kv
        self.key = key
        self.revision: int | None = None

    async def load(self) -> Checkpoint:
        """The stored checkpoint, or the beginning when none is stored yet."""
        entry = await self.kv.get(self.key)
        if entry is None:
            self.revision = None
            return Checkpoint()
        self.revision = entry.revision
        if not entry.value:
            return Checkpoint()
        return Checkpoint.from_json(entry.value)

    async def save(self, checkpoint: Checkpoint) -> Checkpoint:
        """Stores ``checkpoint``; returns what is stored now (another writer's on a conflict)."""
        value = checkpoint.to_json().encode()
        try:
            if self.revision is None:
                self.revision = await self.kv.create(self.key, value)
            else:
                self.revision = await self.kv.update(self.key, value, last=self.revision)
        except RevisionConflict:
            log.warning("checkpoint %s was moved by another writer; continuing from it", self.key)
            return await self.load()
        return checkpoint


class OdbcPipeline:
    """Polls one database job and publishes each row exactly once; see the module docstring."""

    def __init__(
        self, cfg: OdbcInterfaceConfig, store: Store, routes: RouteTable, poller: OdbcPoller,
        stats: InterfaceStats, checkpoints: CheckpointStore, *, reference: ReferenceStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.routes = routes
        self.poller = poller
        self.stats = stats
        self.checkpoints = checkpoints
        self.reference = reference
        self.checkpoint: Checkpoint | None = None
        self.batches = 0
        cap = cfg.reconnect_max_backoff_seconds
        self._retry = Backoff(min(_FIRST_RETRY, cap), cap)  # full jitter
        self.failing: str | None = None
        """Why the last poll failed (a query error, NATS away), until a poll succeeds; for readiness."""
        # The batch after the one being processed, read while it is processed (see run()).
        self._ahead: asyncio.Task[Batch | None] | None = None
        self._facility_spec = next((f for f in cfg.mapping.fields if f.field == cfg.mapping.facility_field), None)

    def details(self) -> dict[str, Any]:
        """For the API: the poller's connection state and the stored checkpoint (no row data)."""
        status = self.poller.status
        cp = self.checkpoint
        return {
            "table": self.cfg.table,
            "poller": {
                "connected": status.connected,
                "last_error": status.last_error,
                "reconnects": status.reconnects,
                "last_poll_at": status.last_poll_at.isoformat() if status.last_poll_at else None,
            },
            "checkpoint": None if cp is None else {"last_key": cp.last_key, "last_ts": cp.last_ts},
            "batches": self.batches,
        }

    def problem(self) -> str | None:
        """Why this interface is not ready: the database unreachable (from the first failed
        connection until one succeeds), or a poll that failed and is retried."""
        if self.failing is not None:
            return self.failing
        status = self.poller.status
        if not status.connected and status.last_error is not None:
            # Driver messages span lines ("...refused\n\tIs the server running..."): one line here.
            return f"database unavailable: {' '.join(status.last_error.split())}; reconnecting"
        return None

    async def run(self, stopping: asyncio.Event) -> None:
        """Polls until ``stopping`` is set; a batch in progress is finished first."""
        try:
            while not stopping.is_set():
                try:
                    if self.checkpoint is None:
                        self.checkpoint = await self.checkpoints.load()
                    batch = await self._next_batch(stopping)
                    if batch is None:
                        if not stopping.is_set():
                            self.failing = None  # a good pass: the query answered, nothing new
                        await _sleep(stopping, self.cfg.poll_seconds)
                        continue
                    # Read the next batch on the poller's thread while this one is archived,
                    # translated and acknowledged. It is only a read: nothing of it is
                    # published before this batch's checkpoint is stored, and it is dropped
                    # whenever that checkpoint is not the one it was read after.
                    self._ahead = asyncio.create_task(self.poller.next_batch(batch.checkpoint_after))
                    stored = await self.process(batch)
                    if stored is not batch.checkpoint_after:  # another writer's checkpoint
                        await self._drop_ahead()
                    self.checkpoint = stored
                    self._retry.reset()
                    self.failing = None
                except (StoreError, TimeoutError) as exc:
                    # NATS is away: nothing was checkpointed, so the batch is read again later.
                    await self._drop_ahead()
                    self.stats.store_unavailable += 1
                    await self._failed(stopping, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")
                except QueryError as exc:
                    # A wrong query, column or mark statement: retried slowly, as someone may fix the database.
                    await self._drop_ahead()
                    await self._failed(stopping, str(exc), self.cfg.reconnect_max_backoff_seconds)
        finally:
            await self._drop_ahead()

    async def _next_batch(self, stopping: asyncio.Event) -> Batch | None:
        """The batch after ``self.checkpoint``: the one read ahead when there is one."""
        assert self.checkpoint is not None
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            batch = await _unless(stopping, ahead)
            if batch is not None:
                return batch
            # Nothing was ready when it was read, maybe a whole batch ago: ask again before sleeping.
        return await _unless(stopping, self.poller.next_batch(self.checkpoint))

    async def _settle_ahead(self) -> None:
        """Waits for the read ahead to finish; its outcome is left for :meth:`_next_batch`."""
        if self._ahead is not None:
            await asyncio.wait({self._ahead})

    async def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        ahead.cancel()
        # Cancelled, finished or failed, the read is discarded (cancelling a poll is safe).
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ahead

    async def process(self, batch: Batch) -> Checkpoint:
        """One batch end to end; returns the checkpoint now stored. Safe to repeat after a crash."""
        self.stats.received += len(batch.rows)
        self.stats.last_message_at = time.time()
        with gc_paused():
            # Encoding and translating a batch (up to batch_size rows) run in a worker thread
            # (router/offload.py): the loop only publishes, so MLLP ACKs never wait for a batch.
            modes = self._modes(batch)
            refs = await self._archive(batch)
            outcome = await off_loop(self._translate, batch, modes, refs)
            items = outcome.events + outcome.letters + outcome.counts
            for start in range(0, len(items), PUBLISH_CHUNK):
                await self.store.publish(items[start : start + PUBLISH_CHUNK])
        self.stats.published += outcome.live
        self.stats.shadow_published += outcome.shadow
        self.stats.dead_lettered += len(outcome.letters)
        for unit, translated, why in outcome.parity:
            # The legacy job takes every row; Ficus agrees when it could translate it.
            self.stats.parity.record(legacy_ok=True, modern_ok=translated, unit=unit, detail=why)
        if outcome.marked_keys and self.cfg.mark_statement is not None:
            # After the acknowledgement, before the checkpoint: see the module docstring. A read
            # ahead holds the poller's thread: the mark waits for it rather than spend its query
            # timeout queued behind it.
            await self._settle_ahead()
            await self.poller.mark_exported(Batch([], outcome.marked_keys, batch.checkpoint_after))
        stored = await self.checkpoints.save(batch.checkpoint_after)
        self.batches += 1
        return stored

    async def _failed(self, stopping: asyncio.Event, reason: str, delay: float | None = None) -> None:
        self.stats.error(reason)
        self.failing = f"{self.stats.last_error}; retrying"
        log.warning("%s: %s; retrying", self.name, reason)
        wait = self._retry.next_delay() if delay is None else delay
        await _sleep(stopping, wait)

    # -- modes -------------------------------------------------------------------------

    def _modes(self, batch: Batch) -> list[Mode]:
        route = self.routes.get(self.name)
        if not route.facilities or self._facility_spec is None:
            return [route.mode] * len(batch.rows)
        spec = [self._facility_spec]
        return [route.mode_for(_facility(row_values(row, spec))) for row in batch.rows]

    # -- raw archive -------------------------------------------------------------------

    async def _archive(self, batch: Batch) -> list[str]:
        """Stores the rows as JSON chunks; returns each row's raw reference."""
        chunks, items = await off_loop(self._raw_items, batch, self.store.max_payload - _RAW_HEADROOM)
        acks = await self.store.publish(items)
        refs: list[str] = []
        for (a, b), ack in zip(chunks, acks, strict=True):
            # A duplicate's ack carries the sequence of the copy stored first.
            refs += [names.raw_ref(ack.stream, ack.seq)] * (b - a)
        return refs

    def _raw_items(self, batch: Batch, limit: int) -> tuple[list[tuple[int, int]], list[Outgoing]]:
        """The batch's rows as JSON chunks of at most ``limit`` bytes (in a worker thread):
        the [start, end) row range of each, and its message."""
        chunks: list[tuple[int, int]] = []
        encoded = [json.dumps(row, default=str, separators=(",", ":")).encode() for row in batch.rows]
        start, size = 0, 0
        for i, row in enumerate(encoded):
            if i > start and size + len(row) + 1 > limit:
                chunks.append((start, i))
                start, size = i, 0
            size += len(row) + 1
        chunks.append((start, len(encoded)))
        return chunks, [self._raw_item(batch, encoded, a, b) for a, b in chunks]

    def _raw_item(self, batch: Batch, encoded: list[bytes], a: int, b: int) -> Outgoing:
        first, last = batch.keys[a], batch.keys[b - 1]
        head = json.dumps({"interface": self.name, "table": self.cfg.table, "key_column": self.cfg.key_column,
                           "first_key": first, "last_key": last}, separators=(",", ":")).encode()
        payload = head[:-1] + b',"rows":[' + b",".join(encoded[a:b]) + b"]}"
        raw_id = _digest("raw", self.name, self.cfg.table, str(first), str(last))
        return Outgoing(names.raw_subject(self.name), payload, raw_id, {names.HDR_INTERFACE: self.name})

    # -- translation -------------------------------------------------------------------

    def _translate(self, batch: Batch, modes: list[Mode], refs: list[str]) -> _Outcome:
        """The batch's events, dead letters, ledger counts and parity (in a worker thread)."""
        out = _Outcome()
        received = datetime.now(UTC)
        contexts: dict[tuple[Mode, str], TranslationContext] = {}
        for row, key, mode, ref in zip(batch.rows, batch.keys, modes, refs, strict=True):
            if mode == "legacy":
                facility = _facility(row_values(row, [self._facility_spec])) if self._facility_spec else None
                out.counts.append(self._count(key, mode, facility, "legacy"))
                continue
            ctx = contexts.get((mode, ref))
            if ctx is None:
                ctx = TranslationContext(self.name, "shadow" if mode == "shadow" else "live", ref, received,
                                         self.cfg.timezone)
                contexts[(mode, ref)] = ctx
            try:
                events = self._events(row, key, ctx)
            except TranslationError as exc:
                out.letters.append(self._letter(key, mode, ref, exc))
                out.counts.append(self._count(key, mode, exc.facility, "dead_lettered",
                                              money=ledger.letter_money(exc.amount)))
                if mode == "shadow":
                    out.parity.append((f"{self.cfg.table}:{key}", False, exc.reason))
                continue
            if mode == "shadow":
                out.parity.append((f"{self.cfg.table}:{key}", True, ""))
            out.events += [self._outgoing(ev, key) for ev in events]
            out.counts.append(self._count(key, mode, ledger.facility_of(events), "published" if events else "filtered",
                                          len(events), ledger.money_of(events)))
            if mode == "modern":
                out.live += len(events)
                out.marked_keys.append(key)
            else:
                out.shadow += len(events)
        return out

    def _events(self, row: dict[str, object], key: Key, ctx: TranslationContext) -> list[CloudEvent]:
        mapping = self.cfg.mapping
        # Without a declared key the row key is the record's identity (its event id and record_key).
        unit, index = (self.cfg.table, key) if isinstance(key, int) else (f"{self.cfg.table}:{key}", 0)
        events = map_record(row_values(row, mapping.fields), mapping, ctx, unit=unit, index=index,
                            locator=self._locator(key))
        if self.reference is not None:
            events = enrich(events, self.reference.data)
        return events

    def _count(self, key: Key, mode: Mode, facility: str | None, outcome: ledger.Outcome, events: int = 0,
               money: ledger.Money | None = None) -> Outgoing:
        return ledger.unit_delta(self.name, mode, f"odbc|{self.cfg.table}|{key}", facility, outcome, events, money)

    def _locator(self, key: Key) -> str:
        return f"{self.cfg.table} row {self.cfg.key_column}={key}"

    def _outgoing(self, ev: CloudEvent, key: Key) -> Outgoing:
        # From the row key, not the mapping's key: two rows are never collapsed into one.
        msg_id = _digest("row", self.name, self.cfg.table, str(key), ev.type)
        return event_message(ev, self.name, msg_id)

    def _letter(self, key: Key, mode: Mode, ref: str, exc: TranslationError) -> Outgoing:
        locator = self._locator(key)
        reason = exc.reason if locator in exc.reason else f"{locator}: {exc.reason}"
        letter = DeadLetter(
            interface=self.name, kind="untranslatable", reason=reason, mode=mode, unit=f"{self.cfg.table}:{key}",
            raw=ref, facility=exc.facility, amount=money(exc.amount), locator=exc.locator, at=now_iso(),
        )
        log.info("%s: dead-lettered %s: %s", self.name, letter.unit, reason)
        # Per row, not per raw chunk: chunk boundaries may differ when a batch is read again.
        return letter.outgoing(_digest("row", self.name, self.cfg.table, str(key)))


def _facility(values: dict[str, object]) -> str | None:
    value = next(iter(values.values()), None)
    text = "" if value is None else str(value).strip()
    return text or None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


async def _unless(stopping: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None (``work`` cancelled) when ``stopping`` is set first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _sleep(stopping: asyncio.Event, seconds: float) -> None:
    await _unless(stopping, asyncio.sleep(seconds))

