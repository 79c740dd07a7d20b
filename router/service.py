"""Service assembly: NATS (embedded or not), the routing table, every interface, the API.

This is the only place that wires wrappers, legacy senders and canonical mappings
together. Start and stop are paired (`async with Service(cfg)`); stopping stops intake
first, finishes what is in flight, then drains NATS and stops the embedded server, so
nothing acknowledged to a sender is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from types import TracebackType

from aiohttp import web

from canonical.reference import ReferenceStore
from canonical.safe_text import safe_reason
from router import parity
from router.config import FicusConfig
from router.embedded_nats import EmbeddedNats
from router.interfaces import Deps, RunningInterface
from router.interfaces import start as start_interface
from router.routes import RouteTable
from router.store import Bucket, Store, connect

log = logging.getLogger("ficus.service")
READY_REASON_MAX = 400
"""The longest line /readyz shows per problem (escaped, cut with a hash of the whole)."""


class Service:
    """The whole running Ficus: `async with Service(cfg) as svc: await svc.wait()`."""

    def __init__(self, cfg: FicusConfig, *, api: bool = True) -> None:
        self.cfg = cfg
        self.with_api = api
        self.embedded: EmbeddedNats | None = None
        self.store: Store | None = None
        self.routes: RouteTable | None = None
        self.interfaces: dict[str, RunningInterface] = {}
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.reference: ReferenceStore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._parity_kv: Bucket | None = None
        self._parity_saved: dict[str, int] = {}
        self.api_url: str | None = None
        self.abandoned: list[str] = []
        """Shutdown steps cut short by the deadline (then `ficus run` exits with code 1)."""

    @property
    def nats_url(self) -> str:
        return self.embedded.url if self.embedded is not None else self.cfg.nats.url

    async def start(self) -> None:
        servers = self.cfg.nats.servers
        if self.cfg.nats.url == "embedded":
            emb = self.cfg.nats.embedded
            store_dir = Path(emb.store_dir or Path(self.cfg.state_dir) / "nats")
            self.embedded = EmbeddedNats(store_dir, host=emb.host, port=emb.port,
                                         sync_interval=emb.sync_interval)
            servers = [await self.embedded.start()]
            self.embedded.supervise()  # a server that dies is started again, on the same store and port
        nc = await connect(self.cfg.nats, servers)
        self.store = Store(nc, self.cfg.nats)
        await self.store.ensure()
        self.routes = RouteTable(self.store, {i.name: i.route for i in self.cfg.interfaces})
        await self.routes.start()
        paths = self.cfg.reference.paths()
        if paths:
            self.reference = ReferenceStore(paths)
            self._tasks.append(asyncio.create_task(self._reload_reference(), name="reference-reload"))
        deps = Deps(self.store, self.routes, self.reference, Path(self.cfg.state_dir))
        for icfg in self.cfg.interfaces:
            self.interfaces[icfg.name] = await start_interface(icfg, deps)
            log.info("interface %s (%s) on %s, route %s", icfg.name, icfg.kind,
                     self.interfaces[icfg.name].address(), self.routes.mode_for(icfg.name))
        stats = {name: running.stats for name, running in self.interfaces.items()}
        self._parity_kv = await self.store.kv(parity.KV_PARITY, history=1)
        await parity.restore(self._parity_kv, stats, self.routes, self._parity_saved)
        self._tasks.append(asyncio.create_task(
            parity.keep_saved(self._parity_kv, stats, self._parity_saved), name="parity-save"))
        if self.with_api:
            await self._start_api()

    async def _start_api(self) -> None:
        from router.api import make_app

        app = make_app(self)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.cfg.api.host_port
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.api_url = f"http://{host}:{bound[1]}"
        log.info("API on %s", self.api_url)

    async def _reload_reference(self) -> None:
        """Picks up changed reference tables without a restart; a bad file keeps the old table."""
        assert self.reference is not None
        while True:
            await asyncio.sleep(self.cfg.reference.reload_seconds)
            for problem in await asyncio.to_thread(self.reference.maybe_reload):
                log.warning("reference: %s", problem)

    CLOSE_RESERVE = 5.0
    """Seconds of the shutdown deadline kept for closing NATS and the embedded server."""
    MIN_STEP = 0.2
    """Seconds each step gets even when the deadline has passed."""
    GRACE = 10.0
    """What `stop` may take beyond the deadline at most: closing NATS and the server get a minimum."""

    async def stop(self, timeout: float | None = None) -> None:
        """Stops intake, finishes in-flight work, closes NATS, stops the embedded server.

        All of it within `timeout` seconds (default `shutdown_timeout_seconds`): each step gets
        what is left of the deadline and is abandoned (cancelled, named in `abandoned`) when it
        runs out. Abandoning is safe: a sender is acknowledged, a file moved and a checkpoint
        advanced only after the unit is stored, so what was cut short is redone at the next start.
        """
        loop = asyncio.get_running_loop()
        total = self.cfg.shutdown_timeout_seconds if timeout is None else timeout
        deadline = loop.time() + total
        # Work (intake, in-flight units) ends a little early, so the connection and the embedded
        # server are still closed in order when the work had to be cut short.
        work_deadline = deadline - min(self.CLOSE_RESERVE, total / 4)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(self._step(f"stop intake of {name}", running.stop_intake(), work_deadline)
                               for name, running in self.interfaces.items()))
        await asyncio.gather(*(self._step(f"finish {name}", running.finish(), work_deadline)
                               for name, running in self.interfaces.items()))
        if self._runner is not None:
            await self._step("stop the API", self._runner.cleanup(), deadline)
        if self._parity_kv is not None:
            await self._step("save parity", parity.save(
                self._parity_kv, {n: r.stats for n, r in self.interfaces.items()}, self._parity_saved), deadline)
        if self.routes is not None:
            await self._step("stop the routing table", self.routes.stop(), deadline)
        # Closing gets a short minimum even past the deadline (GRACE bounds the whole overrun).
        if self.store is not None:
            left = max(1.0, deadline - loop.time())
            await self._step("close NATS", self.store.close(left), loop.time() + left + 1)
        if self.embedded is not None:
            # Cut short, the server still stops cleanly: it gets SIGTERM when we exit (parent death).
            left = max(2.0, deadline - loop.time())
            await self._step("stop the embedded nats-server", self.embedded.stop(timeout=left), loop.time() + left + 1)
        if self.abandoned:
            log.error("shutdown deadline of %gs reached: abandoned %s; work not finished was not acknowledged "
                      "and is taken again at the next start", total, ", ".join(self.abandoned))
        else:
            log.info("stopped")

    async def _step(self, what: str, work: Awaitable[object], deadline: float) -> None:
        """Runs one shutdown step until `deadline`; past it the step is cancelled and abandoned.

        asyncio.wait, not wait_for: a step that swallows its cancellation (nats-py's drain does)
        cannot make the shutdown wait for it.
        """
        task = asyncio.ensure_future(work)
        # Past the deadline a step still gets a moment: one that ends at once is not abandoned.
        done, _ = await asyncio.wait({task}, timeout=max(self.MIN_STEP, deadline - asyncio.get_running_loop().time()))
        if not done:
            task.cancel()
            self.abandoned.append(what)
            return
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("shutdown: %s failed: %s", what, type(exc).__name__)

    async def wait(self) -> None:
        await self.stopping.wait()

    def ready(self) -> tuple[bool, list[str]]:
        """Readiness: the embedded server up, NATS connected, and every interface working.

        One line per problem, `<interface>: <reason>` (identifiers and error classes, bounded):
        a listener not bound, a pipeline stopped or crash-looping, a source, database or legacy
        destination failing since the last pass (reported from the first failed pass, cleared
        by the next good one), a file set aside.
        """
        problems = []
        if self.embedded is not None and self.embedded.problem:
            problems.append(self.embedded.problem)
        if self.store is None or not self.store.connected:
            problems.append("NATS not connected")
        for name, running in self.interfaces.items():
            problem = running.problem()
            if problem is None and not running.ready():
                problem = "not running"
            if problem is not None:
                problems.append(safe_reason(f"{name}: {problem}", READY_REASON_MAX))
        return not problems, problems

    async def __aenter__(self) -> Service:
        try:
            await self.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
