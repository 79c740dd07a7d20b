"""Folder source: a local directory, watched with watchdog and polled as a safety net.

watchdog events only wake the scanner early (:meth:`FolderWatcher.wait`); what is
returned is always decided by a full listing and the completeness rules, so a missed or
coalesced event (inotify overflow, network filesystems without events) costs at most one
poll interval. The first :meth:`~FolderWatcher.scan` finds the files that arrived while
Ficus was down.

One snapshot per file. ``fetch`` opens the file once (no symlinks, never blocking on a FIFO
swapped in), checks the open descriptor's identity -- device, inode, size, mtime --
against the listing, copies it into the spool, and checks the descriptor again: a file
written to during the copy is :class:`FileChanged` and scanned again later. Everything
after that reads the spool copy only.

``finish`` archives by an atomic rename into ``archive_dir`` (same filesystem, created if
missing) or deletes; with "leave" (the legacy consumer reads this directory itself)
nothing here ever modifies the directory. Before a move or delete the file must still be
the snapshot. Checking and then renaming leaves a window in which a writer can rename a
new file over the name, so the check is made after a rename that claims the file instead:

1. ``lstat`` the name; not the snapshot -> leave it (cheap, the common case of a change).
2. rename it to ``.<name>.ficus-claim`` (a dot file: never scanned), then ``lstat`` that.
3. the snapshot (same device, inode, size, mtime) -> archive (rename into the archive
   dir) or delete it; the rename in step 2 moved exactly this inode, so nothing else can
   be lost.
4. anything else (a file renamed over the name, or the same inode grown in the window)
   -> put it back under its name with ``link`` + ``unlink``, which never replaces a file
   that appeared there meanwhile (then it goes back under the first free ``a.1.csv``
   name), and report :class:`FileChanged`: the file is taken again as a new unit.

A crash between 2 and 3/4 leaves a claim file; ``scan`` puts every claim back the same way,
so the file is seen again (the manifest knows a file that was already done).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from wrappers.completeness import CompletenessRule, CompletenessTracker
from wrappers.file_source import (
    FileChanged,
    FileRef,
    FileSourceError,
    FileUnavailable,
    FinishAction,
    SourceUnavailable,
    archive_names,
    claim_name,
    claimed_original,
    printable,
)

logger = logging.getLogger("ficus.folder")


class _NoStopRace(logging.Filter):
    """Drops watchdog's "queue_events() called when the thread is inactive" error: it is logged
    when the emitter is stopped while it waits for an event (every close may race with one), and
    stopping is exactly what was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_NoStopRace())

_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
            claims = [ref.name for ref in listing if claimed_original(ref.name) is not None]
            if claims:  # left by a crash while finishing: put back, seen again below
                await asyncio.to_thread(self._restore_claims, claims)
                listing = await asyncio.to_thread(_list, self.directory)
        except OSError as exc:
            reason = f"cannot list {self.directory} ({type(exc).__name__}: {exc.strerror})"
            raise SourceUnavailable(self.name, reason) from exc
        return self._tracker.observe(listing)

    async def fetch(self, ref: FileRef, spool_dir: Path) -> Path:
        """Copy the file into ``spool_dir`` (the snapshot), checked against the listing."""
        return await asyncio.to_thread(self._snapshot, ref, spool_dir)

    def _snapshot(self, ref: FileRef, spool_dir: Path) -> Path:
        """Worker thread: open once, check identity, copy, check identity again."""
        shown = printable(ref.name)
        try:
            fd = os.open(self.directory / ref.name, _OPEN_FLAGS)
        except FileNotFoundError as exc:
            raise FileChanged(self.name, f"{shown} vanished") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink now: not the regular file listed
                raise FileChanged(self.name, f"{shown} is no longer a regular file") from exc
            raise FileUnavailable(self.name, f"cannot open {shown} ({type(exc).__name__}: {exc.strerror})") from exc
        final = spool_dir / ref.name
        temp = spool_dir / f".{ref.name}.ficus-tmp"
        try:
            before = os.fstat(fd)
            if not _is(before, ref):
                raise FileChanged(self.name, f"{shown} changed since it was listed")
            copied = self._copy(fd, temp, shown)
            after = os.fstat(fd)
            if copied != ref.size or not _is(after, ref):
                raise FileChanged(self.name, f"{shown} changed while it was copied")
            os.replace(temp, final)
        except OSError as exc:  # the spool (full disk, removed): no file can be taken now
            raise SourceUnavailable(self.name, f"cannot copy {shown} to the spool ({type(exc).__name__})") from exc
        finally:
            os.close(fd)
            temp.unlink(missing_ok=True)
        return final

    def _copy(self, fd: int, temp: Path, shown: str) -> int:
        """Worker thread: the whole open file into ``temp``; read errors are the file's own."""
        copied = 0
        with temp.open("wb") as out:
            while True:
                try:
                    chunk = os.read(fd, _CHUNK)
                except OSError as exc:
                    reason = f"cannot read {shown} ({type(exc).__name__}: {exc.strerror})"
                    raise FileUnavailable(self.name, reason) from exc
                if not chunk:
                    return copied
                out.write(chunk)
                copied += len(chunk)

    async def finish(self, ref: FileRef, action: FinishAction, archive_dir: str | None) -> None:
        """Archive (rename) or delete the file and its marker if it is still the snapshot.

        "leave" touches nothing. A file that is no longer the snapshot stays where it is
        (:class:`FileChanged`); see the module docstring for how the check is made race-free.
        """
        try:
            if action == "archive" and archive_dir is None:
                raise FileSourceError(self.name, f"cannot archive {printable(ref.name)}: no archive_dir configured")
            await asyncio.to_thread(self._finish, ref, action, archive_dir)
        finally:
            self._tracker.mark_finished(ref)  # even on failure: never emitted twice by us

    def _finish(self, ref: FileRef, action: FinishAction, archive_dir: str | None) -> None:
        """Worker thread: check, claim, check again, then archive or delete (marker first)."""
        path = self.directory / ref.name
        changed = FileChanged(self.name, f"{printable(ref.name)} changed under Ficus; left in place as a new file")
        if not _is(_lstat(path), ref):
            raise changed
        if action == "leave":
            return
        claimed = self.directory / claim_name(ref.name)
        self._do(f"claim {printable(ref.name)}", lambda: os.rename(path, claimed))
        if not _is(_lstat(claimed), ref):
            back = self._put_back(claimed, ref.name)
            if back != ref.name:
                logger.warning("folder %s: a new file arrived as %s while %s was finished; kept as %s",
                               self.name, printable(ref.name), printable(ref.name), printable(back))
            raise changed
        marker = self._tracker.marker_of(ref.name)
        try:
            if marker is not None and (self.directory / marker).exists():
                self._finish_one(self.directory / marker, marker, action, archive_dir)
            self._finish_one(claimed, ref.name, action, archive_dir)
        except FileSourceError:
            self._put_back(claimed, ref.name)  # not moved: visible again under its name
            raise

    def _finish_one(self, path: Path, name: str, action: FinishAction, archive_dir: str | None) -> None:
        """Worker thread: rename into the archive as ``name`` (never overwriting) or unlink."""
        what = "delete" if action == "delete" else f"archive into {archive_dir}"
        if action == "delete":
            self._do(f"{what} {printable(name)}", path.unlink)
            return
        target_dir = self.directory / (archive_dir or "")

        def archive() -> None:
            target_dir.mkdir(parents=True, exist_ok=True)
            target = next(target_dir / n for n in archive_names(name) if not (target_dir / n).exists())
            os.rename(path, target)

        self._do(f"{what} {printable(name)}", archive)

    def _do(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as exc:
            hint = " (archive_dir must be on the same filesystem)" if exc.errno == errno.EXDEV else ""
            raise FileSourceError(self.name, f"cannot {what}: {exc.strerror}{hint}") from exc

    def _put_back(self, claimed: Path, name: str) -> str:
        """Worker thread: ``claimed`` back under ``name``, or the first free ``a.1.csv`` name.

        ``link`` fails if the name exists, so a file that appeared there is never replaced.
        """
        for candidate in archive_names(name):
            target = self.directory / candidate
            try:
                os.link(claimed, target, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError:  # no hard links here (some network filesystems): check, then rename
                if target.exists() or target.is_symlink():
                    continue
                self._do(f"put back {printable(name)}", lambda: os.rename(claimed, target))  # noqa: B023
                return candidate
            self._do(f"put back {printable(name)}", claimed.unlink)
            return candidate
        raise AssertionError("archive_names is endless")

    def _restore_claims(self, claims: list[str]) -> None:
        """Worker thread: claims left by a crash go back under their names."""
        for claim in claims:
            name = claimed_original(claim)
            assert name is not None
            back = self._put_back(self.directory / claim, name)
            logger.warning("folder %s: %s was being finished when Ficus stopped; put back as %s",
                           self.name, printable(name), printable(back))

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
        """Stop the watchdog observer (bounded: a stuck watchdog thread cannot hold a shutdown).

        ``observer.stop()`` joins its emitter threads without a timeout, so it runs in a daemon
        thread of its own -- not on the event loop, and not in the default executor, which
        ``asyncio.run`` waits for without a bound at exit; after 6 s it is left to die with us.
        """
        observer, self._observer = self._observer, None
        if observer is None:
            return
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not stopped.done():
                stopped.set_result(None)

        def stop() -> None:
            try:
                observer.stop()
                observer.join(5)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(done)

        threading.Thread(target=stop, name=f"folder-{self.name}-stop", daemon=True).start()
        try:
            await asyncio.wait_for(stopped, 6)
        except TimeoutError:
            logger.warning("folder %s: the filesystem watcher did not stop in 6 s; left behind", self.name)

    def _start_observer(self) -> None:
        """Start watchdog once; without it (no inotify, watch limit) polling still works."""
        if self._observer is not None or self._events_unavailable or not self.directory.is_dir():
            return  # a missing directory is retried at the next scan (the listing reports it)
        try:
            observer = Observer()
            observer.schedule(_Wake(asyncio.get_running_loop(), self._changed), str(self.directory), recursive=False)
        except OSError as exc:  # no inotify instance left (fs.inotify.max_user_instances)
            logger.warning("folder %s: no filesystem events (%s), polling only", self.name, type(exc).__name__)
            self._events_unavailable = True
            return
        try:
            observer.start()
        except OSError as exc:
            # The observer holds an inotify instance from its construction: release it, or each
            # failed start leaks one until the per-user limit breaks every watcher.
            observer.stop()
            if self.directory.is_dir():
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
                refs.append(FileRef(entry.name, st.st_size, st.st_mtime, st.st_dev, st.st_ino))
    return refs


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _is(st: os.stat_result | None, ref: FileRef) -> bool:
    """Whether ``st`` is the file of ``ref``: a regular file, same device, inode, size, mtime."""
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    same_inode = ref.ino == 0 or (st.st_dev, st.st_ino) == (ref.dev, ref.ino)
    return same_inode and st.st_size == ref.size and st.st_mtime == ref.mtime
