"""The file-source contract: a directory (local or remote) that yields complete files.

A source is used in a loop by the router::

    while running:
        for ref in await source.scan():          # complete now, oldest first
            path = await source.fetch(ref, spool)  # exactly the file's bytes, locally
            ... store the file's events durably ...
            await source.finish(ref, action, archive_dir)  # only now: acknowledge late
        await source.wait()                       # until a change or the poll interval

``scan`` returns every complete file present that was not finished by this source object
(in-memory; after a restart the router's manifest decides what was already stored). A file
is identified by ``FileRef`` (name, size, mtime, and device and inode where the source has
them): a file rewritten or replaced under the same name has a new ref and is a new file.

One snapshot per file: ``fetch`` copies the listed file into the spool and checks, before and
after the copy, that what it read is still the listed file; everything after that (hash,
raw archive, translation, legacy delivery) reads only the spool copy. ``finish`` checks the
file in the source directory again and moves or deletes it only if it is still the file
that was snapshotted; a file replaced, grown or rewritten meanwhile is left in place
(:class:`FileChanged`) and ``scan`` returns it again as a new file.

Error tree (``source`` is the source's name, ``reason`` a short text, never file content):

* :class:`SourceUnavailable` -- retry later: connection refused or lost, timeout,
  authentication failing, the file changed while it was fetched (:class:`FileChanged`).
* :class:`FileUnavailable` -- this one file cannot be read now (permission denied, I/O
  error); the others can: set it aside and retry it on its own schedule.
* :class:`HostKeyRejected` -- give up: the server's host key is unknown or changed.
* :class:`FileSourceError` itself -- give up: a configuration problem (key file unreadable,
  archive on another filesystem), or a file that cannot be moved or deleted.

Each error class carries ``retryable``, so code that must not import this module (the
legacy delivery gets :func:`wrappers.sftp_poller.open_sftp` injected) can still tell them apart.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol

FinishAction = Literal["archive", "delete", "leave"]
"""What :meth:`FileSource.finish` does: move to the archive dir, delete, or touch nothing."""


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file as listed: a new size or mtime under the same name is another file."""

    name: str
    """Path relative to the watched directory (sources are not recursive: a plain name)."""
    size: int
    mtime: float
    """Seconds since the epoch, as the filesystem or server reports it (SFTP: whole seconds)."""
    dev: int = 0
    """Device of the file (local sources; 0 where the source has no inodes, as SFTP)."""
    ino: int = 0
    """Inode of the file (local sources; 0 where the source has no inodes, as SFTP)."""


CLAIM_SUFFIX = ".ficus-claim"
"""A file being finished is first renamed to ``.<name>.ficus-claim`` (a dot file, never
scanned), checked, then archived or deleted; a claim left by a crash is put back by ``scan``."""


def claim_name(name: str) -> str:
    """The private name a file is renamed to while it is checked before archive or delete."""
    return f".{name}{CLAIM_SUFFIX}"


def claimed_original(name: str) -> str | None:
    """The original name of a claim file, or None if ``name`` is no claim."""
    if name.startswith(".") and name.endswith(CLAIM_SUFFIX) and len(name) > len(CLAIM_SUFFIX) + 1:
        return name[1:-len(CLAIM_SUFFIX)]
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def printable(name: str) -> str:
    """A file name safe for logs and reasons: control characters (a newline forging a log
    line) and backslashes escaped as ``\\xNN``/``\\\\``, so distinct names stay distinct."""
    return _CONTROL.sub(lambda m: "\\\\" if m.group() == "\\" else f"\\x{ord(m.group()):02x}", name)


def archive_names(name: str) -> Iterator[str]:
    """Names to try in an archive dir, in order: ``a.txt``, ``a.1.txt``, ``a.2.txt``, ...

    Files with the same name arrive day after day; an archive must never overwrite one.
    """
    yield name
    stem, ext = posixpath.splitext(name)
    n = 1
    while True:
        yield f"{stem}.{n}{ext}"
        n += 1


class FileSourceError(Exception):
    """Root of the file sources' errors; raised as such, it means "do not retry"."""

    retryable: ClassVar[bool] = False

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class SourceUnavailable(FileSourceError):
    """The source cannot be read right now (connection, timeout, auth): retry later."""

    retryable = True


class FileChanged(SourceUnavailable):
    """The file is no longer the one listed or snapshotted (still being written, replaced):
    scan again; from ``finish`` it means the file was left in place as a new file."""


class FileUnavailable(FileSourceError):
    """This one file cannot be read (permission denied, I/O error): retry it later, alone."""

    retryable = True


class HostKeyRejected(FileSourceError):
    """The SSH server's host key is not the pinned one: give up until an operator acts."""

    def __init__(self, source: str, host: str, fingerprint: str, *, known: bool) -> None:
        what = "changed (does not match known_hosts)" if known else "unknown (not in known_hosts)"
        super().__init__(source, f"host key of {host} is {what}: {fingerprint}")
        self.host = host
        self.fingerprint = fingerprint
        self.known = known


class FileSource(Protocol):
    """A directory of incoming files; one object per interface, used by one task."""

    async def scan(self) -> list[FileRef]:
        """The files matching the patterns that are complete now, oldest first.

        Never marker files, never temp names, never a file this object already finished.
        Raises :class:`SourceUnavailable` (retry) or :class:`HostKeyRejected`.
        """
        ...

    async def fetch(self, ref: FileRef, spool_dir: Path) -> Path:
        """A copy in ``spool_dir`` holding exactly the bytes of ``ref`` (the snapshot).

        Written under a temp name and renamed when complete, of the listed size, and the
        file was the listed one before and after the copy. The caller owns the copy.
        Raises :class:`FileChanged` when the file is no longer the one listed,
        :class:`FileUnavailable` when it cannot be read.
        """
        ...

    async def finish(self, ref: FileRef, action: FinishAction, archive_dir: str | None) -> None:
        """Archive, delete or leave the file (and its marker) once its events are stored.

        ``archive_dir`` (required for "archive") is relative to the watched directory or
        absolute. "leave" modifies nothing. When the file in the directory is no longer the
        one of ``ref`` (replaced, grown, rewritten) nothing is moved or deleted and
        :class:`FileChanged` is raised: ``scan`` returns the file again as a new one. On
        other failures raises :class:`FileSourceError` naming the file; the file (as of
        ``ref``) is still never returned by ``scan`` again.
        """
        ...

    async def wait(self) -> None:
        """Return when a new scan is worth doing: a change seen, or the poll interval."""
        ...

    async def close(self) -> None:
        """Release connections and watchers; the source is not used afterwards."""
        ...
