"""`workers = N`: one `ficus run` as N worker processes under a supervisor, for more cores.

One Python process uses one core (the GIL), so a bigger machine runs several. The process
`ficus run` starts stays the supervisor: it checks the ports, starts the embedded
nats-server when the config asks for one (once: the workers connect to it as to an external
server, and its store stays locked by the supervisor), then starts worker k = 1..N as
`ficus run -c CONF --worker k`. Each worker is a whole Service:

- an instance of its own in the leases and the instance registry, `<cluster.instance>-w<k>`,
  so exactly one worker polls each folder, SFTP and ODBC interface, and another takes it over
  when its owner dies (the lease expires, as between hosts);
- MLLP listeners bound with SO_REUSEPORT on the configured port: the kernel spreads the
  connections over the workers, and a dead worker's socket leaves the group with it;
- the API on `api.listen` in worker 1 only (one console, no port shared by accident); its
  `/readyz` answers for the host: its own problems and those of every other worker that is up
  and not ready, from the registry (`instances.Siblings`); its `/metrics`, interface list and
  console count every worker, the others' figures read from their sockets
  (router/worker_metrics.py).

The supervisor restarts a worker that dies (backoff with jitter), forwards SIGHUP (TLS
certificates) and SIGTERM/SIGINT, and exits once every worker has stopped, 0 when each
stopped cleanly; then it stops the embedded server. A second signal, or the backstop past
the shutdown deadline, ends the supervisor at once: the workers and the server get the
parent-death signal (router/embedded_guard.py), and for a worker already stopping that is
its own second signal, so it exits at once too. A worker that cannot start at `ficus run`
stops everything (exit 1, its one-line reason above); one that fails after a restart is
tried again, since the cause may pass (NATS away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from protocols.backoff import Backoff
from router import embedded_guard, shutdown
from router.config import FicusConfig, MllpInterfaceConfig, redact
from router.embedded_nats import EmbeddedNats
from router.service import Service, embedded_server
from router.worker import STARTED

log = logging.getLogger("ficus.workers")

RESTART_INITIAL = 0.5
"""First restart pause ceiling (seconds); doubles up to RESTART_MAX while a worker keeps dying."""
RESTART_MAX = 30.0
"""Largest restart pause; a worker that ran this long is not crash-looping (the pauses start over)."""


def check_ports(cfg: FicusConfig) -> None:
    """Fails (OSError naming the address) when a configured port is already listened on.

    The workers bind MLLP ports with SO_REUSEPORT, which a second Ficus of the same user
    would silently share; binding each once without it first refuses that, as one process
    would be refused.
    """
    wanted = [i.listen_host_port for i in cfg.interfaces if isinstance(i, MllpInterfaceConfig)]
    api_host, api_port = cfg.api.host_port
    if api_port:
        wanted.append((api_host, api_port))
    for host, port in wanted:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"{exc.strerror} ({host}:{port})") from None


@dataclass
class Worker:
    """One worker process slot: the process running in it now, and its restarts."""

    number: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    pauses: Backoff = field(default_factory=lambda: Backoff(RESTART_INITIAL, RESTART_MAX))
    started: asyncio.Future[bool] | None = None
    """True once the process said it started; False when it exited first."""


class Supervisor:
    """Runs `cfg.workers` workers of the config at `config_path` until SIGTERM (see the module)."""

    def __init__(self, cfg: FicusConfig, config_path: str, notice: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.notice = notice
        self.config_path = str(Path(config_path).resolve())
        self.stopping = asyncio.Event()
        self.workers = [Worker(k) for k in range(1, cfg.workers + 1)]
        self.nats_url: str | None = None
        self.codes: dict[int, int] = {}
        """The last exit code of each worker (by number)."""

    def argv(self, worker: Worker, ready_fd: int) -> list[str]:
        args = [sys.executable, "-m", "router.cli", "run", "-c", self.config_path, "--worker", str(worker.number),
                "--instance", self.cfg.cluster.instance, "--ready-fd", str(ready_fd)]
        if self.nats_url is not None:
            args += ["--nats-url", self.nats_url]
        return args

    async def spawn(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        try:
            # Own session: a terminal's Ctrl-C reaches the supervisor only, which forwards one
            # SIGTERM (a worker given both would take the second as "exit now").
            worker.proc = await asyncio.create_subprocess_exec(
                *self.argv(worker, write_end), pass_fds=(write_end,), start_new_session=True,
                preexec_fn=embedded_guard.die_with_parent(), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        worker.started_at = loop.time()
        started: asyncio.Future[bool] = loop.create_future()
        worker.started = started

        def readable() -> None:
            loop.remove_reader(read_end)
            try:
                said = os.read(read_end, 1)
            except OSError:
                said = b""
            os.close(read_end)
            if not started.done():
                started.set_result(said == STARTED)

        loop.add_reader(read_end, readable)
        log.info("worker %d started (pid %d)", worker.number, worker.proc.pid)

    async def run(self) -> int:
        """Starts the server and the workers, keeps them running until `stopping`, stops them."""
        check_ports(self.cfg)
        embedded: EmbeddedNats | None = None
        if self.cfg.nats.url == "embedded":
            embedded = embedded_server(self.cfg)
            try:
                self.nats_url = await embedded.start()
            except BaseException:
                await embedded.stop()
                raise
            embedded.supervise()
        try:
            return await self._run_workers()
        finally:
            await self._kill_all()
            if embedded is not None:
                await embedded.stop(timeout=Service.GRACE)

    async def _run_workers(self) -> int:
        for worker in self.workers:
            await self.spawn(worker)
        for worker in self.workers:
            assert worker.started is not None
            stop = asyncio.ensure_future(self._stopped())
            await asyncio.wait({worker.started, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if self.stopping.is_set():
                break
            if not worker.started.result():
                assert worker.proc is not None
                code = await worker.proc.wait()
                log.error("worker %d exited with code %d before it started; stopping the others", worker.number, code)
                self.stopping.set()
                await self._stop_all()
                return 1
        if not self.stopping.is_set():
            pids = ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None)
            self.notice(f"running {len(self.workers)} workers (pids {pids}); API {self.cfg.api.listen} "
                            f"(worker 1), NATS {redact(self.nats_url or self.cfg.nats.url, [])}")
        await asyncio.gather(*(self._keep(worker) for worker in self.workers))
        return 0 if all(code == 0 for code in self.codes.values()) else 1

    async def _stopped(self) -> bool:
        return await self.stopping.wait()

    async def _keep(self, worker: Worker) -> None:
        """Waits for the worker to exit; restarts it unless the supervisor is stopping."""
        loop = asyncio.get_running_loop()
        while True:
            proc = worker.proc
            assert proc is not None
            stop = asyncio.ensure_future(self.stopping.wait())
            exited = asyncio.ensure_future(proc.wait())
            await asyncio.wait({stop, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                _signal(proc, signal.SIGTERM)  # the stop: once per worker, as one instance gets it
                self.codes[worker.number] = await exited
                log.info("worker %d (pid %d) stopped with code %d", worker.number, proc.pid, proc.returncode)
                return
            stop.cancel()
            code = exited.result()
            self.codes[worker.number] = code
            if self.stopping.is_set():
                return
            if loop.time() - worker.started_at >= RESTART_MAX:
                worker.pauses.reset()  # it ran a good while: not a crash loop
            delay = worker.pauses.next_delay()
            log.warning("worker %d (pid %d) exited with code %s; restarting it in %.3g s", worker.number, proc.pid,
                        _describe(code), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            await self.spawn(worker)
            worker.restarts += 1

    async def _stop_all(self) -> None:
        """SIGTERM to every live worker; waits for them (the backstop bounds it)."""
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in live:
            _signal(proc, signal.SIGTERM)
        await asyncio.gather(*(proc.wait() for proc in live))

    async def _kill_all(self) -> None:
        """Whatever still runs when the supervisor ends (a failed start): SIGKILL, reaped."""
        for worker in self.workers:
            proc = worker.proc
            if proc is not None and proc.returncode is None:
                _signal(proc, signal.SIGKILL)
                await proc.wait()

    def hangup(self) -> None:
        log.info("SIGHUP: forwarded to the workers")
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                _signal(worker.proc, signal.SIGHUP)


def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(-code).name})"
    return str(code)


async def supervise(cfg: FicusConfig, config_path: str, notice: Callable[[str], None]) -> int:
    """`ficus run` with `workers` > 1: the supervisor until every worker stopped; the exit code.

    `notice` shows a line whatever the log level (`ficus: ...` on stderr)."""
    sup = Supervisor(cfg, config_path, notice)
    loop = asyncio.get_running_loop()
    limit = cfg.shutdown_timeout_seconds

    def first_signal() -> None:
        sup.stopping.set()
        notice(f"stopping {len(sup.workers)} workers (each finishes its messages in flight, at most "
                        f"{cfg.cluster.drain_seconds + limit:g}s; a second Ctrl-C or SIGTERM exits at once)")

    # A worker's own backstop fires at drain + limit + GRACE + 5; the supervisor's a little later.
    shutdown.install(loop, first_signal, cfg.cluster.drain_seconds + limit + Service.GRACE + 15)
    loop.add_signal_handler(signal.SIGHUP, sup.hangup)
    started = time.monotonic()
    code = await sup.run()
    log.info("all workers stopped after %.1f s", time.monotonic() - started)
    return code
