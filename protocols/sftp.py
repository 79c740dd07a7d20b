"""One SFTP session over SSH (paramiko), with the timeouts paramiko lacks.

paramiko blocks and can hang forever in transfers (paramiko #515, #462, #1380), so every
call runs in a worker thread and is bounded from outside: when no progress is seen for
``operation_timeout`` seconds the transport is closed (which unblocks the thread) and the
call fails with :class:`SessionUnavailable`. The next call reconnects.

Host keys are checked against a pinned known_hosts file only (RejectPolicy semantics):
an unknown or changed key raises :class:`HostKeyMismatch` naming the host and the
fingerprint. Used by the SFTP intake (``wrappers.sftp_poller``) and the SFTP legacy
delivery (``legacy.file_delivery.SftpDelivery``); each turns these errors into its own.
Nothing here logs or raises file content: only hosts, names and exception type names.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

import paramiko

T = TypeVar("T")
Progress = Callable[[int, int], None]
"""paramiko's transfer callback: (bytes so far, total)."""
Connect = Callable[[list[Any]], tuple[Any, Any]]
"""Opens ``(transport, sftp client)``, blocking; appends the transport to the list as soon
as it exists, so a caller that gives up waiting can close it."""

_RSA_SIGNATURES: Final = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


class SftpProtocolError(Exception):
    """Root of the session's errors; ``retryable`` says whether trying later may help."""

    retryable: ClassVar[bool] = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionUnavailable(SftpProtocolError):
    """No session now (refused, timed out, lost, authentication failed): retry later."""

    retryable = True


class SessionConfigError(SftpProtocolError):
    """Unusable configuration (known_hosts or key unreadable, no credentials): give up."""


class HostKeyMismatch(SftpProtocolError):
    """The server's host key is not the pinned one: give up until an operator acts."""

    def __init__(self, host: str, fingerprint: str, *, known: bool) -> None:
        what = "changed (does not match known_hosts)" if known else "unknown (not in known_hosts)"
        super().__init__(f"host key of {host} is {what}: {fingerprint}")
        self.host = host
        self.fingerprint = fingerprint
        self.known = known


@dataclass(frozen=True, slots=True)
class SshEndpoint:
    """Where and as whom to connect, and how long each step may take."""

    host: str
    port: int
    username: str
    password: str | None
    private_key_path: str | None
    private_key_passphrase: str | None
    known_hosts_path: str
    """Pinned known_hosts (OpenSSH format, hashed names allowed): required."""
    connect_timeout: float = 10
    """TCP connect, SSH banner, key exchange and authentication, each."""
    operation_timeout: float = 30
    """Longest wait for any answer; a transfer fails after this long without progress."""


def fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def open_session(endpoint: SshEndpoint, opened: list[Any] | None = None) -> tuple[Any, Any]:
    """Connect, verify the host key, authenticate and open an SFTP channel (blocking).

    Returns ``(paramiko.Transport, paramiko.SFTPClient)``. Each step is bounded by
    ``connect_timeout``; the channel times out reads after ``operation_timeout``. Run it
    in a thread and bound it from outside as well (:class:`SftpSession` does). The
    transport is appended to ``opened`` as soon as it exists. Raises
    :class:`SessionUnavailable`, :class:`HostKeyMismatch` or :class:`SessionConfigError`.
    """
    pinned = _pinned_keys(endpoint)
    pkey = _load_key(endpoint)
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=endpoint.connect_timeout)
    except OSError as exc:
        raise SessionUnavailable(f"connect to {endpoint.host}:{endpoint.port} failed ({type(exc).__name__})") from exc
    transport = paramiko.Transport(sock)
    if opened is not None:
        opened.append(transport)
    try:
        _restrict_key_types(transport, pinned)
        transport.banner_timeout = endpoint.connect_timeout
        transport.handshake_timeout = endpoint.connect_timeout
        transport.auth_timeout = endpoint.connect_timeout
        transport.start_client(timeout=endpoint.connect_timeout)
        _check_host_key(endpoint, transport.get_remote_server_key(), pinned)
        _authenticate(endpoint, transport, pkey)
        channel = transport.open_session(timeout=endpoint.operation_timeout)
        channel.settimeout(endpoint.operation_timeout)
        channel.invoke_subsystem("sftp")
        sftp = paramiko.SFTPClient(channel)
        sftp.get_channel().settimeout(endpoint.operation_timeout)
    except SftpProtocolError:
        transport.close()
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise SessionUnavailable(f"SSH session failed ({type(exc).__name__}: {exc})") from exc
    return transport, sftp


def _pinned_keys(endpoint: SshEndpoint) -> dict[str, Any]:
    """Key type -> key pinned for this host in known_hosts (may be empty)."""
    try:
        host_keys = paramiko.HostKeys(endpoint.known_hosts_path)
    except OSError as exc:
        reason = f"known_hosts {endpoint.known_hosts_path} unreadable ({type(exc).__name__})"
        raise SessionConfigError(reason) from exc
    pinned: dict[str, Any] = {}
    for name in (f"[{endpoint.host}]:{endpoint.port}", endpoint.host):
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


def _check_host_key(endpoint: SshEndpoint, key: Any, pinned: dict[str, Any]) -> None:
    if pinned.get(key.get_name()) != key:
        host = f"{endpoint.host}:{endpoint.port}"
        raise HostKeyMismatch(host, f"{key.get_name()} {fingerprint(key)}", known=bool(pinned))


def _load_key(endpoint: SshEndpoint) -> Any:
    if endpoint.private_key_path is None:
        if endpoint.password is None:
            raise SessionConfigError("neither private_key_path nor password configured")
        return None
    try:
        return paramiko.PKey.from_path(endpoint.private_key_path, password=endpoint.private_key_passphrase)
    except (OSError, paramiko.SSHException) as exc:
        reason = f"private key {endpoint.private_key_path} unusable ({type(exc).__name__})"
        raise SessionConfigError(reason) from exc


def _authenticate(endpoint: SshEndpoint, transport: Any, pkey: Any) -> None:
    """Key first, then password; failure is retryable (accounts get unlocked, keys deployed)."""
    failure: Exception | None = None
    for method, secret in ((transport.auth_publickey, pkey), (transport.auth_password, endpoint.password)):
        if secret is None or transport.is_authenticated():
            continue
        try:
            method(endpoint.username, secret)
        except paramiko.AuthenticationException as exc:
            failure = exc
    if not transport.is_authenticated():
        reason = f"authentication as {endpoint.username} failed ({type(failure).__name__})"
        raise SessionUnavailable(reason) from failure


class SftpSession:
    """One lazily opened SFTP session; every call bounded, the session dropped on trouble.

    Not safe for concurrent calls: the owner serialises them (one lock per session).
    """

    def __init__(self, connect: Connect, *, connect_timeout: float, operation_timeout: float) -> None:
        """``connect`` opens the session (usually :func:`open_session` on an endpoint);
        it gets ``connect_timeout`` seconds in all, every later call ``operation_timeout``
        seconds without progress."""
        self._connect = connect
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self._transport: Any = None
        self._sftp: Any = None

    @property
    def is_open(self) -> bool:
        """Whether a session is open and its transport still active."""
        return self._sftp is not None and self._transport is not None and self._transport.is_active()

    async def client(self) -> Any:
        """The open ``paramiko.SFTPClient``, connecting first if needed.

        Raises :class:`SessionUnavailable` when no session comes within
        ``connect_timeout``; whatever ``connect`` raises passes through.
        """
        if self.is_open:
            return self._sftp
        self.drop()
        opened: list[Any] = []
        try:
            self._transport, self._sftp = await bounded(lambda _: self._connect(opened), self.connect_timeout, opened)
        except TimeoutError:
            raise SessionUnavailable(f"no SFTP session within {self.connect_timeout:g}s") from None
        return self._sftp

    async def call(self, fn: Callable[[Progress], T]) -> T:
        """Run ``fn(progress)`` on the session in a thread, bounded by ``operation_timeout``
        without progress.

        A timeout, or anything that breaks the session, drops it and raises
        :class:`SessionUnavailable`; an SFTP status error (no such file, permission
        denied) on a live session comes back as the ``OSError`` it is.
        """
        timeout = self.operation_timeout
        try:
            return await bounded(fn, timeout, [self._transport])
        except TimeoutError:
            self.drop()
            raise SessionUnavailable(f"no answer or progress within {timeout:g}s") from None
        except (paramiko.SSHException, EOFError, ConnectionError) as exc:
            self.drop()
            raise SessionUnavailable(f"session lost ({type(exc).__name__})") from exc
        except OSError as exc:
            if not self.is_open:
                self.drop()
                raise SessionUnavailable("session lost") from exc
            raise

    def drop(self) -> None:
        """Close the session (if any); the next :meth:`client` reconnects."""
        transport, self._transport, self._sftp = self._transport, None, None
        if transport is not None:
            transport.close()


async def bounded(fn: Callable[[Progress], T], timeout: float, transports: Sequence[Any]) -> T:
    """Run ``fn(progress)`` in a thread; TimeoutError after ``timeout`` s without progress.

    ``fn`` reports progress by calling ``progress(done, total)`` (paramiko's transfer
    callback). On timeout or cancellation the transports are closed, which unblocks the
    thread; a late result or error of the thread is retrieved and dropped.
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
