"""Deliver a received file, byte for byte, where the legacy consumer expects it.

The legacy path must keep working unchanged, so the original bytes are copied exactly.
A consumer must never see half a file: each delivery writes under a temp name in the
destination directory (``.<name>.ficus-tmp``, a dot file) and renames it into place
atomically (``os.replace``; SFTP ``posix-rename@openssh.com`` where the server has it).

Delivering the same content twice is harmless: when ``name`` already holds the same
bytes (sha256 locally, size over SFTP) nothing is written. When it holds *other* bytes,
the legacy consumer has not taken the previous file yet: by default (``on_conflict=
"wait"``) that is :class:`DeliveryUnavailable` and the caller retries later; with
``"replace"`` it is overwritten.

Error tree (``destination`` names the target, ``reason`` a short text, no content):

* :class:`DeliveryUnavailable` -- retry later: destination unreachable or missing,
  timeout, size check failed.
* :class:`DeliveryConflict` (a DeliveryUnavailable) -- this one name is still occupied by
  a different file the consumer has not taken yet: retry this file later; other names can
  be delivered meanwhile.
* :class:`DeliveryError` itself -- give up until an operator acts: permission denied,
  host key rejected, unusable configuration.

This module does not import ``wrappers``: :class:`SftpDelivery` gets its connect
function injected (errors it raises with ``retryable = False`` are not retried) and runs
its session through :class:`protocols.sftp.SftpSession`, the SFTP intake's session
helper, with the same bounded calls and timeouts.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

import paramiko

from protocols.sftp import Progress, SessionUnavailable, SftpSession

logger = logging.getLogger("ficus.legacy.files")

T = TypeVar("T")
OnConflict = Literal["wait", "replace"]
TEMP_SUFFIX: Final = ".ficus-tmp"
_HASH_CHUNK: Final = 1024 * 1024
_RETRYABLE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENOSPC, errno.EIO, errno.ESTALE, errno.ETIMEDOUT})


class DeliveryError(Exception):
    """Root of the file delivery errors; raised as such, it means "do not retry"."""

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"{destination}: {reason}")
        self.destination = destination
        self.reason = reason


class DeliveryUnavailable(DeliveryError):
    """The destination cannot take the file now: retry later."""


class DeliveryConflict(DeliveryUnavailable):
    """The name still holds a different file (not consumed yet): retry this file later."""


class FileDelivery(Protocol):
    """A legacy file destination."""

    async def deliver(self, local_path: Path, name: str) -> str:
        """Place exactly the bytes of ``local_path`` under ``name``; return the final path."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def temp_name(name: str) -> str:
    """The name a file is written under before it is renamed into place."""
    return f".{name}{TEMP_SUFFIX}"


class InPlaceDelivery:
    """The legacy consumer reads the source directory itself: nothing to do."""

    async def deliver(self, local_path: Path, name: str) -> str:
        """Return ``local_path`` unchanged."""
        return str(local_path)

    async def close(self) -> None:
        """Nothing to release."""


class FolderDelivery:
    """Copy into a local (or mounted) directory, atomically."""

    def __init__(self, directory: Path, *, on_conflict: OnConflict = "wait") -> None:
        """``directory`` must exist (a missing one is retried: mounts come back)."""
        self.directory = directory
        self._on_conflict = on_conflict

    async def deliver(self, local_path: Path, name: str) -> str:
        """Copy to a temp name, fsync, check the size, rename over ``name``."""
        try:
            return await asyncio.to_thread(self._deliver, local_path, name)
        except OSError as exc:
            reason = f"cannot deliver {name} ({type(exc).__name__}: {exc.strerror})"
            cls = DeliveryUnavailable if exc.errno in _RETRYABLE_ERRNOS else DeliveryError
            raise cls(str(self.directory), reason) from exc

    async def close(self) -> None:
        """Nothing to release."""

    def _deliver(self, local_path: Path, name: str) -> str:
        final = self.directory / name
        size = local_path.stat().st_size
        if final.exists():
            if final.stat().st_size == size and _sha256(final) == _sha256(local_path):
                return str(final)  # delivered before: idempotent
            self._conflict(name)
        temp = self.directory / temp_name(name)
        try:
            with local_path.open("rb") as source, temp.open("wb") as out:
                while chunk := source.read(_HASH_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if temp.stat().st_size != size:
                raise DeliveryUnavailable(str(self.directory), f"{name}: size changed while copying")
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        return str(final)

    def _conflict(self, name: str) -> None:
        if self._on_conflict == "wait":
            reason = f"{name} still holds a different file (not consumed yet)"
            raise DeliveryConflict(str(self.directory), reason)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (the directory entry), where the platform allows it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Connect = Callable[[], tuple[paramiko.Transport, paramiko.SFTPClient]]


class SftpDelivery:
    """Upload into a remote directory over SFTP, atomically; one session, opened lazily."""

    def __init__(
        self,
        connect: Connect,
        remote_dir: str,
        *,
        operation_timeout: float = 30,
        on_conflict: OnConflict = "wait",
    ) -> None:
        """``connect`` opens a verified session (blocking; it runs in a worker thread)."""
        self.remote_dir = remote_dir
        self._on_conflict = on_conflict
        self._lock = asyncio.Lock()
        self._session = SftpSession(
            lambda _opened: connect(), connect_timeout=3 * operation_timeout, operation_timeout=operation_timeout
        )

    @property
    def destination(self) -> str:
        return f"sftp:{self.remote_dir}"

    async def deliver(self, local_path: Path, name: str) -> str:
        """Upload to a temp name (size confirmed by the server), then rename over ``name``."""
        size = (await asyncio.to_thread(local_path.stat)).st_size
        async with self._lock:
            sftp = await self._client()
            return await self._call(lambda progress: self._upload(sftp, local_path, size, name, progress))

    async def close(self) -> None:
        """Close the session."""
        self._session.drop()

    def _upload(self, sftp: Any, local_path: Path, size: int, name: str, progress: Progress) -> str:
        """Worker thread: idempotence check, putfo to the temp name, rename."""
        final = posixpath.join(self.remote_dir, name)
        temp = posixpath.join(self.remote_dir, temp_name(name))
        try:
            existing = sftp.stat(final)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if existing.st_size == size:
                return final  # delivered before: idempotent (size is all SFTP offers cheaply)
            if self._on_conflict == "wait":
                raise DeliveryConflict(self.destination, f"{name} still holds a different file (not consumed yet)")
        with local_path.open("rb") as source:
            sftp.putfo(source, temp, file_size=size, callback=progress, confirm=True)  # confirm: size checked
        try:
            sftp.posix_rename(temp, final)
        except OSError:  # no posix-rename@openssh.com: plain rename does not overwrite
            if existing is not None:
                sftp.remove(final)
            sftp.rename(temp, final)
        return final

    async def _client(self) -> Any:
        try:
            return await self._session.client()
        except SessionUnavailable as exc:
            raise DeliveryUnavailable(self.destination, exc.reason) from exc
        # The factory is the router's (usually wrappers' open_sftp): whatever it raises, this
        # file is not delivered. Errors that say retryable=False (a rejected host key) give up.
        except Exception as exc:
            cls = DeliveryUnavailable if getattr(exc, "retryable", True) else DeliveryError
            raise cls(self.destination, f"connect failed ({type(exc).__name__}: {exc})") from exc

    async def _call(self, fn: Callable[[Progress], T]) -> T:
        """Run ``fn`` in a thread, bounded; translate session failures."""
        try:
            return await self._session.call(fn)
        except SessionUnavailable as exc:
            raise DeliveryUnavailable(self.destination, exc.reason) from exc
        except OSError as exc:  # an SFTP status error on a live session
            cls = DeliveryUnavailable if exc.errno in _RETRYABLE_ERRNOS else DeliveryError
            raise cls(self.destination, f"SFTP error ({type(exc).__name__}: {exc})") from exc
