"""What happens to one complete file on a `folder` or `sftp` interface, per route mode.

For each file the source reports complete: skip it if the manifest has it done (by name,
or by content when `dedupe_content`); fetch it to a local path; hash it; store the original
in the raw object store; then
- shadow/modern: stream its records into canonical events (`shadow.` subjects in shadow),
  publishing in batches and advancing the manifest's resume point only after JetStream
  acknowledged a batch; a bad record is dead-lettered with file, line and reason;
- legacy/shadow: deliver the original bytes to the legacy destination (temp name, rename);
and only then mark the file done and archive, delete or leave the source file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.js.object_store import ObjectStore

from canonical.context import TranslationContext
from canonical.reference import ReferenceStore
from router import names
from router.config import FileInterfaceConfig, Mode
from router.dlq import DeadLetter, money, now_iso
from router.file_units import Unit, file_units, sha256_of
from router.manifest import FileEntry, Manifest
from router.routes import RouteTable
from router.stats import InterfaceStats
from router.store import Outgoing, Store, StoreUnavailable, event_message
from wrappers.file_source import FileRef, FileSource, FileSourceError, SourceUnavailable

log = logging.getLogger("ficus.files")
BATCH = 500


class Delivery(Protocol):
    """The legacy path for files (see legacy/file_delivery.py)."""

    async def deliver(self, local_path: Path, name: str) -> str: ...


class FilePipeline:
    """Polls one file interface and processes each complete file exactly once."""

    def __init__(
        self, cfg: FileInterfaceConfig, store: Store, routes: RouteTable, source: FileSource,
        delivery: Delivery | None, stats: InterfaceStats, manifest: Manifest, objects: ObjectStore,
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

    async def run(self, stopping: asyncio.Event) -> None:
        """Scans and processes until `stopping` is set; the file in progress is finished first."""
        while not stopping.is_set():
            try:
                ready = await self.source.scan()
                for ref in ready:
                    if stopping.is_set():
                        break
                    await self.process(ref)
            except (SourceUnavailable, StoreUnavailable, nats.errors.Error, TimeoutError) as exc:
                self.stats.error(f"{type(exc).__name__}: {getattr(exc, 'reason', '')}".rstrip(": "))
                log.warning("%s: will retry: %s", self.name, self.stats.last_error)
            except FileSourceError as exc:
                self.stats.error(str(exc))
                log.error("%s: %s", self.name, exc)
            # The source's wait() returns on a change (watchdog) or after its poll interval.
            waiter = asyncio.create_task(self.source.wait())
            stopper = asyncio.create_task(stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, stopper):
                task.cancel()

    async def process(self, ref: FileRef) -> FileEntry:
        """One file, end to end; safe to call again after a crash at any point."""
        known = await self.manifest.by_name(self.name, ref.name, ref.size, ref.mtime)
        if known is not None and known.state in ("done", "duplicate"):
            await self.source.finish(ref, self.cfg.after, self.cfg.archive_dir)
            return known
        self.busy_file = ref.name
        try:
            return await self._process(ref)
        finally:
            self.busy_file = None

    async def _process(self, ref: FileRef) -> FileEntry:
        local = await self.source.fetch(ref, self.spool_dir)
        try:
            sha = await asyncio.to_thread(sha256_of, local)
            self.stats.received += 1
            self.stats.last_message_at = time.time()
            entry = await self.manifest.by_content(self.name, sha)
            if entry is not None and entry.state in ("done", "duplicate") and self.cfg.dedupe_content:
                dup = FileEntry(self.name, ref.name, ref.size, ref.mtime, sha, "duplicate",
                                outcome=f"same content as {entry.name}", raw=entry.raw)
                await self.manifest.record(dup)
                await self.source.finish(ref, self.cfg.after, self.cfg.archive_dir)
                log.info("%s: %s has the content of %s; skipped", self.name, ref.name, entry.name)
                return dup
            if entry is None or entry.state not in ("processing",):
                entry = FileEntry(self.name, ref.name, ref.size, ref.mtime, sha)
            entry.raw = await self._archive(local, sha)
            await self.manifest.record(entry)
            mode = self.routes.mode_for(self.name)
            if mode in ("shadow", "modern"):
                await self._publish(local, entry, mode)
            if mode in ("legacy", "shadow") and self.delivery is not None and not entry.delivered:
                await self.delivery.deliver(local, ref.name)
                entry.delivered = True
                self.stats.legacy_forwarded += 1
            entry.state = "done"
            entry.outcome = f"{mode}: {entry.events} events, {entry.dead_letters} dead letters"
            await self.manifest.record(entry)
            self.stats.acked += 1
            await self.source.finish(ref, self.cfg.after, self.cfg.archive_dir)
            log.info("%s: %s done (%s)", self.name, ref.name, entry.outcome)
            return entry
        finally:
            if local.is_relative_to(self.spool_dir):
                local.unlink(missing_ok=True)

    async def _archive(self, local: Path, sha: str) -> str:
        """Stores the original bytes once per content; returns the raw reference."""
        obj = f"{self.name}/{sha}"
        try:
            await self.objects.get_info(obj)
        except nats.js.errors.ObjectNotFoundError:
            with local.open("rb") as fh:
                await self.objects.put(obj, fh)
        return f"objectstore://{names.OBJ_RAW_FILES}/{obj}"

    async def _publish(self, local: Path, entry: FileEntry, mode: Mode) -> None:
        """Streams units into events from the resume point, batch by batch."""
        ctx = TranslationContext(self.name, "shadow" if mode == "shadow" else "live", entry.raw,
                                 datetime.now(UTC), self.cfg.timezone)
        batch: list[Outgoing] = []
        letters: list[Outgoing] = []
        parity: list[tuple[str, bool, str]] = []
        last_index = entry.next_record - 1
        reference = self.reference.data if self.reference is not None else None
        with local.open("rb") as fh:
            for unit in file_units(fh, self.cfg.format, self.cfg.flat, ctx, name=entry.name, sha256=entry.sha256,
                                   reference=reference):
                if unit.index < entry.next_record:
                    continue
                last_index = unit.index
                if unit.error is not None:
                    letters.append(self._letter(entry, unit, mode))
                else:
                    batch.extend(event_message(ev, self.name) for ev in unit.events)
                if mode == "shadow":
                    parity.append((unit.locator, unit.error is None, unit.error.reason if unit.error else ""))
                if len(batch) >= BATCH or len(letters) >= BATCH:
                    await self._flush(entry, batch, letters, last_index + 1, mode, parity)
                    batch, letters, parity = [], [], []
        await self._flush(entry, batch, letters, last_index + 1, mode, parity)

    async def _flush(self, entry: FileEntry, batch: list[Outgoing], letters: list[Outgoing],
                     next_record: int, mode: Mode, parity: list[tuple[str, bool, str]]) -> None:
        await self.store.publish(batch + letters)
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
        exc = unit.error
        assert exc is not None
        reason = exc.reason if entry.name in exc.reason else f"{entry.name} {unit.locator}: {exc.reason}"
        letter = DeadLetter(
            interface=self.name, kind="untranslatable", reason=reason, mode=mode, unit=unit.locator,
            raw=entry.raw, facility=exc.facility, amount=money(exc.amount), locator=exc.locator, at=now_iso(),
        )
        return letter.outgoing(f"{entry.sha256}:{unit.index}")
