"""The file input of the stage (router/stage.py): `folder` and `sftp` interfaces.

For each file the source reports complete: skip it if the manifest has it done (by name,
or by content when `dedupe_content`); fetch it: the source copies it into the spool and
checks it is still the listed file (one snapshot per file; everything below reads only
that copy); hash it; store the original in the raw object store; read the route once (a
flip while the file is read cannot split it); then
- when the route translates anything (its mode, or a facility override, is not legacy):
  stream the file's records through the stage, chunk by chunk -- each record routed by its
  facility: events on live subjects (modern), on `shadow.` subjects (shadow), or only
  counted (legacy); a bad record dead-lettered with file, line and reason -- and advance
  the manifest's resume point only after JetStream acknowledged a chunk. In an HL7 v2 file
  (format "hl7v2", FHS/BHS batch or not) each message is a record, routed by its MSH-4;
  with `ack_file` its batch ACK is written once the last chunk is committed (router/hl7_files.py);
- deliver the original bytes to the legacy destination (temp name, rename) when any of its
  records is routed legacy or shadow: the interface's mode, or a facility override, is
  legacy or shadow. A file cannot be split without changing the bytes the legacy consumer
  receives, so in a canary (one facility `modern` while the interface is in shadow or
  legacy) the legacy consumer still gets the whole file, that facility's records included,
  while Ficus publishes that facility's events live;
- a route that translates nothing (legacy, no facility override other than legacy) counts
  the file as one legacy unit, unread;
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

Replay (:meth:`FilePipeline.replay_chunks`) reads the originals back from the raw object
store by their manifest entries and yields their records as the live path builds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from canonical.context import TranslationContext
from canonical.errors import CanonicalError
from canonical.reference import ReferenceData, ReferenceStore
from legacy.file_delivery import DeliveryConflict, DeliveryError, DeliveryUnavailable
from protocols.backoff import Backoff
from router import gl_export, ledger
from router.config import FileInterfaceConfig
from router.dlq import DeadLetter, now_iso
from router.file_child import AHEAD, ChunkTranslator, FileJob
from router.file_units import Hl7Spec, Unit, file_units, sha256_of
from router.gl_layout import BadLine, GlLine, LayoutError, read_lines
from router.hl7_files import HEAD_BYTES, AckFile
from router.leases import Fence, LeaseLost
from router.manifest import FileEntry, Manifest
from router.offload import gc_paused, off_loop
from router.routes import Route, RouteTable
from router.stage import Outcome, Record, ReplayChunk, Stage
from router.stats import InterfaceStats
from router.store import NotFound, Objects, Store, StoreError
from router.tracing import current_traceparent, span, traced_sync, traced_unit
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
"""Events (or dead letters) per chunk translated off the loop; records per replay chunk."""
CHUNK_RECORDS = 5000
"""Records per chunk at most, whatever they come to: records only counted (a facility routed
legacy in a canary) or filtered publish nothing, and the resume point still has to advance."""
RETRY_MAX_SECONDS = 300.0
"""The longest pause between two attempts at a file set aside."""
REPLAYED_STATES = ("done", "duplicate")
"""Manifest states whose content is replayed (and ``failed`` with a raw copy)."""
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
    """The folder/sftp input of the stage: polls one file interface and processes each
    complete file exactly once (see the module docstring).

    Its own parts: the scan, fetch and spool snapshot, files set aside and stuck, the
    manifest and its resume point (the acknowledgement), content dedupe, the legacy file
    delivery and the finish action (archive, delete, leave).
    """

    def __init__(
        self, cfg: FileInterfaceConfig, store: Store, routes: RouteTable, source: FileSource,
        delivery: Delivery | None, stats: InterfaceStats, manifest: Manifest, objects: Objects,
        spool_dir: Path, *, reference: ReferenceStore | None = None, acks: Delivery | None = None,
        fence: Fence | None = None, pipelined: bool = True,
    ) -> None:
        self.cfg = cfg
        self.pipelined = pipelined
        self.name = cfg.name
        self.store = store
        self.source = source
        self.delivery = delivery
        self.stats = stats
        self.manifest = manifest
        self.objects = objects
        self.spool_dir = spool_dir
        self.acks = acks
        """Where an HL7 file's batch ACK is written (`ack_file`), else None."""
        self.fence = fence
        """The interface's lease (router/leases.py): checked before every publish, delivery, manifest
        write and finish action, so an instance that lost it acts on no file any more."""
        self.hl7 = Hl7Spec(cfg.hl7_mapping, cfg.encoding, cfg.fallback_encoding)
        self.translator = ChunkTranslator(cfg.name) if cfg.translate_process else None
        """The translator process of ``translate_process`` (router/file_child.py), else None."""
        # An 835's dead letter holds up payments, any other file's charges.
        self.stage = Stage(cfg.name, store, routes, stats, reference=reference, timezone=cfg.timezone,
                           money_format=cfg.format)
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
        self._replay_ids = itertools.count(1)

    async def run(self, stopping: asyncio.Event) -> None:
        """Scans and processes until `stopping` is set; the file in progress is finished first.

        `LeaseLost` (a fenced step refused) ends the run at once: the file in hand is left as
        it is, for the next owner to resume from its manifest entry.
        """
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
        except LeaseLost:
            if aside is None or aside.local is None:
                self._drop_copy()
            raise
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

    def _fenced(self) -> None:
        """Raises `LeaseLost` unless this instance still holds the interface's lease."""
        if self.fence is not None:
            self.fence.check()

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
                            mode=self.stage.mode_for(), unit=printable(ref.name),
                            raw=aside.raw or None, locator="file", at=now_iso())
        count = ledger.unit_delta(self.name, letter.mode, f"aside|{ref.name}|{ref.size}|{ref.mtime}", None,
                                  "dead_lettered")  # one unit: the part of the file never read
        self._fenced()
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
        self._fenced()
        try:
            await self.source.finish(ref, action, self.cfg.archive_dir)
        except FileChanged as exc:
            self.changed_under_ficus += 1
            log.warning("%s: %s", self.name, exc.reason)

    @traced_unit("receive", lambda self, ref, _local: (self.name, printable(ref.name), {"bytes": ref.size}),
                 lambda entry: f"{entry.state}: {entry.events} events, {entry.dead_letters} dead letters")
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
            self._fenced()
            await self.store.publish([ledger.unit_delta(
                self.name, self.stage.mode_for(), f"file-dup|{ref.name}|{ref.size}|{ref.mtime}|{sha}",
                None, "duplicates", units=max(entry.next_record, 1))])
            await self.manifest.record(dup)
            await self._finish(ref, self.cfg.after)
            log.info("%s: %s has the content of %s; skipped", self.name, shown, printable(entry.name))
            return dup
        if entry is None or entry.state not in ("processing", "failed"):
            entry = FileEntry(self.name, ref.name, ref.size, ref.mtime, sha)
        entry.state = "processing"  # a failed one resumes from its resume point
        self._fenced()
        entry.raw = await self.stage.archive_file(self.objects, local, sha)
        self._raw = entry.raw
        await self.manifest.record(entry)
        route = self.stage.route()  # once per file: a flip while it is read cannot split it
        # The legacy GL export is read in every mode as GL parity's reference, never translated.
        translated = Stage.translates(route) and self.cfg.gl is None
        ack: AckFile | None = None
        if self.cfg.gl is not None:
            await self._reference(local, entry, route)
        elif translated:
            ack = AckFile(entry.sha256, ref.mtime) if self.acks is not None and self.cfg.ack_file else None
            await self._publish(local, entry, route, ack)
        if _delivered(route) and self.delivery is not None and not entry.delivered:
            try:
                with span("legacy forward", interface=self.name, unit=entry.sha256):
                    self._fenced()
                    await self.delivery.deliver(local, ref.name)
            except DeliveryError:
                self.stats.legacy_errors += 1
                raise
            entry.delivered = True
            self.stats.legacy_forwarded += 1
        if ack is not None and not entry.acked:
            await self._write_ack(local, ref.name, ack)
            entry.acked = True
        if not translated:  # not read by Ficus: the file is one unit (router/ledger.py)
            self._fenced()
            await self.store.publish([ledger.unit_delta(
                self.name, route.mode, f"file|{ref.name}|{ref.size}|{ref.mtime}|{entry.sha256}", None, "legacy")])
        entry.state = "done"
        entry.outcome = f"{_route_text(route)}: {entry.events} events, {entry.dead_letters} dead letters"
        await self.manifest.record(entry)
        self.stats.acked += 1
        await self._finish(ref, self.cfg.after)
        log.info("%s: %s done (%s)", self.name, shown, entry.outcome)
        return entry

    async def _write_ack(self, local: Path, name: str, ack: AckFile) -> None:
        """The file's batch ACK, `<name><ack_suffix>`, through its own delivery (temp name, rename;
        written over when there: the same ACK again after a crash)."""
        assert self.acks is not None
        ack_name = name + self.cfg.ack_suffix
        with local.open("rb") as fh:
            head = await asyncio.to_thread(fh.read, HEAD_BYTES)
        content = await asyncio.to_thread(ack.content, head, name)
        spooled = self.spool_dir / ".ack" / f"{next(self._aside_ids)}-{os.getpid()}"
        try:
            await asyncio.to_thread(spooled.parent.mkdir, exist_ok=True)
            await asyncio.to_thread(spooled.write_bytes, content)
            with span("ack file", interface=self.name, unit=ack.sha256):
                self._fenced()
                await self.acks.deliver(spooled, ack_name)
        finally:
            await asyncio.to_thread(spooled.unlink, missing_ok=True)
        log.info("%s: %s written (%d messages)", self.name, printable(ack_name), len(ack.acks))

    async def _publish(self, local: Path, entry: FileEntry, route: Route, ack: AckFile | None = None) -> None:
        """Streams the file's records through the stage from the resume point, chunk by chunk.

        Reading, translating, enriching, routing and serialising a chunk runs in a worker
        thread (router/offload.py), so a big file never holds the event loop (and every MLLP
        ACK of the process) for longer than a GIL switch interval; the loop only commits each
        chunk and advances the resume point. Pipelined (unless an MLLP listener shares the
        process: `pipelined`): the next chunk is translated while the one before is stored and
        acknowledged, but chunks are committed one at a time, in order,
        and the resume point moves past a chunk only once all of it is acknowledged (_commit);
        a chunk translated ahead of a failed commit is dropped, cut again from the resume point.
        """
        ctx = self.stage.context(entry.raw, route)
        reference = self.stage.reference.data if self.stage.reference is not None else None
        if self.translator is not None:
            await self._publish_from_child(local, entry, route, ack, ctx, reference)
            return
        with gc_paused() as gc_pause, local.open("rb") as fh:
            units = file_units(fh, self.cfg.format, self.cfg.flat, ctx, name=printable(entry.name),
                               sha256=entry.sha256, reference=reference, hl7=self.hl7)
            if ack is not None:  # every unit's ACK, those below the resume point too
                units = ack.collect(units)
            chunk = await _finished_first(off_loop(self._chunk, units, entry, route, entry.next_record))
            while not chunk.last:
                if self.pipelined:
                    following = asyncio.ensure_future(off_loop(self._chunk, units, entry, route, chunk.next_record))
                    try:
                        await self._commit(entry, chunk)
                    except BaseException:
                        # The worker thread is reading the open file: let it finish its chunk first.
                        await _settled(following)
                        raise
                else:  # an MLLP listener shares the process: one thing at a time
                    await self._commit(entry, chunk)
                    following = asyncio.ensure_future(off_loop(self._chunk, units, entry, route, chunk.next_record))
                chunk = await _finished_first(following)
                gc_pause.breathe()
            await self._commit(entry, chunk)

    async def _publish_from_child(self, local: Path, entry: FileEntry, route: Route, ack: AckFile | None,
                                  ctx: TranslationContext, reference: ReferenceData | None) -> None:
        """:meth:`_publish` with the chunks cut in the pipeline's translator process
        (``translate_process``, router/file_child.py): the same chunks, committed here in order,
        the resume point advanced after each; the child is at most AHEAD chunks ahead. Any
        failure -- in the child (an exception, its death) or here -- kills the child with what it
        cut ahead, and fails the attempt: the file is retried from its resume point. Beside an
        MLLP listener (not `pipelined`) the child cuts a chunk only once the one before is
        committed, as the in-process path does there."""
        translator = self.translator
        assert translator is not None
        store_cfg = self.store.cfg
        job = FileJob(str(local), self.cfg, entry, route, ctx, reference, False, store_cfg.key_index,
                      store_cfg.event_index, ack.mtime if ack is not None else None, current_traceparent(),
                      ahead=AHEAD if self.pipelined else 1)
        with gc_paused() as gc_pause:
            try:
                translator.begin(job)
                while True:
                    chunk, extras = await translator.next()
                    await self._commit(entry, chunk)
                    if chunk.last:
                        break
                    translator.credit()
                    gc_pause.breathe()
            except BaseException:
                await translator.abandon()
                raise
        if ack is not None and extras is not None:
            ack.first, ack.acks = extras

    async def close(self) -> None:
        """Stops the translator process, if any (at shutdown)."""
        if self.translator is not None:
            await asyncio.to_thread(self.translator.close)

    async def _reference(self, local: Path, entry: FileEntry, route: Route) -> None:
        """Stores a GL export's lines as GL parity's reference (router/gl_export.py), 500 at a time
        read off the loop; a line that cannot be read is dead-lettered (the reference of its day
        is then short of it, which parity shows as a difference). Idempotent: a file read again
        stores the same messages (and the reader counts a line once)."""
        assert self.cfg.gl is not None
        label = printable(entry.name)
        days: dict[str, int] = {}
        with local.open("rb") as fh:
            try:
                lines = read_lines(fh, self.cfg.gl, entry.sha256)
            except LayoutError as exc:
                letter = DeadLetter(interface=self.name, kind="untranslatable", reason=f"{label}: {exc.reason}",
                                    mode=route.mode, unit=label, raw=entry.raw or None, locator="file", at=now_iso())
                self._fenced()
                await self.store.publish([letter.outgoing(f"{entry.sha256}:layout")])
                entry.dead_letters += 1
                self.stats.dead_lettered += 1
                return
            while True:
                chunk = await asyncio.to_thread(lambda: list(itertools.islice(lines, BATCH)))
                if not chunk:
                    break
                good = [x for x in chunk if isinstance(x, GlLine)]
                letters = [DeadLetter(interface=self.name, kind="untranslatable", reason=f"{label} {x.reason}",
                                      mode=route.mode, unit=f"{label} line {x.line}", raw=entry.raw or None,
                                      locator=f"line {x.line}", at=now_iso()).outgoing(f"{entry.sha256}:{x.index}")
                           for x in chunk if isinstance(x, BadLine)]
                self._fenced()
                await self.store.publish([*gl_export.reference_messages(self.name, good), *letters])
                for line in good:
                    days[line.day] = days.get(line.day, 0) + 1
                entry.events += len(good)
                entry.dead_letters += len(letters)
                self.stats.dead_lettered += len(letters)
        self._fenced()
        await gl_export.mark_days(self.store, self.name, entry.sha256, days)

    @traced_sync("translate", lambda self, _units, entry, _route, start: {"interface": self.name,
                                                                         "unit": entry.sha256, "from_record": start})
    def _chunk(self, units: Iterator[Unit], entry: FileEntry, route: Route, start: int) -> _Chunk:
        """The next records (in a worker thread), routed into one outcome (:func:`cut_chunk`)."""
        return cut_chunk(self.stage, units, entry, route, start)

    async def _commit(self, entry: FileEntry, chunk: _Chunk) -> None:
        """Commits a chunk through the stage -- events, dead letters, then its ledger deltas, one
        per mode, identified by the content and the record range, which a retry from the resume
        point reproduces exactly -- and only then advances the resume point (the acknowledgement)."""
        out = chunk.out
        if out.records:
            with self.stats.commit_latency.timed():
                await self.stage.commit(out, batch=_batch_id(entry, chunk), fence=self._fenced, bulk=True)
        entry.events += out.live + out.shadow
        entry.dead_letters += len(out.letters)
        entry.next_record = max(entry.next_record, chunk.next_record)
        # Only now is the resume point safe: everything below it is acknowledged.
        await self.manifest.record(entry)

    # -- replay (router/replay.py) -------------------------------------------------------

    async def replay_chunks(self, since: datetime) -> AsyncGenerator[ReplayChunk, None]:
        """The records of every file read since ``since`` (its manifest entry done -- or dead-
        lettered with a raw copy -- and written since then), translated again from the original
        in the raw object store with the current mapping and reference tables: each record as
        the live path built it (key, locator, raw, facility, event ids), in chunks of up to
        BATCH records; ``units`` is 1 on the last chunk of each file. Nothing is committed here.

        An original no longer stored comes back as one record in error naming the file.
        """
        cutoff = since.timestamp()
        entries = [e for e in await self.manifest.contents(self.name)
                   if e.updated_at >= cutoff and (e.state in REPLAYED_STATES or (e.state == "failed" and e.raw))]
        entries.sort(key=lambda e: (e.updated_at, e.sha256))
        for done, entry in enumerate(entries):
            async for chunk in self._replay_file(entry):
                chunk.remaining = len(entries) - done - chunk.units
                yield chunk

    async def _replay_file(self, entry: FileEntry) -> AsyncGenerator[ReplayChunk, None]:
        label = printable(entry.name)
        # A copy of its own in the spool, whatever the live pipeline is doing with its files.
        local = self.spool_dir / ".replay" / f"{next(self._replay_ids)}-{os.getpid()}"
        try:
            await asyncio.to_thread(local.parent.mkdir, parents=True, exist_ok=True)
            try:
                with local.open("wb") as out:
                    await self.objects.get_into(f"{self.name}/{entry.sha256}", out)
            except NotFound:
                gone = CanonicalError(f"{label}: original no longer in {entry.raw or 'the raw object store'}")
                yield ReplayChunk([Record(f"file|{entry.sha256}|raw", label, error=gone, raw=entry.raw)], 1, "",
                                  label)
                return
            route = self.stage.route()
            ctx = self.stage.context(entry.raw, route)
            reference = self.stage.reference.data if self.stage.reference is not None else None
            with gc_paused() as gc_pause, local.open("rb") as fh:
                units = file_units(fh, self.cfg.format, self.cfg.flat, ctx, name=label, sha256=entry.sha256,
                                   reference=reference, hl7=self.hl7)
                while True:
                    chunk = await _finished_first(off_loop(_replay_chunk, units, entry, label))
                    if chunk.records or chunk.units:
                        yield chunk
                    if chunk.units:
                        return
                    gc_pause.breathe()
        finally:
            await asyncio.to_thread(local.unlink, missing_ok=True)


def cut_chunk(stage: Stage, units: Iterator[Unit], entry: FileEntry, route: Route, start: int,
              chunk: _Chunk | None = None) -> _Chunk:
    """The next records, routed into one outcome: up to BATCH events or dead letters, or
    CHUNK_RECORDS records; in the pipeline's worker thread, or in its translator process
    (router/file_child.py), which passes the (empty) ``chunk`` to fill.

    The bounds are counts, never a time: a retry from the resume point must cut the same
    chunks, since each chunk's ledger delta is identified by its record range (_commit).
    """
    chunk = chunk if chunk is not None else _Chunk(next_record=start)
    out = chunk.out
    out.tally = {}  # one ledger delta per mode for the chunk (_commit), summed as records come
    events, letters = out.events, out.letters
    for unit in units:
        if unit.index < start:
            continue
        if unit.error is not None or not stage.add_translated(out, unit.events, unit.facility, unit.locator,
                                                              route):
            stage.add(out, file_record(entry.raw, entry.sha256, unit), route)
        if chunk.first is None:
            chunk.first = unit.index
        chunk.next_record = unit.index + 1
        if len(events) >= BATCH or len(letters) >= BATCH or out.records >= CHUNK_RECORDS:
            break
    else:
        chunk.last = True
    if out.records:  # made here, off the loop (Stage.prepare)
        stage.prepare(out, _batch_id(entry, chunk))
    return chunk


def file_record(raw: str, sha256: str, unit: Unit) -> Record:
    """A file unit (a record, an 835 transaction) as a record of the stage, live and in replay:
    keyed by the content and its position; its dead letter's id is the one files always had. An
    HL7 message is routed by its MSH-4 and its dead letter names its sender and type."""
    header = unit.header
    return Record(
        key=f"file|{sha256}|{unit.index}", locator=unit.locator, events=unit.events, error=unit.error,
        facility=unit.facility, index=unit.index, letter_id=f"{sha256}:{unit.index}", raw=raw,
        sender=header.sender if header is not None else None, message_type=unit.message_type,
    )


def _replay_chunk(units: Iterator[Unit], entry: FileEntry, label: str) -> ReplayChunk:
    """The next BATCH records of a file read again (in a worker thread); ``units`` = 1 at its end."""
    records: list[Record] = []
    for unit in units:
        records.append(file_record(entry.raw, entry.sha256, unit))
        if len(records) >= BATCH:
            break
    else:
        return _replay_batch(records, entry, label, units=1)
    return _replay_batch(records, entry, label, units=0)


def _replay_batch(records: list[Record], entry: FileEntry, label: str, units: int) -> ReplayChunk:
    batch = f"file|{entry.sha256}|{records[0].index}|{records[-1].index}" if records else ""
    return ReplayChunk(records, units, batch, label)


def _batch_id(entry: FileEntry, chunk: _Chunk) -> str:
    """A chunk's ledger batch: the content and the record range, which a retry from the resume
    point cuts again exactly."""
    return f"file|{entry.sha256}|{chunk.first}|{chunk.next_record - 1}"


def _delivered(route: Route) -> bool:
    """Whether the legacy consumer gets the file: when any of its records is routed legacy or
    shadow (the file goes whole; see the module docstring)."""
    return route.mode != "modern" or any(m != "modern" for m in route.facilities.values())


def _route_text(route: Route) -> str:
    if not route.facilities:
        return route.mode
    return f"{route.mode} ({', '.join(f'{f}={m}' for f, m in sorted(route.facilities.items()))})"


@dataclass
class _Chunk:
    """Records of a file translated and routed off the loop, ready to commit, and the resume
    point once they are acknowledged."""

    out: Outcome = field(default_factory=Outcome)
    first: int | None = None
    next_record: int = 0
    last: bool = False
    """No record after this chunk."""


async def _settled(task: asyncio.Future[T]) -> None:
    """Waits until ``task`` is over (even when cancelled meanwhile); its outcome is dropped."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: a chunk translated ahead of a failed commit is not reported


async def _finished_first(work: Awaitable[T]) -> T:
    """``work``'s result; when the caller is cancelled meanwhile, the worker thread is still
    reading the open file: wait for it (one chunk) before the cancellation goes on."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
