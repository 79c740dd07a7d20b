"""Folder source: a local directory, watched with watchdog and polled as a safety net.

watchdog events only wake the scanner early (:meth:`FolderWatcher.wait`); what is
returned is always decided by a full listing and the completeness rules, so a missed or
coalesced event (inotify overflow, network filesystems without events) costs at most one
poll interval. The first :meth:`~FolderWatcher.scan` finds the files that arrived while
Ficus was down.

``fetch`` returns the file itself (no copy). ``finish`` archives by an atomic rename into
``archive_dir`` (same filesystem, created if missing) or deletes; with "leave" (the legacy
consumer reads this directory itself) nothing here ever modifies the directory.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from wrappers.completeness import CompletenessRule, CompletenessTracker
from wrappers.file_source import FileChanged, FileRef, FileSourceError, FinishAction, SourceUnavailable, archive_names

logger = logging.getLogger("ficus.folder")


class _Wake(FileSystemEventHandler):
    """Observer thread -> event loop: set an asyncio.Event, thread-safely."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self._loop = loop
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "modified", "moved", "closed"):
            self._loop.call_soon_threadsafe(self._event.set)


class FolderWatcher:
    """A :class:`~wrappers.file_source.FileSource` over one local directory (not recursive)."""

    def __init__(
        self,
        name: str,
        directory: Path,
        patterns: Sequence[str],
        rule: CompletenessRule,
        *,
        poll_seconds: float = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure; the watchdog observer starts with the first scan or wait."""
        self.name = name
        self.directory = directory
        self._tracker = CompletenessTracker(rule, patterns, clock)
        self._poll_seconds = poll_seconds
        self._changed = asyncio.Event()
        self._observer: Any = None
        self._events_unavailable = False

    async def scan(self) -> list[FileRef]:
        """List the directory; the complete matching files, oldest first."""
        self._start_observer()
        self._changed.clear()  # before listing: an event during the listing wakes the next wait
        try:
            listing = await asyncio.to_thread(_list, self.directory)
        except OSError as exc:
            reason = f"cannot list {self.directory} ({type(exc).__name__}: {exc.strerror})"
            raise SourceUnavailable(self.name, reason) from exc
        return self._tracker.observe(listing)

    async def fetch(self, ref: FileRef, spool_dir: Path) -> Path:
        """The file itself, after checking it is still the one listed (``spool_dir`` unused)."""
        path = self.directory / ref.name
        try:
            st = await asyncio.to_thread(path.stat)
        except FileNotFoundError as exc:
            raise FileChanged(self.name, f"{ref.name} vanished") from exc
        except OSError as exc:
            raise SourceUnavailable(self.name, f"cannot stat {ref.name} ({type(exc).__name__})") from exc
        if st.st_size != ref.size or st.st_mtime != ref.mtime:
            raise FileChanged(self.name, f"{ref.name} changed since it was listed")
        return path

    async def finish(self, ref: FileRef, action: FinishAction, archive_dir: str | None) -> None:
        """Archive (rename) or delete the file and its marker, marker first; "leave" touches nothing."""
        try:
            if action == "leave":
                return
            if action == "archive" and archive_dir is None:
                raise FileSourceError(self.name, f"cannot archive {ref.name}: no archive_dir configured")
            marker = self._tracker.marker_of(ref.name)
            for name in [*([marker] if marker is not None else []), ref.name]:
                await asyncio.to_thread(self._finish_one, name, action, archive_dir)
        finally:
            self._tracker.mark_finished(ref)  # even on failure: never emitted twice by us

    def _finish_one(self, name: str, action: FinishAction, archive_dir: str | None) -> None:
        """Worker thread: rename into the archive (never overwriting) or unlink."""
        path = self.directory / name
        try:
            if action == "delete":
                path.unlink()
                return
            target_dir = self.directory / (archive_dir or "")
            target_dir.mkdir(parents=True, exist_ok=True)
            target = next(target_dir / n for n in archive_names(name) if not (target_dir / n).exists())
            os.rename(path, target)
        except OSError as exc:
            what = "delete" if action == "delete" else f"archive into {archive_dir}"
            hint = " (archive_dir must be on the same filesystem)" if exc.errno == errno.EXDEV else ""
            raise FileSourceError(self.name, f"cannot {what} {name}: {exc.strerror}{hint}") from exc

    async def wait(self) -> None:
        """Until a filesystem event, the poll interval, or a settling file may be stable."""
        self._start_observer()
        due = self._tracker.seconds_until_due()
        timeout = self._poll_seconds if due is None else min(due, self._poll_seconds)
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return

    async def close(self) -> None:
        """Stop the watchdog observer."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join, 5)

    def _start_observer(self) -> None:
        """Start watchdog once; without it (no inotify, watch limit) polling still works."""
        if self._observer is not None or self._events_unavailable:
            return
        observer = Observer()
        observer.schedule(_Wake(asyncio.get_running_loop(), self._changed), str(self.directory), recursive=False)
        try:
            observer.start()
        except OSError as exc:
            if self.directory.is_dir():  # a missing directory is retried at the next scan
                logger.warning("folder %s: no filesystem events (%s), polling only", self.name, type(exc).__name__)
                self._events_unavailable = True
            return
        self._observer = observer


def _list(directory: Path) -> list[FileRef]:
    """Worker thread: every regular file directly in ``directory``."""
    refs = []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed between listing and stat
            if stat.S_ISREG(st.st_mode):
                refs.append(FileRef(entry.name, st.st_size, st.st_mtime))
    return refs
