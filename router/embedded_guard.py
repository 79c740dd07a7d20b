"""One store, one server: the guards around the embedded nats-server's store directory.

Two JetStream servers writing one store directory corrupt its stream state, and a
nats-server that outlives Ficus keeps the store (and, with a fixed port, the port) from the
next Ficus. So: the Ficus process holds an exclusive `flock` on a lock file in the store
directory for as long as it runs the server (the kernel drops it when Ficus dies, however it
dies); the server gets a parent-death signal, so it stops when Ficus does; and a server an
earlier Ficus left running on the store anyway (named by the pid file, or found in /proc) is
stopped before a new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ficus.nats")

LOCK_NAME = "ficus.lock"
PID_NAME = "nats-server.pid"
PR_SET_PDEATHSIG = 1
# SIGTERM, not SIGKILL: the server then shuts JetStream down cleanly (its stream state is
# written), and a server that hangs on it is still found and killed by the next start.
DEATH_SIGNAL = signal.SIGTERM


class StoreGuardError(RuntimeError):
    """The store directory is in use (another Ficus, a port taken, a server that will not stop)."""


def lock_store(store_dir: Path) -> int:
    """Takes the store's lock for this process and returns its descriptor (close it to release).

    The descriptor is close-on-exec, so the nats-server child never holds the lock: it is
    released exactly when this process closes it or dies.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    path = store_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreGuardError(f"cannot lock {path}: {exc.strerror}") from exc
        holder = _read_pid(path)
        who = f"pid {holder}" if holder else "another process"
        raise StoreGuardError(
            f"NATS store {store_dir} is in use by another Ficus ({who}); one store, one server") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock_store(fd: int) -> None:
    """Releases the lock taken by `lock_store`."""
    with contextlib.suppress(OSError):
        os.close(fd)


def write_pid_file(store_dir: Path, pid: int) -> None:
    """Names the running server, for the next start to find if this Ficus dies."""
    tmp = store_dir / f".{PID_NAME}.tmp"
    tmp.write_text(f"{pid}\n", encoding="ascii")
    tmp.replace(store_dir / PID_NAME)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get DEATH_SIGNAL when this process dies (Linux).

    The kernel sends it when the *thread* that forked exits, so call the spawn from the event
    loop's thread (asyncio and uvloop both fork there), never from a worker thread.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec: keep it tiny
        prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return hook


def follow_parent(parent: int, sig: signal.Signals) -> None:
    """In a child already running (started without a `preexec_fn`): `sig` when `parent` dies
    (Linux); exits at once when it is dead already."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl: no signal will come
        os._exit(1)


def _prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a dead child nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def servers_on(store_dir: Path, conf: Path) -> list[int]:
    """Live nats-server processes whose command line names this store's config or directory."""
    found: set[int] = set()
    named = _read_pid(store_dir / PID_NAME)
    if named:
        found.add(named)
    with contextlib.suppress(OSError):
        found.update(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    me = os.getpid()
    return sorted(pid for pid in found if pid != me and _is_server_on(pid, store_dir, conf) and alive(pid))


def _is_server_on(pid: int, store_dir: Path, conf: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"nats-server"):
        return False
    wanted = (os.fsencode(conf), os.fsencode(store_dir))
    return any(arg in wanted or arg.startswith(wanted[1] + b"/") for arg in argv[1:])


async def stop_stale(store_dir: Path, conf: Path, *, timeout: float = 10.0) -> list[int]:
    """Stops every server found running on the store (SIGTERM, then SIGKILL after `timeout`)."""
    stale = servers_on(store_dir, conf)
    for pid in stale:
        log.warning("stale nats-server (pid %d) found running on store %s, left by an earlier run: "
                    "stopping it", pid, store_dir)
        how = "SIGTERM"
        _signal(pid, signal.SIGTERM)
        if not await _gone(pid, timeout):
            how = "SIGKILL"
            _signal(pid, signal.SIGKILL)
            if not await _gone(pid, 5.0):
                raise StoreGuardError(f"stale nats-server (pid {pid}) on store {store_dir} did not stop")
        log.warning("stale nats-server (pid %d) stopped (%s)", pid, how)
    return stale


def check_port_free(host: str, port: int) -> None:
    """Fails clearly when something already listens where the server is to listen.

    Without this, a server that cannot bind exits while Ficus may already have reached the
    other listener -- and attached to a server that is not its own.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As nats-server (Go) binds: connections in TIME_WAIT do not count, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StoreGuardError(
                f"port {host}:{port} for the embedded nats-server is in use by another process "
                f"({exc.strerror}); free it or change nats.embedded.port") from None


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


async def _gone(pid: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while alive(pid):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None
