"""SFTP source: poll a remote directory over SSH (paramiko), fetch complete files.

paramiko blocks and can hang forever in transfers (paramiko #515, #462, #1380), so every
call runs in a worker thread and is bounded from outside: when no progress is seen for
``operation_timeout`` seconds the transport is closed (which unblocks the thread) and the
call fails with :class:`SourceUnavailable`. The next call reconnects, with exponential
backoff after failed connects.

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
import base64
import hashlib
import logging
import os
import posixpath
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import paramiko

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
Progress = Callable[[int, int], None]
"""paramiko's transfer callback: (bytes so far, total)."""

DEFAULT_MAX_PREFETCH_REQUESTS: Final = 16
_BACKOFF_FIRST: Final = 1.0
_RSA_SIGNATURES: Final = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


@dataclass(frozen=True, slots=True)
class SftpSettings:
    """Where and how to connect; one SFTP interface's settings."""

    host: str
    port: int
    username: str
    password: str | None
    private_key_path: str | None
    private_key_passphrase: str | None
    known_hosts_path: str
    """Pinned known_hosts (OpenSSH format, hashed names allowed): required."""
    remote_dir: str
    patterns: Sequence[str]
    connect_timeout: float = 10
    """TCP connect, SSH banner, key exchange and authentication, each."""
    operation_timeout: float = 30
    """Longest wait for any answer; a transfer fails after this long without progress."""
    reconnect_max_backoff: float = 60
    max_prefetch_requests: int = DEFAULT_MAX_PREFETCH_REQUESTS
    """Concurrent read requests in flight per download (paramiko's is unbounded)."""

    @property
    def label(self) -> str:
        """The source name used in errors: ``sftp://user@host:port/dir``."""
        return f"sftp://{self.username}@{self.host}:{self.port}{self.remote_dir}"


def fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def open_sftp(settings: SftpSettings) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """Connect, verify the host key, authenticate and open an SFTP session (blocking).

    Each step is bounded by ``connect_timeout``; the SFTP channel times out reads after
    ``operation_timeout``. Run it in a thread and bound it from outside as well. Raises
    :class:`SourceUnavailable` (retry), :class:`HostKeyRejected`, or
    :class:`FileSourceError` for unusable configuration (known_hosts or key unreadable).
    """
    return _open_sftp(settings, [])


def _open_sftp(settings: SftpSettings, opened: list[Any]) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """:func:`open_sftp`, appending the transport to ``opened`` so a caller can close it."""
    source = settings.label
    pinned = _pinned_keys(settings)
    pkey = _load_key(settings)
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=settings.connect_timeout)
    except OSError as exc:
        reason = f"connect to {settings.host}:{settings.port} failed ({type(exc).__name__})"
        raise SourceUnavailable(source, reason) from exc
    transport = paramiko.Transport(sock)
    opened.append(transport)
    try:
        _restrict_key_types(transport, pinned)
        transport.banner_timeout = settings.connect_timeout
        transport.handshake_timeout = settings.connect_timeout
        transport.auth_timeout = settings.connect_timeout
        transport.start_client(timeout=settings.connect_timeout)
        _check_host_key(settings, transport.get_remote_server_key(), pinned)
        _authenticate(settings, transport, pkey)
        channel = transport.open_session(timeout=settings.operation_timeout)
        channel.settimeout(settings.operation_timeout)
        channel.invoke_subsystem("sftp")
        sftp = paramiko.SFTPClient(channel)
        sftp.get_channel().settimeout(settings.operation_timeout)
    except FileSourceError:
        transport.close()
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise SourceUnavailable(source, f"SSH session failed ({type(exc).__name__}: {exc})") from exc
    return transport, sftp


def _host_names(settings: SftpSettings) -> list[str]:
    return [f"[{settings.host}]:{settings.port}", settings.host]


def _pinned_keys(settings: SftpSettings) -> dict[str, Any]:
    """Key type -> key pinned for this host in known_hosts (may be empty)."""
    try:
        host_keys = paramiko.HostKeys(settings.known_hosts_path)
    except OSError as exc:
        reason = f"known_hosts {settings.known_hosts_path} unreadable ({type(exc).__name__})"
        raise FileSourceError(settings.label, reason) from exc
    pinned: dict[str, Any] = {}
    for name in _host_names(settings):
        entry = host_keys.lookup(name)
        if entry is not None:
            pinned.update({key_type: entry[key_type] for key_type in entry.keys()})  # noqa: SIM118
    return pinned


def _restrict_key_types(transport: Any, pinned: dict[str, Any]) -> None:
    """Negotiate a host key type we have pinned, as OpenSSH's client does."""
    wanted = {sig for key_type in pinned for sig in (_RSA_SIGNATURES if key_type == "ssh-rsa" else (key_type,))}
    options = transport.get_security_options()
    offered = [key_type for key_type in options.key_types if key_type in wanted]
    if offered:
        options.key_types = offered


def _check_host_key(settings: SftpSettings, key: Any, pinned: dict[str, Any]) -> None:
    if pinned.get(key.get_name()) != key:
        host = f"{settings.host}:{settings.port}"
        raise HostKeyRejected(settings.label, host, f"{key.get_name()} {fingerprint(key)}", known=bool(pinned))


def _load_key(settings: SftpSettings) -> Any:
    if settings.private_key_path is None:
        if settings.password is None:
            raise FileSourceError(settings.label, "neither private_key_path nor password configured")
        return None
    try:
        return paramiko.PKey.from_path(settings.private_key_path, password=settings.private_key_passphrase)
    except (OSError, paramiko.SSHException) as exc:
        reason = f"private key {settings.private_key_path} unusable ({type(exc).__name__})"
        raise FileSourceError(settings.label, reason) from exc


def _authenticate(settings: SftpSettings, transport: Any, pkey: Any) -> None:
    """Key first, then password; failure is retryable (accounts get unlocked, keys deployed)."""
    failure: Exception | None = None
    for method, secret in ((transport.auth_publickey, pkey), (transport.auth_password, settings.password)):
        if secret is None or transport.is_authenticated():
            continue
        try:
            method(settings.username, secret)
        except paramiko.AuthenticationException as exc:
            failure = exc
    if not transport.is_authenticated():
        reason = f"authentication as {settings.username} failed ({type(failure).__name__})"
        raise SourceUnavailable(settings.label, reason) from failure


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
    ) -> None:
        """Configure; nothing connects until the first :meth:`scan`."""
        self.settings = settings
        self.name = name
        self._tracker = CompletenessTracker(rule, settings.patterns, clock)
        self._poll_seconds = poll_seconds
        self._lock = asyncio.Lock()  # one paramiko operation at a time per session
        self._transport: Any = None
        self._sftp: Any = None
        self._connect_failures = 0
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
        if self._sftp is not None and self._transport.is_active():
            return self._sftp
        self._drop()
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise SourceUnavailable(self.name, f"reconnect in {wait:.1f}s after {self._connect_failures} failure(s)")
        opened: list[Any] = []
        s = self.settings
        try:
            self._transport, self._sftp = await _bounded(
                lambda _: _open_sftp(s, opened), 2 * s.connect_timeout + s.operation_timeout, opened
            )
        except FileSourceError:
            self._note_connect_failure()
            raise
        except TimeoutError:
            self._note_connect_failure()
            raise SourceUnavailable(self.name, f"no SSH session within {s.connect_timeout}s") from None
        if self._connect_failures:
            logger.info("sftp %s: connected again after %d failures", self.name, self._connect_failures)
        self._connect_failures = 0
        return self._sftp

    def _note_connect_failure(self) -> None:
        self._connect_failures += 1
        delay = min(self.settings.reconnect_max_backoff, _BACKOFF_FIRST * 2 ** (self._connect_failures - 1))
        self._retry_at = time.monotonic() + delay
        if self._connect_failures in (1, 10) or self._connect_failures % 100 == 0:
            logger.warning("sftp %s: connect failed %d time(s) in a row", self.name, self._connect_failures)

    async def _call(self, fn: Callable[[Progress], T]) -> T:
        """Run ``fn`` on the session in a thread; connection trouble -> SourceUnavailable.

        SFTP status errors (no such file, permission denied) come back as OSError for
        the caller; anything that breaks the session closes it.
        """
        timeout = self.settings.operation_timeout
        try:
            return await _bounded(fn, timeout, [self._transport])
        except TimeoutError:
            self._drop()
            raise SourceUnavailable(self.name, f"no answer or progress within {timeout}s") from None
        except (paramiko.SSHException, EOFError, ConnectionError) as exc:
            self._drop()
            raise SourceUnavailable(self.name, f"session lost ({type(exc).__name__})") from exc
        except OSError:
            if self._transport is None or not self._transport.is_active():
                self._drop()
                raise SourceUnavailable(self.name, "session lost") from None
            raise

    def _drop(self) -> None:
        transport, self._transport, self._sftp = self._transport, None, None
        if transport is not None:
            transport.close()


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


async def _bounded(fn: Callable[[Progress], T], timeout: float, transports: Sequence[Any]) -> T:
    """Run ``fn(progress)`` in a thread; TimeoutError after ``timeout`` s without progress.

    On timeout or cancellation the transports are closed, which unblocks the thread.
    """
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        last[0] = time.monotonic()

    task = asyncio.ensure_future(asyncio.to_thread(fn, progress))
    task.add_done_callback(_consume)
    finished = False
    try:
        while True:
            left = last[0] + timeout - time.monotonic()
            if left <= 0:
                raise TimeoutError
            await asyncio.wait([task], timeout=left)
            if task.done():
                finished = True
                return task.result()
    finally:
        if not finished:
            for transport in transports:
                if transport is not None:
                    transport.close()


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a late thread result nobody awaits any more (no 'never retrieved' noise)."""
    if not task.cancelled():
        task.exception()
