"""What happens to one complete file on a `folder` or `sftp` interface, per route mode.

For each file the source reports complete: skip it if the manifest has it done (by name,
or by content when `dedupe_content`); fetch it: the source copies it into the spool and
checks it is still the listed file (one snapshot per file; everything below reads only
that copy); hash it; store the original in the raw object store; then
- shadow/modern: stream its records into canonical events (`shadow.` subjects in shadow),
  publishing in batches and advancing the manifest's resume point only after JetStream
  acknowledged a batch; a bad record is dead-lettered with file, line and reason;
- legacy/shadow: deliver the original bytes to the legacy destination (temp name, rename);
and only then mark the file done and archive, delete or leave the source file. A source
file that is no longer the snapshot (replaced, grown) is left in place and taken again as
a new file (counted as `changed_under_ficus`).

A file that cannot be processed -- unreadable, its legacy name still occupied, or any
failure of its own -- is set aside: the files behind it flow, it is retried on its own
schedule (doubling from `poll_seconds` up to 5 minutes, from its spool copy once it has
one), and after `stuck_after_seconds` it is dead-lettered (kind "undeliverable") with a
reason naming the file and the cause, never its content; the raw copy stays in the object
store (or the reason says where the file still is). While a file is set aside the
interface reports not ready. Failures of the whole source, of NATS or of the legacy
destination stop the pass instead and it is retried: no file is dead-lettered for them; the
interface reports not ready from the first failed pass until a pass completes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from canonical.context import TranslationContext
from canonical.reference import ReferenceStore
from legacy.file_delivery import DeliveryConflict, DeliveryError, DeliveryUnavailable
from protocols.backoff import Backoff
from router import ledger, names
from router.config import FileInterfaceConfig, Mode
from router.dlq import DeadLetter, money, now_iso
from router.file_units import Unit, file_units, sha256_of
from router.manifest import FileEntry, Manifest
from router.offload import gc_paused, off_loop
from router.routes import RouteTable
from router.stats import InterfaceStats
from router.store import Objects, Outgoing, Store, StoreError, event_message
from wrappers.file_source import (
    FileChanged,
    FileRef,
    FileSource,
    FileSourceError,
    FileUnavailable,
    FinishAction,
    SourceUnavailable,
    printable,
)

log = logging.getLogger("ficus.files")
T = TypeVar("T")
BATCH = 500
"""Events (or dead letters) per chunk translated off the loop."""
PUBLISH_PIECE = 50
"""Messages per publish call of a chunk: they share the NATS connection with every other
interface, whose messages wait behind those in flight (bench/ack_under_ingest.py: MLLP ACK
p50 18 ms behind pieces of 500 file events, 7 ms behind 100, 3-4 ms behind 50; the file
takes about 20 % longer than with pieces of 500)."""
RETRY_MAX_SECONDS = 300.0
"""The longest pause between two attempts at a file set aside."""
# Failures of everything, not of one file: the pass stops and is retried, no file is blamed.
_PASS_FAILURES = (SourceUnavailable, StoreError, TimeoutError, ConnectionError)


@dataclass
class SetAside:
    """A file that failed on its own; retried on its own schedule until dead-lettered."""

    ref: FileRef
    first_failed: float
    """Monotonic clock at the first failure."""
    attempts: int = 0
    retry_at: float = 0.0
    cause: str = ""
    local: Path | None = None
    """Its spool copy (the snapshot), kept between attempts once made."""
    raw: str = ""
    pauses: Backoff | None = None
    """The pauses between its attempts, made at the first failure."""


class Delivery(Protocol):
    """The legacy path for files (see legacy/file_delivery.py)."""

    async def deliver(self, local_path: Path, name: str) -> str: ...


class FilePipeline:
    """Polls one file interface and processes each complete file exactly once."""

    def __init__(
        self, cfg: FileInterfaceConfig, store: Store, routes: RouteTable, source: FileSource,
        delivery: Delivery | None, stats: InterfaceStats, manifest: Manifest, objects: Objects,
        spool_dir: Path, *, reference: ReferenceStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.routes = routes
        self.source = source
        self.delivery = delivery
        self.stats = stats
        self.manifest = manifest
        self.objects = objects
        self.spool_dir = spool_dir
        self.reference = reference
        self.busy_file: str | None = None
        self.set_aside: dict[FileRef, SetAside] = {}
        self.changed_under_ficus = 0
        """Source files that were replaced or grown while processed (left, taken again)."""
        self.blocked: str | None = None
        """Why the last pass stopped on a failure that needs an operator, else None."""
        self.failing: str | None = None
        """Why the last pass stopped on a failure it retries (source, NATS or legacy destination
        unavailable), else None: readiness reports it from the first failed pass to the next good one."""
        self._source_failed = False
        self._local: Path | None = None
        self._raw = ""
        self._aside_ids = itertools.count(1)

    async def run(self, stopping: asyncio.Event) -> None:
        """Scans and processes until `stopping` is set; the file in progress is finished first."""
        while not stopping.is_set():
            try:
                ready = await self.source.scan()
                if self._source_failed:  # the source answers again: ready before the files are done
                    self.failing, self._source_failed = None, False
                for ref in ready:
                    if stopping.is_set():
                        break
                    if ref not in self.set_aside:  # those go on their own schedule, below
                        await self._attempt(ref, None)
                now = time.monotonic()
                for aside in sorted(self.set_aside.values(), key=lambda a: a.retry_at):
                    if stopping.is_set():
                        break
                    if aside.retry_at <= now:
                        await self._attempt(aside.ref, aside)
                self.blocked = self.failing = None
            except (*_PASS_FAILURES, DeliveryUnavailable) as exc:
                self.stats.error(f"{type(exc).__name__}: {printable(getattr(exc, 'reason', ''))}".rstrip(": "))
                self.failing = f"{self.stats.last_error}; retrying every {self.cfg.poll_seconds:g}s"
                self._source_failed = isinstance(exc, SourceUnavailable) and not isinstance(exc, FileChanged)
                log.warning("%s: will retry: %s", self.name, self.stats.last_error)
            except (FileSourceError, DeliveryError) as exc:  # give up until an operator acts
                self.failing = None
                self.blocked = printable(str(exc))
                self.stats.error(self.blocked)
                log.error("%s: %s", self.name, self.blocked)
            # The source's wait() returns on a change (watchdog) or after its poll interval.
            waiter = asyncio.create_task(self._wait())
            stopper = asyncio.create_task(stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, stopper):
                task.cancel()

    async def _wait(self) -> None:
        """The source's wait, cut short when a file set aside is due."""
        due = [aside.retry_at - time.monotonic() for aside in self.set_aside.values()]
        if not due:
            await self.source.wait()
            return
        with_timeout = asyncio.wait_for(self.source.wait(), max(0.0, min(due)))
        try:
            await with_timeout
        except TimeoutError:
            return

    def problem(self) -> str | None:
        """Why this interface is not ready: a pass that needs an operator, a pass that failed and
        is retried (a missing folder, an SFTP server away), or a file set aside."""
        if self.blocked or self.failing:
            return self.blocked or self.failing
        if self.set_aside:
            oldest = min(self.set_aside.values(), key=lambda a: a.first_failed)
            since = time.monotonic() - oldest.first_failed
            more = f" (and {len(self.set_aside) - 1} more)" if len(self.set_aside) > 1 else ""
            return (f"file {printable(oldest.ref.name)} set aside for {since:.0f}s after {oldest.attempts} "
                    f"attempt(s): {oldest.cause}{more}")
        return None

    def details(self) -> dict[str, object]:
        """For the API: the file in progress, the files set aside, the changed-under-us count."""
        return {
            "busy_file": None if self.busy_file is None else printable(self.busy_file),
            "set_aside": [{"file": printable(a.ref.name), "attempts": a.attempts, "cause": a.cause}
                          for a in self.set_aside.values()],
            "changed_under_ficus": self.changed_under_ficus,
        }

    async def _attempt(self, ref: FileRef, aside: SetAside | None) -> None:
        """One try at one file; its own failures set it aside, the others end the pass."""
        self._local = aside.local if aside is not None else None
        self._raw = aside.raw if aside is not None else ""
        try:
            await self.process(ref, self._local)
        except FileChanged as exc:  # from fetch: still being written, or replaced: scan again
            log.info("%s: %s", self.name, exc.reason)
            if aside is not None:  # replaced before it was ever read: the new file is a new unit
                del self.set_aside[ref]
        except (*_PASS_FAILURES, DeliveryError) as exc:
            if isinstance(exc, DeliveryConflict):
                await self._set_aside(ref, aside, exc)
                return
            if aside is None or aside.local is None:
                self._drop_copy()  # fetched again next pass; a set-aside file keeps its snapshot
            raise
        except FileSourceError as exc:
            if isinstance(exc, FileUnavailable):
                await self._set_aside(ref, aside, exc)
                return
            raise
        except Exception as exc:  # this file's own failure (a bug it triggers): set aside, not a crash
            log.exception("%s: %s failed", self.name, printable(ref.name))
            await self._set_aside(ref, aside, exc)
        else:
            self._drop_copy()
            self.set_aside.pop(ref, None)
            self.failing = None  # a file went through: source, NATS and legacy all answered

    def _drop_copy(self) -> None:
        if self._local is not None and self._local.is_relative_to(self.spool_dir):
            self._local.unlink(missing_ok=True)
        self._local = None

    async def _set_aside(self, ref: FileRef, aside: SetAside | None, exc: BaseException) -> None:
        now = time.monotonic()
        if aside is None:
            aside = self.set_aside[ref] = SetAside(ref, now)
        aside.attempts += 1
        aside.cause = printable(getattr(exc, "reason", None) or type(exc).__name__)
        aside.raw = self._raw or aside.raw
        if self._local is not None and aside.local is None:
            # Its own name in the spool: the next file of the same name is fetched to ref.name.
            keep = self.spool_dir / ".aside" / f"{next(self._aside_ids)}-{os.getpid()}"
            await asyncio.to_thread(keep.parent.mkdir, exist_ok=True)
            await asyncio.to_thread(os.replace, self._local, keep)
            aside.local = keep
        self._local = None
        self.stats.error(f"{printable(ref.name)} set aside: {aside.cause}")
        if now - aside.first_failed >= self.cfg.stuck_after_seconds:
            await self._dead_letter(aside)
            return
        if aside.pauses is None:  # ceilings from poll_seconds doubling to RETRY_MAX_SECONDS, full jitter
            aside.pauses = Backoff(min(self.cfg.poll_seconds, RETRY_MAX_SECONDS), RETRY_MAX_SECONDS)
        pause = aside.pauses.next_delay()
        aside.retry_at = now + pause
        log.warning("%s: %s set aside (attempt %d, retry in %.1fs): %s",
                    self.name, printable(ref.name), aside.attempts, pause, aside.cause)

    async def _dead_letter(self, aside: SetAside) -> None:
        """The bound is reached: a dead letter naming file and cause; the file is left where it is."""
        ref = aside.ref
        seconds = time.monotonic() - aside.first_failed
        if aside.raw:
            kept = f"original in {aside.raw}"
        elif aside.local is not None:
            kept = f"copy kept at {printable(str(aside.local))}"
        else:
            kept = f"file left in {printable(self.cfg.path)}"
        reason = (f"{printable(ref.name)}: not processed after {aside.attempts} attempts in {seconds:.0f}s: "
                  f"{aside.cause}; {kept}")
        letter = DeadLetter(interface=self.name, kind="undeliverable", reason=reason,
                            mode=self.routes.mode_for(self.name), unit=printable(ref.name),
                            raw=aside.raw or None, locator="file", at=now_iso())
        count = ledger.unit_delta(self.name, letter.mode, f"aside|{ref.name}|{ref.size}|{ref.mtime}", None,
                                  "dead_lettered")  # one unit: the part of the file never read
        await self.store.publish([letter.outgoing(f"aside:{ref.name}:{ref.size}:{ref.mtime}"), count])
        self.stats.dead_lettered += 1
        entry = await self.manifest.by_name(self.name, ref.name, ref.size, ref.mtime)
        if entry is None:
            entry = FileEntry(self.name, ref.name, ref.size, ref.mtime)
        entry.state = "failed"
        entry.outcome = reason
        await self.manifest.record(entry)
        del self.set_aside[ref]
        if aside.raw and aside.local is not None:
            await asyncio.to_thread(aside.local.unlink, missing_ok=True)
        await self._finish(ref, "leave")  # never returned by the scan again; untouched
        log.error("%s: dead-lettered %s", self.name, reason)

    async def process(self, ref: FileRef, local: Path | None = None) -> FileEntry:
        """One file, end to end; safe to call again after a crash at any point.

        ``local`` is the file's spool copy from an earlier attempt, else it is fetched.
        """
        known = await self.manifest.by_name(self.name, ref.name, ref.size, ref.mtime)
        if known is not None and known.state in ("done", "duplicate"):
            await self._finish(ref, self.cfg.after)
            return known
        if known is not None and known.state == "failed":  # dead-lettered before: left alone
            await self._finish(ref, "leave")
            return known
        self.busy_file = ref.name
        try:
            return await self._process(ref, local)
        finally:
            self.busy_file = None

    async def _finish(self, ref: FileRef, action: FinishAction) -> None:
        """Archive, delete or leave the source file; one changed under us is left, counted."""
        try:
            await self.source.finish(ref, action, self.cfg.archive_dir)
        except FileChanged as exc:
            self.changed_under_ficus += 1
            log.warning("%s: %s", self.name, exc.reason)

    async def _process(self, ref: FileRef, local: Path | None) -> FileEntry:
        if local is None:
            local = self._local = await self.source.fetch(ref, self.spool_dir)
        sha = await asyncio.to_thread(sha256_of, local)
        self.stats.received += 1
        self.stats.last_message_at = time.time()
        entry = await self.manifest.by_content(self.name, sha)
        shown = printable(ref.name)
        if entry is not None and entry.state in ("done", "duplicate") and self.cfg.dedupe_content:
            dup = FileEntry(self.name, ref.name, ref.size, ref.mtime, sha, "duplicate",
                            outcome=f"same content as {printable(entry.name)}", raw=entry.raw)
            # Its units are the units of the file it repeats (not read again, so no money).
            await self.store.publish([ledger.unit_delta(
                self.name, self.routes.mode_for(self.name), f"file-dup|{ref.name}|{ref.size}|{ref.mtime}|{sha}",
                None, "duplicates", units=max(entry.next_record, 1))])
            await self.manifest.record(dup)
            await self._finish(ref, self.cfg.after)
            log.info("%s: %s has the content of %s; skipped", self.name, shown, printable(entry.name))
            return dup
        if entry is None or entry.state not in ("processing", "failed"):
            entry = FileEntry(self.name, ref.name, ref.size, ref.mtime, sha)
        entry.state = "processing"  # a failed one resumes from its resume point
        entry.raw = await self._archive(local, sha)
        self._raw = entry.raw
        await self.manifest.record(entry)
        mode = self.routes.mode_for(self.name)
        if mode in ("shadow", "modern"):
            await self._publish(local, entry, mode)
        if mode in ("legacy", "shadow") and self.delivery is not None and not entry.delivered:
            try:
                await self.delivery.deliver(local, ref.name)
            except DeliveryError:
                self.stats.legacy_errors += 1
                raise
            entry.delivered = True
            self.stats.legacy_forwarded += 1
        if mode == "legacy":  # not read by Ficus: the file is one unit (router/ledger.py)
            await self.store.publish([ledger.unit_delta(
                self.name, mode, f"file|{ref.name}|{ref.size}|{ref.mtime}|{entry.sha256}", None, "legacy")])
        entry.state = "done"
        entry.outcome = f"{mode}: {entry.events} events, {entry.dead_letters} dead letters"
        await self.manifest.record(entry)
        self.stats.acked += 1
        await self._finish(ref, self.cfg.after)
        log.info("%s: %s done (%s)", self.name, shown, entry.outcome)
        return entry

    async def _archive(self, local: Path, sha: str) -> str:
        """Stores the original bytes once per content; returns the raw reference."""
        obj = f"{self.name}/{sha}"
        if not await self.objects.has(obj):
            with local.open("rb") as fh:
                await self.objects.put(obj, fh)
        return f"objectstore://{names.OBJ_RAW_FILES}/{obj}"

    async def _publish(self, local: Path, entry: FileEntry, mode: Mode) -> None:
        """Streams units into events from the resume point, chunk by chunk.

        Reading, translating, enriching and serialising a chunk runs in a worker thread
        (router/offload.py), so a big file never holds the event loop (and every MLLP ACK
        of the process) for longer than a GIL switch interval; the loop only publishes each
        chunk and advances the resume point. One chunk at a time, so units stay in order.
        """
        ctx = TranslationContext(self.name, "shadow" if mode == "shadow" else "live", entry.raw,
                                 datetime.now(UTC), self.cfg.timezone)
        reference = self.reference.data if self.reference is not None else None
        with gc_paused() as gc_pause, local.open("rb") as fh:
            units = file_units(fh, self.cfg.format, self.cfg.flat, ctx, name=printable(entry.name),
                               sha256=entry.sha256, reference=reference)
            last_index = entry.next_record - 1
            while True:
                chunk = await _finished_first(off_loop(self._chunk, units, entry, mode, last_index))
                last_index = chunk.next_record - 1
                await self._flush(entry, chunk.batch, chunk.letters, chunk.next_record, mode, chunk.parity,
                                  chunk.counts)
                if chunk.last:
                    return
                gc_pause.breathe()

    def _chunk(self, units: Iterator[Unit], entry: FileEntry, mode: Mode, last_index: int) -> _Chunk:
        """The next units (in a worker thread) up to BATCH events or dead letters, as messages.

        The bound is a count, never a time: a retry from the resume point must cut the same
        chunks, since each chunk's ledger delta is identified by its record range (_flush).
        """
        chunk = _Chunk()
        for unit in units:
            if unit.index < entry.next_record:
                continue
            last_index = unit.index
            if unit.error is not None:
                chunk.letters.append(self._letter(entry, unit, mode))
                chunk.counts.add(unit.index, unit.error.facility, "dead_lettered",
                                 money=ledger.letter_money(unit.error.amount, self.cfg.format))
            else:
                chunk.batch.extend(event_message(ev, self.name) for ev in unit.events)
                chunk.counts.add(unit.index, ledger.facility_of(unit.events),
                                 "published" if unit.events else "filtered", len(unit.events),
                                 ledger.money_of(unit.events))
            if mode == "shadow":
                chunk.parity.append((unit.locator, unit.error is None, unit.error.reason if unit.error else ""))
            if len(chunk.batch) >= BATCH or len(chunk.letters) >= BATCH:
                chunk.next_record = last_index + 1
                return chunk
        chunk.next_record = last_index + 1
        chunk.last = True
        return chunk

    async def _flush(self, entry: FileEntry, batch: list[Outgoing], letters: list[Outgoing],
                     next_record: int, mode: Mode, parity: list[tuple[str, bool, str]],
                     counts: ledger.Batch | None = None) -> None:
        # The batch's ledger delta goes last; its id is the content and the record range,
        # which a retry from the resume point reproduces exactly. Published in pieces (an
        # 835 transaction can hold thousands of events): each piece is one stretch of loop
        # time and of the connection, and a retry of the whole chunk dedupes by Msg-Id.
        extra = [] if not counts else [
            ledger.delta(self.name, mode, counts.entries, f"file|{entry.sha256}|{counts.first}|{counts.last}")]
        items = batch + letters + extra
        for start in range(0, len(items), PUBLISH_PIECE):
            await self.store.publish(items[start : start + PUBLISH_PIECE])
        for unit, translated, why in parity:
            # The legacy consumer takes the whole file; Ficus agrees on each record it translates.
            self.stats.parity.record(legacy_ok=True, modern_ok=translated, unit=unit, detail=why)
        if mode == "modern":
            self.stats.published += len(batch)
        else:
            self.stats.shadow_published += len(batch)
        self.stats.dead_lettered += len(letters)
        entry.events += len(batch)
        entry.dead_letters += len(letters)
        entry.next_record = max(entry.next_record, next_record)
        # Only now is the resume point safe: everything below it is acknowledged.
        await self.manifest.record(entry)

    def _letter(self, entry: FileEntry, unit: Unit, mode: Mode) -> Outgoing:
        """A unit's dead letter (built in the chunk's worker thread)."""
        exc = unit.error
        assert exc is not None
        reason = exc.reason  # names file and position once (see file_units)
        letter = DeadLetter(
            interface=self.name, kind="untranslatable", reason=reason, mode=mode, unit=unit.locator,
            raw=entry.raw, facility=exc.facility, amount=money(exc.amount), locator=exc.locator, at=now_iso(),
        )
        return letter.outgoing(f"{entry.sha256}:{unit.index}")


@dataclass
class _Chunk:
    """Units of a file translated off the loop, ready to publish: events, dead letters, parity
    samples and ledger counts, and the resume point once they are acknowledged."""

    batch: list[Outgoing] = field(default_factory=list)
    letters: list[Outgoing] = field(default_factory=list)
    parity: list[tuple[str, bool, str]] = field(default_factory=list)
    counts: ledger.Batch = field(default_factory=ledger.Batch)
    next_record: int = 0
    last: bool = False
    """No unit after this chunk."""


async def _finished_first(work: Awaitable[T]) -> T:
    """``work``'s result; when the caller is cancelled meanwhile, the worker thread is still
    reading the open file: wait for it (one chunk) before the cancellation goes on."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
