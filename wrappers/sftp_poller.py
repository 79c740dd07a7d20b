"""SFTP source: poll a remote directory over SSH (paramiko), fetch complete files.

The session and its timeouts are :mod:`protocols.sftp`'s (shared with the SFTP legacy
delivery): every paramiko call runs in a worker thread, bounded from outside, and a call
without progress for ``operation_timeout`` seconds closes the transport and fails with
:class:`SourceUnavailable`. The next call reconnects, with exponential backoff (full
jitter) after failed connects.

Host keys are checked against a pinned known_hosts file only (RejectPolicy semantics): an
unknown or changed key raises :class:`HostKeyRejected` naming the host and fingerprint.

One snapshot per file, as for folders, with size and mtime as the identity (SFTP has no
inodes): the file is stat'ed before and after the download into the spool, and a file
whose size or mtime moved is :class:`FileChanged` (scanned again). ``finish`` renames the
file to ``.<name>.ficus-claim`` first and stat's the claim: only if it still has the
snapshot's size and mtime is it archived or removed; otherwise it is renamed back (plain
SFTP rename, which never replaces an existing file; else under the first free
``a.1.csv`` name) and reported as :class:`FileChanged`, to be taken again as a new file.
A rewrite to the same size within the same second of mtime cannot be told from the
snapshot over SFTP. Claims left by a crash are put back by ``scan``.

Nothing here logs file content: only names, sizes and exception type names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import paramiko

from protocols.backoff import Backoff
from protocols.sftp import (
    HostKeyMismatch,
    Progress,
    SessionConfigError,
    SessionUnavailable,
    SftpSession,
    SshEndpoint,
    open_session,
)
from wrappers.completeness import CompletenessRule, CompletenessTracker
from wrappers.file_source import (
    FileChanged,
    FileRef,
    FileSourceError,
    FileUnavailable,
    FinishAction,
    HostKeyRejected,
    SourceUnavailable,
    archive_names,
    claim_name,
    claimed_original,
    printable,
)

logger = logging.getLogger("ficus.sftp")

T = TypeVar("T")

DEFAULT_MAX_PREFETCH_REQUESTS: Final = 16
_BACKOFF_FIRST: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SftpSettings(SshEndpoint):
    """Where and how to connect (the SSH endpoint), and what to poll there; one SFTP
    interface's settings."""

    remote_dir: str
    patterns: Sequence[str]
    reconnect_max_backoff: float = 60
    max_prefetch_requests: int = DEFAULT_MAX_PREFETCH_REQUESTS
    """Concurrent read requests in flight per download (paramiko's is unbounded)."""

    @property
    def label(self) -> str:
        """The source name used in errors: ``sftp://user@host:port/dir``."""
        return f"sftp://{self.username}@{self.host}:{self.port}{self.remote_dir}"


def open_sftp(settings: SftpSettings) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """Connect, verify the host key, authenticate and open an SFTP session (blocking).

    :func:`protocols.sftp.open_session` with this package's errors: raises
    :class:`SourceUnavailable` (retry), :class:`HostKeyRejected`, or
    :class:`FileSourceError` for unusable configuration (known_hosts or key unreadable).
    Run it in a thread and bound it from outside.
    """
    return _open_sftp(settings, [])


def _open_sftp(settings: SftpSettings, opened: list[Any]) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """:func:`open_sftp`, appending the transport to ``opened`` so a caller can close it."""
    source = settings.label
    try:
        return open_session(settings, opened)
    except HostKeyMismatch as exc:
        raise HostKeyRejected(source, exc.host, exc.fingerprint, known=exc.known) from exc
    except SessionUnavailable as exc:
        raise SourceUnavailable(source, exc.reason) from exc
    except SessionConfigError as exc:
        raise FileSourceError(source, exc.reason) from exc


class SftpPoller:
    """A :class:`~wrappers.file_source.FileSource` over one remote SFTP directory."""

    def __init__(
        self,
        name: str,
        settings: SftpSettings,
        rule: CompletenessRule,
        *,
        poll_seconds: float = 30,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        """Configure; nothing connects until the first :meth:`scan`.

        ``backoff`` paces reconnects after failed connects (default: from 1 s up to
        ``settings.reconnect_max_backoff``, full jitter)."""
        self.settings = settings
        self.name = name
        self._tracker = CompletenessTracker(rule, settings.patterns, clock)
        self._poll_seconds = poll_seconds
        self._lock = asyncio.Lock()  # one paramiko operation at a time per session
        # Connecting may take each connect step's timeout twice over, plus the SFTP channel's.
        self._session = SftpSession(
            lambda opened: _open_sftp(settings, opened),
            connect_timeout=2 * settings.connect_timeout + settings.operation_timeout,
            operation_timeout=settings.operation_timeout,
        )
        cap = settings.reconnect_max_backoff
        self._backoff = backoff if backoff is not None else Backoff(min(_BACKOFF_FIRST, cap), cap)
        self._retry_at = 0.0

    async def scan(self) -> list[FileRef]:
        """List the remote directory; the complete matching files, oldest first."""
        async with self._lock:
            sftp = await self._client()
            try:
                attrs = await self._call(lambda _: sftp.listdir_attr(self.settings.remote_dir))
                claims = [a.filename for a in attrs if claimed_original(a.filename) is not None]
                if claims:  # left by a crash while finishing: put back, seen again below
                    await self._call(lambda _: self._restore_claims(sftp, claims))
                    attrs = await self._call(lambda _: sftp.listdir_attr(self.settings.remote_dir))
            except OSError as exc:
                reason = f"cannot list {self.settings.remote_dir} ({type(exc).__name__}: {exc})"
                raise SourceUnavailable(self.name, reason) from exc
        listing = [
            FileRef(a.filename, int(a.st_size or 0), float(a.st_mtime or 0))
            for a in attrs
            if a.st_mode is not None and stat.S_ISREG(a.st_mode)
        ]
        return self._tracker.observe(listing)

    async def fetch(self, ref: FileRef, spool_dir: Path) -> Path:
        """Download into ``spool_dir``: a temp name, size checked, then renamed to ``ref.name``.

        The remote file is stat'ed before and after the download; a change is FileChanged.
        """
        final = spool_dir / ref.name
        temp = spool_dir / f".{ref.name}.ficus-tmp"
        remote = posixpath.join(self.settings.remote_dir, ref.name)
        shown = printable(ref.name)
        async with self._lock:
            sftp = await self._client()
            try:
                received = await self._call(lambda progress: self._download(sftp, remote, ref, temp, progress))
                if received != ref.size or temp.stat().st_size != ref.size:
                    raise FileChanged(self.name, f"{shown}: got {received} bytes, listed {ref.size}")
                if not self._is(await self._call(lambda _: _stat(sftp, remote)), ref):
                    raise FileChanged(self.name, f"{shown} changed while it was downloaded")
                os.replace(temp, final)
            except PermissionError as exc:
                raise FileUnavailable(self.name, f"cannot read {shown} (PermissionError)") from exc
            except OSError as exc:
                raise SourceUnavailable(self.name, f"download of {shown} failed ({type(exc).__name__})") from exc
            finally:
                temp.unlink(missing_ok=True)
        logger.info("sftp %s: fetched %s (%d bytes)", self.name, shown, ref.size)
        return final

    def _download(self, sftp: Any, remote: str, ref: FileRef, temp: Path, progress: Progress) -> int:
        """Worker thread: check the file is the listed one, then getfo into ``temp``."""
        if not self._is(_stat(sftp, remote), ref):
            raise FileChanged(self.name, f"{printable(ref.name)} changed since it was listed")
        with temp.open("wb") as out:
            received: int = sftp.getfo(
                remote,
                out,
                callback=progress,
                prefetch=True,
                max_concurrent_prefetch_requests=self.settings.max_prefetch_requests,
            )
            out.flush()
            os.fsync(out.fileno())
        return received

    @staticmethod
    def _is(attrs: Any, ref: FileRef) -> bool:
        """Whether remote ``attrs`` are the snapshot's: a regular file of the same size and mtime."""
        if attrs is None or attrs.st_mode is None or not stat.S_ISREG(attrs.st_mode):
            return False
        return int(attrs.st_size or 0) == ref.size and float(attrs.st_mtime or 0) == ref.mtime

    async def finish(self, ref: FileRef, action: FinishAction, archive_dir: str | None) -> None:
        """Archive or remove the file (marker first) if it is still the snapshot; see the module doc."""
        shown = printable(ref.name)
        try:
            if action == "archive" and archive_dir is None:
                raise FileSourceError(self.name, f"cannot archive {shown}: no archive_dir configured")
            remote = posixpath.join(self.settings.remote_dir, ref.name)
            claimed = posixpath.join(self.settings.remote_dir, claim_name(ref.name))
            changed = FileChanged(self.name, f"{shown} changed under Ficus; left in place as a new file")
            async with self._lock:
                sftp = await self._client()
                if not self._is(await self._call(lambda _: _stat(sftp, remote)), ref):
                    raise changed
                if action == "leave":
                    return
                await self._op(f"claim {shown}", lambda _: sftp.rename(remote, claimed))
                if not self._is(await self._call(lambda _: _stat(sftp, claimed)), ref):
                    await self._op(f"put back {shown}", lambda _: self._put_back(sftp, claimed, ref.name))
                    raise changed
                marker = self._tracker.marker_of(ref.name)
                try:
                    if marker is not None:
                        marker_path = posixpath.join(self.settings.remote_dir, marker)
                        if await self._call(lambda _: _stat(sftp, marker_path)) is not None:
                            await self._finish_one(sftp, marker_path, marker, action, archive_dir)
                    await self._finish_one(sftp, claimed, ref.name, action, archive_dir)
                except FileSourceError:
                    await self._op(f"put back {shown}", lambda _: self._put_back(sftp, claimed, ref.name))
                    raise
        finally:
            self._tracker.mark_finished(ref)  # even on failure: never emitted twice by us

    async def _finish_one(
        self, sftp: Any, remote: str, name: str, action: FinishAction, archive_dir: str | None
    ) -> None:
        """Remove ``remote`` or rename it into the archive as ``name`` (never overwriting)."""
        if action == "delete":
            await self._op(f"delete {printable(name)}", lambda _: sftp.remove(remote))
        else:
            target_dir = posixpath.join(self.settings.remote_dir, archive_dir or "")
            await self._op(f"archive {printable(name)} into {archive_dir}",
                           lambda _: _archive(sftp, remote, target_dir, name))

    async def _op(self, what: str, fn: Callable[[Progress], object]) -> None:
        try:
            await self._call(fn)
        except OSError as exc:
            raise FileSourceError(self.name, f"cannot {what} ({type(exc).__name__}: {exc})") from exc

    def _put_back(self, sftp: Any, claimed: str, name: str) -> str:
        """Worker thread: the claim back under ``name``, or the first free ``a.1.csv`` name.

        Plain SFTP rename fails when the target exists: a file that appeared is never replaced.
        """
        for candidate in archive_names(name):
            target = posixpath.join(self.settings.remote_dir, candidate)
            if _stat(sftp, target) is not None:
                continue
            try:
                sftp.rename(claimed, target)
            except OSError:
                if _stat(sftp, target) is not None:
                    continue  # appeared meanwhile: try the next name
                raise
            if candidate != name:
                logger.warning("sftp %s: a new file arrived as %s while it was finished; kept as %s",
                               self.name, printable(name), printable(candidate))
            return candidate
        raise AssertionError("archive_names is endless")

    def _restore_claims(self, sftp: Any, claims: list[str]) -> None:
        """Worker thread: claims left by a crash go back under their names."""
        for claim in claims:
            name = claimed_original(claim)
            assert name is not None
            back = self._put_back(sftp, posixpath.join(self.settings.remote_dir, claim), name)
            logger.warning("sftp %s: %s was being finished when Ficus stopped; put back as %s",
                           self.name, printable(name), printable(back))

    async def wait(self) -> None:
        """Sleep until the poll interval passes or a settling file may be stable."""
        due = self._tracker.seconds_until_due()
        await asyncio.sleep(self._poll_seconds if due is None else min(due, self._poll_seconds))

    async def close(self) -> None:
        """Close the SSH session."""
        self._drop()

    async def _client(self) -> Any:
        """The open SFTP client, connecting when needed (backing off after failures)."""
        if not self._session.is_open:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                failures = self._backoff.failures
                raise SourceUnavailable(self.name, f"reconnect in {wait:.1f}s after {failures} failure(s)")
        try:
            sftp = await self._session.client()
        except FileSourceError:
            self._note_connect_failure()
            raise
        except SessionUnavailable as exc:
            self._note_connect_failure()
            raise SourceUnavailable(self.name, exc.reason) from exc
        if self._backoff.failures:
            logger.info("sftp %s: connected again after %d failures", self.name, self._backoff.failures)
            self._backoff.reset()
        return sftp

    def _note_connect_failure(self) -> None:
        self._retry_at = time.monotonic() + self._backoff.next_delay()
        failures = self._backoff.failures
        if failures in (1, 10) or failures % 100 == 0:
            logger.warning("sftp %s: connect failed %d time(s) in a row", self.name, failures)

    async def _call(self, fn: Callable[[Progress], T]) -> T:
        """Run ``fn`` on the session in a thread; connection trouble -> SourceUnavailable.

        SFTP status errors (no such file, permission denied) come back as OSError for
        the caller; anything that breaks the session closes it.
        """
        try:
            return await self._session.call(fn)
        except SessionUnavailable as exc:
            raise SourceUnavailable(self.name, exc.reason) from exc

    def _drop(self) -> None:
        self._session.drop()


def _stat(sftp: Any, remote: str) -> Any:
    """Worker thread: the remote file's attributes, or None if absent."""
    try:
        return sftp.lstat(remote)
    except FileNotFoundError:
        return None


def _archive(sftp: Any, remote: str, target_dir: str, name: str) -> None:
    """Worker thread: create ``target_dir`` if needed, rename ``remote`` under a free ``name`` there."""
    try:
        sftp.stat(target_dir)
    except FileNotFoundError:
        sftp.mkdir(target_dir)
    for candidate in archive_names(name):
        target = posixpath.join(target_dir, candidate)
        try:
            sftp.stat(target)
        except FileNotFoundError:
            break
    try:
        sftp.posix_rename(remote, target)
    except OSError:  # server without posix-rename@openssh.com: plain rename (target is free)
        sftp.rename(remote, target)
