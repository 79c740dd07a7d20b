"""A real OpenSSH server for tests: loopback, free port, temp keys, SFTP only.

Import the fixture into a test module: ``from tests.sshd import SshServer, sshd_fixture``
(the fixture's name is ``sshd``). Skipped with a message when ``/usr/sbin/sshd`` is absent.

``pause()`` stops the listener and every per-connection child (sshd puts each connection
in its own session, so signalling the process group is not enough): a server that stops
answering mid-transfer. ``resume()`` lets them all go on.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; it refuses to start without it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def keygen(path: Path) -> None:
    """A new passphrase-less ed25519 key pair at ``path`` and ``path.pub``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ficus-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


async def eventually(check: Callable[[], bool], timeout: float, interval: float = 0.005) -> None:
    """Wait until ``check()`` is true; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(interval)


def names(directory: Path) -> list[str]:
    """The sorted names in ``directory``."""
    return sorted(path.name for path in directory.iterdir())


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), parents before children."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [child for child, parent in parents.items() if parent in frontier]
        found.extend(kids)
        frontier = kids
    return found


class SshServer:
    """One sshd process with its own host key, user key, known_hosts and remote root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "remote"
        self.root.mkdir()
        self.host_key_path = base / "host_ed25519"
        self.user_key_path = base / "user_ed25519"
        self.known_hosts = base / "known_hosts"
        self.username = getpass.getuser()
        self.port = 0
        self.log_path = base / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused: list[int] = []

    def start(self) -> None:
        """Generate keys, write the config, start sshd and wait for its banner."""
        keygen(self.host_key_path)
        keygen(self.user_key_path)
        shutil.copy(self.user_key_path.with_suffix(".pub"), self.base / "authorized_keys")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for _ in range(5):  # the free port can be taken between probe and bind
            self.port = _free_port()
            if self._launch():
                host_pub = self.host_key_path.with_suffix(".pub").read_text().split()
                self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
                return
        raise RuntimeError(f"sshd did not start, see {self.log_path}: {self.log_path.read_text()[-2000:]}")

    def _launch(self) -> bool:
        config = self.base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.host_key_path}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
                    "StrictModes no",
                    "PermitRootLogin yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def pause(self) -> None:
        """SIGSTOP the listener first (no new children), then every descendant."""
        assert self._proc is not None
        self._paused = [self._proc.pid]
        os.kill(self._proc.pid, signal.SIGSTOP)
        for pid in _children(self._proc.pid):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            self._paused.append(pid)

    def resume(self) -> None:
        """SIGCONT everything paused, children first."""
        for pid in reversed(self._paused):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                continue
        self._paused = []

    def stop(self) -> None:
        """Kill the listener and its connections; idempotent."""
        if self._proc is None:
            return
        self.resume()
        pids = [*_children(self._proc.pid), self._proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self._proc.wait(timeout=10)
        self._proc = None


@pytest.fixture(name="sshd")
async def sshd_fixture() -> AsyncIterator[SshServer]:
    """A started :class:`SshServer`, stopped after the test."""
    if not await asyncio.to_thread(SSHD.exists):
        pytest.skip(f"{SSHD} not found: install openssh-server to run the SFTP tests")
    with tempfile.TemporaryDirectory(prefix="ficus-sshd-") as tmp:
        server = SshServer(Path(tmp))
        await asyncio.to_thread(server.start)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)
