"""What happens to the rows of an `odbc` interface (a legacy database job), per route mode.

The odbc input of the shared stage (router/stage.py). One loop per interface: read the
checkpoint from KV bucket ``ficus-checkpoints`` (key = interface name), ask the poller for
the rows after it, and for each batch

1. archive the rows in ``raw.<interface>`` (JSON chunks that fit the NATS payload limit,
   Msg-Id from interface, table and the chunk's first and last key: router/odbc_raw.py);
2. translate the rows routed ``shadow`` or ``modern`` into one stage record per row, off
   the event loop; a row that does not convert becomes a dead letter naming its table,
   key and reason, and the rows after it go on;
3. the stage publishes events, dead letters and a ledger delta per row, all acknowledged by
   JetStream; every event's Msg-Id comes from interface, table, row key and event type
   (a dead letter's from interface, table and row key, a delta's from the row too), so a
   batch read again after a crash or an outage stores nothing twice (within the stream's
   duplicate window, ``nats.duplicate_window_seconds``);
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

Route modes of a database job, per row: the interface's mode, or the override of the row's
facility (the value of the mapping's ``facility_field`` column as read, before any
reference table renames it) -- the canary:

- ``legacy``: the legacy job is authoritative. Ficus only reads (never marks), archives
  the rows raw as the product contract asks of every interface, publishes nothing
  canonical (the row is not even translated; the ledger counts it under its facility),
  and advances its checkpoint: a later flip to shadow starts at the rows that arrive
  after the flip, not at the table's history (the raw archive has those).
- ``shadow``: events on ``shadow.`` subjects for parity; never marks (the legacy job
  still does).
- ``modern``: events on live subjects, then ``mark_statement``. Dead-lettered rows are
  not marked, so a rollback to the legacy job still exports them.

The route is read once per batch, so a flip takes effect at the next batch.

Replay (:meth:`OdbcPipeline.replay_chunks`, for router/replay.py) reads the raw chunks back
and rebuilds each row's record as above -- the same ledger key, Msg-Ids and raw reference --
with the mapping and reference tables of now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from canonical.context import TranslationContext
from canonical.envelope import CloudEvent
from canonical.errors import CanonicalError
from canonical.records import map_record, row_values
from canonical.reference import ReferenceStore
from protocols.backoff import Backoff
from router import ledger, names
from router.config import Mode, OdbcInterfaceConfig
from router.leases import Fence, LeaseLost
from router.odbc_raw import Row, raw_chunks, read_chunk
from router.odbc_raw import digest as _digest
from router.offload import gc_paused, off_loop
from router.routes import Route, RouteTable
from router.stage import Outcome, Record, ReplayChunk, Stage
from router.stats import InterfaceStats
from router.store import Bucket, RevisionConflict, Store, StoredMsg, StoreError
from router.tracing import traced_sync, traced_unit
from wrappers.odbc_poller import Batch, OdbcPoller, OdbcSettings, QueryError
from wrappers.watermark import Checkpoint, Key

log = logging.getLogger("ficus.odbc")
T = TypeVar("T")

PUBLISH_CHUNK = 1000
"""Messages per Store.publish call: each call is bounded by the publish timeout."""
_RAW_HEADROOM = 4096
"""Bytes kept free below the server's max_payload for headers and the JSON wrapper."""
_FIRST_RETRY = 0.5
REPLAY_RECORDS = 500
"""Rows per replay chunk (router/replay.py commits each)."""
_REPLAY_READ = 512 * 1024
"""Raw bytes read back before they are translated (off the loop) into replay chunks."""
_REPLAY_SEEN = 100_000
"""Row keys a replay remembers to replay a row once when it was archived twice (see _Recent)."""


def odbc_settings(cfg: OdbcInterfaceConfig) -> OdbcSettings:
    """The poller's part of an odbc interface's config."""
    return OdbcSettings(
        connection_string=cfg.connection_string, query=cfg.query, mode=cfg.watermark,
        key_column=cfg.key_column, timestamp_column=cfg.timestamp_column,
        safety_lag_seconds=cfg.safety_lag_seconds, batch_size=cfg.batch_size, poll_seconds=cfg.poll_seconds,
        query_timeout=cfg.query_timeout_seconds, reconnect_max_backoff=cfg.reconnect_max_backoff_seconds,
        mark_statement=cfg.mark_statement, limit_clause=cfg.limit_clause,
    )


class CheckpointStore:
    """The interface's checkpoint in KV, written with compare-and-set on its revision.

    Compare-and-set fences a second instance polling the same interface: the one whose
    write is refused reloads the other's checkpoint instead of moving it backwards.

    With a `fence` (the interface's lease, router/leases.py) the value also carries the
    writer's ``epoch``: every write first checks the lease is still held; the first load of a
    new owner rewrites the checkpoint with its epoch, so a former owner's compare-and-set on
    the revision it read fails; and a checkpoint of a later epoch is never written over
    (`LeaseLost`: this instance is not the owner any more).
    """

    def __init__(self, kv: Bucket, key: str, fence: Fence | None = None) -> None:
        self.kv = kv
        self.key = key
        self.fence = fence
        self.revision: int | None = None

    async def load(self) -> Checkpoint:
        """The stored checkpoint, or the beginning when none is stored yet."""
        checkpoint, epoch = await self._read()
        if self.fence is not None and epoch != self.fence.epoch:
            if epoch > self.fence.epoch:
                raise LeaseLost(f"{self.key}: checkpoint of a later owner (epoch {epoch})")
            # A takeover: stored again under this owner's epoch, so a former owner's write fails.
            try:
                await self._write(checkpoint)
            except RevisionConflict:
                return await self.load()  # moved meanwhile: judged again
        return checkpoint

    async def _read(self) -> tuple[Checkpoint, int]:
        entry = await self.kv.get(self.key)
        if entry is None:
            self.revision = None
            return Checkpoint(), 0
        self.revision = entry.revision
        if not entry.value:
            return Checkpoint(), 0
        epoch = json.loads(entry.value).get("epoch", 0)
        return Checkpoint.from_json(entry.value), epoch if isinstance(epoch, int) else 0

    async def _write(self, checkpoint: Checkpoint) -> None:
        if self.fence is None:
            value = checkpoint.to_json().encode()
        else:
            self.fence.check()  # immediately before the write
            value = json.dumps({**json.loads(checkpoint.to_json()), "epoch": self.fence.epoch},
                               separators=(",", ":")).encode()
        if self.revision is None:
            self.revision = await self.kv.create(self.key, value)
        else:
            self.revision = await self.kv.update(self.key, value, last=self.revision)

    async def save(self, checkpoint: Checkpoint) -> Checkpoint:
        """Stores ``checkpoint``; returns what is stored now (another writer's on a conflict)."""
        try:
            await self._write(checkpoint)
        except RevisionConflict:
            stored, epoch = await self._read()
            if self.fence is not None and epoch > self.fence.epoch:
                raise LeaseLost(f"{self.key}: checkpoint moved by a later owner (epoch {epoch})") from None
            log.warning("checkpoint %s was moved by another writer; continuing from it", self.key)
            return stored
        return checkpoint


class OdbcPipeline:
    """The odbc input of the stage (router/stage.py): see the module docstring.

    Its own parts: the checkpoint, the poller and its read-ahead, the raw archive of rows as
    JSON chunks, and the acknowledgement -- the mark statement, then the checkpoint.
    """

    def __init__(
        self, cfg: OdbcInterfaceConfig, store: Store, routes: RouteTable, poller: OdbcPoller,
        stats: InterfaceStats, checkpoints: CheckpointStore, *, reference: ReferenceStore | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.poller = poller
        self.stats = stats
        self.checkpoints = checkpoints
        self.fence = fence
        """The interface's lease: checked before each publish, mark and checkpoint (router/leases.py)."""
        self.stage = Stage(cfg.name, store, routes, stats, reference=reference, timezone=cfg.timezone)
        self.checkpoint: Checkpoint | None = None
        self.batches = 0
        cap = cfg.reconnect_max_backoff_seconds
        self._retry = Backoff(min(_FIRST_RETRY, cap), cap)  # full jitter
        self.failing: str | None = None
        """Why the last poll failed (a query error, NATS away), until a poll succeeds; for readiness."""
        # The batch after the one being processed, read while it is processed (see run()).
        self._ahead: asyncio.Task[Batch | None] | None = None
        # That batch archived and translated while the one before is committed (see run()).
        self._next: asyncio.Task[tuple[Batch, Outcome] | None] | None = None
        # The batch after that one, read as soon as that one was (see _prepare_ahead()).
        self._further: asyncio.Task[Batch | None] | None = None
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
        """Polls until ``stopping`` is set; a batch in progress is finished first.

        Each run starts from the stored checkpoint (another owner may have moved it since the
        last run). `LeaseLost` from a fenced write ends the run; nothing of the batch after it
        is written.
        """
        self.checkpoint = None
        try:
            while not stopping.is_set():
                try:
                    if self.checkpoint is None:
                        self.checkpoint = await self.checkpoints.load()
                    prepared = await self._take_next(stopping)
                    batch = prepared[0] if prepared is not None else await self._next_batch(stopping)
                    if batch is None:
                        if not stopping.is_set():
                            self.failing = None  # a good pass: the query answered, nothing new
                        await _sleep(stopping, self.cfg.poll_seconds)
                        continue
                    # Read the next batch on the poller's thread, then archive and translate it,
                    # while this one is committed (pipelined). Its events are not published
                    # before this batch's checkpoint is stored, and it is dropped whenever that
                    # checkpoint is not the one it was read after (or this batch fails).
                    further, self._further = self._further, None
                    # The read after this batch, begun while it was prepared (unless a mark
                    # statement is set); one begun after a batch not prepared ahead is not it.
                    if further is None or prepared is None:
                        await _discard(further)
                        further = asyncio.create_task(self.poller.next_batch(batch.checkpoint_after))
                    self._ahead = further
                    self._next = asyncio.create_task(self._prepare_ahead(self._ahead, stopping))
                    stored = await self.process(batch, prepared[1] if prepared is not None else None)
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
        following, self._next = self._next, None
        ahead, self._ahead = self._ahead, None
        further, self._further = self._further, None
        for task in (following, ahead, further):
            await _discard(task)

    async def _take_next(self, stopping: asyncio.Event) -> tuple[Batch, Outcome] | None:
        """The batch prepared while the one before was committed, with its outcome; None when
        there is none (nothing was ready when it was read: :meth:`_next_batch` asks again). A
        failure to read, archive or translate it is raised here, as the batch's own would be."""
        following, self._next = self._next, None
        if following is None:
            return None
        self._ahead = None  # consumed by the preparation
        prepared = await _unless(stopping, following)
        return prepared

    async def _prepare_ahead(self, ahead: asyncio.Task[Batch | None],
                             stopping: asyncio.Event) -> tuple[Batch, Outcome] | None:
        batch = await ahead
        if batch is None or stopping.is_set():
            return None
        if self.cfg.mark_statement is None:
            # The read after this batch starts now, while it is archived and translated, not once
            # it is committed: the poller's thread would otherwise idle through the translation.
            # It moves nothing either. Not with a mark statement, which must not queue behind it.
            self._further = asyncio.create_task(self.poller.next_batch(batch.checkpoint_after))
        return batch, await self._prepare(batch)

    async def _prepare(self, batch: Batch) -> Outcome:
        """Archives a batch's rows and translates them (off the loop) into an outcome to commit."""
        with gc_paused():
            route = self.stage.route()
            self._fenced()
            refs = await self._archive(batch)
            # Translating and routing a batch (up to batch_size rows) run in a worker thread
            # (router/offload.py): the loop only publishes, so MLLP ACKs never wait for a batch.
            return await off_loop(self._outcome, batch, refs, route)

    @traced_unit("receive", lambda self, batch, *_: (self.name, f"{self.cfg.table}: {len(batch.rows)} rows",
                                                     {"rows": len(batch.rows)}), lambda _checkpoint: "committed")
    async def process(self, batch: Batch, prepared: Outcome | None = None) -> Checkpoint:
        """One batch end to end (``prepared``: already archived and translated, by the run loop
        while the batch before was committed); returns the checkpoint now stored. Safe to repeat
        after a crash."""
        self.stats.received += len(batch.rows)
        self.stats.last_message_at = time.time()
        out = prepared if prepared is not None else await self._prepare(batch)
        with gc_paused(), self.stats.commit_latency.timed():
            await self.stage.commit(out, piece=PUBLISH_CHUNK, fence=self._fenced, bulk=True)
        if out.done and self.cfg.mark_statement is not None:
            # After the acknowledgement, before the checkpoint: see the module docstring. A read
            # ahead holds the poller's thread: the mark waits for it rather than spend its query
            # timeout queued behind it.
            await self._settle_ahead()
            self._fenced()
            await self.poller.mark_exported(Batch([], list(out.done), batch.checkpoint_after))
        stored = await self.checkpoints.save(batch.checkpoint_after)
        self.batches += 1
        return stored

    def _fenced(self) -> None:
        """Raises `LeaseLost` unless this instance still holds the interface's lease."""
        if self.fence is not None:
            self.fence.check()

    async def _failed(self, stopping: asyncio.Event, reason: str, delay: float | None = None) -> None:
        self.stats.error(reason)
        self.failing = f"{self.stats.last_error}; retrying"
        log.warning("%s: %s; retrying", self.name, reason)
        wait = self._retry.next_delay() if delay is None else delay
        await _sleep(stopping, wait)

    async def _archive(self, batch: Batch) -> list[str]:
        """Stores the rows as JSON chunks; returns each row's raw reference."""
        chunks, items = await off_loop(raw_chunks, self.name, self.cfg.table, self.cfg.key_column, batch.rows,
                                       batch.keys, self.store.max_payload - _RAW_HEADROOM)
        refs: list[str] = []
        # A duplicate's ack carries the sequence of the copy stored first: its reference.
        for (a, b), ref in zip(chunks, await self.stage.archive_many(items), strict=True):
            refs += [ref] * (b - a)
        return refs

    # -- rows to records -----------------------------------------------------------------

    @traced_sync("translate", lambda self, batch, *_: {"interface": self.name, "rows": len(batch.rows)})
    def _outcome(self, batch: Batch, refs: list[str], route: Route) -> Outcome:
        """The batch's rows routed into an outcome (in a worker thread); ``done`` lists the keys
        of the modern rows whose events it holds: those to mark. Each row's mode is fixed from its
        facility column (a reference table may rename the facility in the events, and the canary
        must route the row as its legacy check did); a legacy row is not translated.

        A row that translates goes to the stage without a :class:`Record` (`Stage.add_unit`), its
        ledger delta made as it is added: per row, those objects and a second pass over them cost
        more than the rest of what the stage does with it."""
        out = Outcome(unit_deltas=ledger.UnitDeltas(self.name))
        lean = not self.store.cfg.key_index
        table, key_column = self.cfg.table, self.cfg.key_column
        received = datetime.now(UTC)
        contexts: dict[str, TranslationContext] = {}
        facility_of = self._facility_reader(batch.rows[0]) if batch.rows else self._facility
        for row, key, ref in zip(batch.rows, batch.keys, refs, strict=True):
            facility = facility_of(row)
            mode = route.mode_for(facility)
            if mode == "legacy":
                self.stage.add(out, _row_record(table, key, facility, ref, mode), route)
                continue
            ctx = contexts.get(ref)
            if ctx is None:
                ctx = contexts[ref] = self.stage.context(ref, route, received)
            try:
                events = self._events(table, key_column, row, key, ctx)
            except CanonicalError as exc:
                record = _row_record(table, key, facility, ref, mode)
                self._failed_row(record, exc, table, key_column, key)
                self.stage.add(out, record, route)
                continue
            ids = self._row_ids(table, key, events)
            if lean:  # no Record made: per row it costs more than the rest of what the stage does
                self.stage.add_unit(out, f"odbc|{table}|{key}", f"{table}:{key}", events, ids, facility, mode, key)
                continue
            record = _row_record(table, key, facility, ref, mode)
            record.events, record.msg_ids = events, ids
            self.stage.add(out, record, route)
        return self.stage.prepare(out)

    def _records(self, table: str, key_column: str, rows: Sequence[Row], keys: Sequence[Key],
                 refs: Sequence[str]) -> list[Record]:
        """One record per row, every row translated, for a replay (which routes them)."""
        received = datetime.now(UTC)
        contexts: dict[str, TranslationContext] = {}
        records: list[Record] = []
        facility_of = self._facility_reader(rows[0]) if rows else self._facility
        for row, key, ref in zip(rows, keys, refs, strict=True):
            record = _row_record(table, key, facility_of(row), ref)
            records.append(record)
            ctx = contexts.get(ref)
            if ctx is None:
                ctx = contexts[ref] = self.stage.context(ref, None, received)
            try:
                record.events = self._events(table, key_column, row, key, ctx)
            except CanonicalError as exc:
                self._failed_row(record, exc, table, key_column, key)
                continue
            record.msg_ids = self._row_ids(table, key, record.events)
        return records

    def _row_ids(self, table: str, key: Key, events: list[CloudEvent]) -> list[str]:
        """The Msg-Ids of a row's events: from the row key, not the mapping's key, so two rows are
        never collapsed into one."""
        text = str(key)
        return [_digest("row", self.name, table, text, ev.type) for ev in events]

    def _failed_row(self, record: Record, exc: CanonicalError, table: str, key_column: str, key: Key) -> None:
        record.error = _located(exc, _locator(table, key_column, key))
        # Only a dead letter needs it: a digest per row otherwise costs ~3 us for nothing.
        record.letter_id = _digest("row", self.name, table, str(key))

    def _events(self, table: str, key_column: str, row: Row, key: Key, ctx: TranslationContext,
                ) -> list[CloudEvent]:
        mapping = self.cfg.mapping
        # Without a declared key the row key is the record's identity (its event id and record_key).
        unit, index = (table, key) if isinstance(key, int) else (f"{table}:{key}", 0)
        events = map_record(row_values(row, mapping.fields), mapping, ctx, unit=unit, index=index,
                            locator=_locator(table, key_column, key))
        return self.stage.enriched(events)

    def _facility(self, row: Row) -> str | None:
        if self._facility_spec is None:
            return None
        value = next(iter(row_values(row, [self._facility_spec]).values()), None)
        text = "" if value is None else str(value).strip()
        return text or None

    def _facility_reader(self, first: Row) -> Callable[[Row], str | None]:
        """:meth:`_facility` for the rows of one query result (they share their columns): the
        column is looked up once, as ``row_values`` finds it, instead of per row (a column
        missing from the row made ``row_values`` fold every row's names)."""
        spec = self._facility_spec
        if spec is None:
            return lambda _row: None
        wanted = spec.column or spec.field
        column: str | None = wanted if wanted in first else None
        if column is None:
            folded = wanted.casefold()
            for name in first:  # the last match wins, as in row_values' folded dict
                if name.casefold() == folded:
                    column = name
        if column is None:
            shape = first.keys()
            return lambda row: None if row.keys() == shape else self._facility(row)
        found = column

        def facility(row: Row) -> str | None:
            if found not in row:  # not shaped like the first row: the general lookup
                return self._facility(row)
            value = row[found]
            text = "" if value is None else str(value).strip()
            return text or None

        return facility

    # -- replay --------------------------------------------------------------------------

    async def replay_chunks(self, since: datetime) -> AsyncGenerator[ReplayChunk, None]:
        """The rows archived since ``since`` as the live path makes them records (same keys,
        Msg-Ids and raw references), translated again, off the loop, with the mapping and
        reference tables of now; in chunks of at most REPLAY_RECORDS rows."""
        seen = _Recent(_REPLAY_SEEN)
        subject = names.raw_subject(self.name)
        async with contextlib.aclosing(self.store.scan(names.STREAM_RAW, subject, since)) as raw:
            pending: list[StoredMsg] = []
            size = 0
            async for msg in raw:
                pending.append(msg)
                size += len(msg.data)
                if size >= _REPLAY_READ or msg.pending == 0:
                    for chunk in await off_loop(self._replay, pending, seen):
                        yield chunk
                    pending, size = [], 0
            if pending:
                for chunk in await off_loop(self._replay, pending, seen):
                    yield chunk

    def _replay(self, msgs: list[StoredMsg], seen: _Recent) -> list[ReplayChunk]:
        """Stored chunks back to records (in a worker thread), cut into replay chunks."""
        records: list[Record] = []
        where: list[tuple[str, str]] = []  # (table, key) of each record, for the labels
        for msg in msgs:
            ref = names.raw_ref(names.STREAM_RAW, msg.seq)
            try:
                chunk = read_chunk(msg.data)
            except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                # Not a chunk of rows: reported by the replay as a failure, never published.
                error = CanonicalError(f"raw chunk {ref} is not readable as rows ({type(exc).__name__})")
                records.append(Record(f"odbc-raw|{msg.seq}", f"raw {msg.seq}", error=error, raw=ref))
                where.append(("raw", str(msg.seq)))
                continue
            # A batch read again after a crash may be archived again in other chunks: once here.
            fresh = [i for i, key in enumerate(chunk.keys) if seen.first(chunk.table, key)]
            keys = [chunk.keys[i] for i in fresh]
            records += self._records(chunk.table, chunk.key_column, [chunk.rows[i] for i in fresh], keys,
                                     [ref] * len(fresh))
            where += [(chunk.table, str(key)) for key in keys]
        out: list[ReplayChunk] = []
        for start in range(0, len(records), REPLAY_RECORDS):
            end = min(start + REPLAY_RECORDS, len(records))
            (table, first), (_, last) = where[start], where[end - 1]
            out.append(ReplayChunk(records[start:end], units=end - start, label=f"{table} {first}..{last}"))
        return out


class _Recent:
    """The row keys a replay saw lately, in two generations of at most ``size`` (bounded
    memory): a row archived twice (a batch read again after a crash, cut into other chunks)
    is replayed once, from its first chunk -- the raw reference its events carry."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.new: set[tuple[str, Key]] = set()
        self.old: set[tuple[str, Key]] = set()

    def first(self, table: str, key: Key) -> bool:
        """Whether this row was not seen lately (and remembers it)."""
        item = (table, key)
        if item in self.new or item in self.old:
            return False
        self.new.add(item)
        if len(self.new) >= self.size:
            self.old, self.new = self.new, set()
        return True


def _locator(table: str, key_column: str, key: Key) -> str:
    return f"{table} row {key_column}={key}"


def _row_record(table: str, key: Key, facility: str | None, ref: str, mode: Mode | None = None) -> Record:
    """A row as a stage record, under the unit ids of before the stage (ledger deltas and dead
    letters keep their Msg-Ids); ``mode`` fixed from its facility column (None: a replay routes it)."""
    return Record(f"odbc|{table}|{key}", f"{table}:{key}", facility=facility, raw=ref, tag=key, mode=mode)


def _located(exc: CanonicalError, locator: str) -> CanonicalError:
    """The error with the row's locator leading its reason (the dead letter's): map_record's
    reasons start with it, an enrichment error's names only the reference table."""
    if locator not in exc.reason:
        exc.reason = f"{locator}: {exc.reason}"
    return exc


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


async def _discard(task: asyncio.Task[Any] | None) -> None:
    """Cancels a read or preparation ahead; cancelled, finished or failed, it is discarded
    (cancelling a poll is safe; a batch archived ahead dedupes when read and archived again)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _sleep(stopping: asyncio.Event, seconds: float) -> None:
    await _unless(stopping, asyncio.sleep(seconds))
