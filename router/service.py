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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiohttp import web

from canonical.reference import ReferenceStore
from legacy.mllp_sender import MllpSender
from router.config import FicusConfig, MllpInterfaceConfig
from router.embedded_nats import EmbeddedNats
from router.mllp_pipeline import MllpPipeline
from router.routes import RouteTable
from router.stats import InterfaceStats
from router.store import Store, connect
from wrappers.mllp_listener import MllpListener

log = logging.getLogger("ficus.service")


@dataclass
class RunningInterface:
    """One interface as running: its config, counters and the parts to close, in order."""

    cfg: MllpInterfaceConfig
    stats: InterfaceStats
    pipeline: MllpPipeline
    listener: MllpListener
    legacy: MllpSender | None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        host, _ = self.cfg.listen_host_port
        return f"{host}:{self.listener.port}"


async def start_mllp(
    cfg: MllpInterfaceConfig, store: Store, routes: RouteTable, reference: ReferenceStore | None
) -> RunningInterface:
    """Builds and starts an hl7-mllp interface."""
    stats = InterfaceStats()
    legacy: MllpSender | None = None
    hp = cfg.legacy_host_port
    if hp is not None:
        legacy = MllpSender(
            cfg.name, hp[0], hp[1], connections=cfg.legacy_connections,
            connect_timeout=cfg.legacy_connect_timeout_seconds,
            ack_timeout=cfg.legacy_ack_timeout_seconds, max_message_bytes=cfg.max_message_bytes,
        )
        await legacy.__aenter__()
    pipeline = MllpPipeline(cfg, store, routes, legacy, stats, reference=reference)
    host, port = cfg.listen_host_port
    listener = MllpListener(
        cfg.name, host, port, pipeline, max_message_bytes=cfg.max_message_bytes,
        idle_timeout=cfg.idle_timeout_seconds, on_oversize=pipeline.on_oversize,
    )
    await listener.__aenter__()
    return RunningInterface(cfg, stats, pipeline, listener, legacy)


# The explicit registry from a config `kind` to what starts it.
STARTERS = {"hl7-mllp": start_mllp}


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
        self.api_url: str | None = None

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
        nc = await connect(self.cfg.nats, servers)
        self.store = Store(nc, self.cfg.nats)
        await self.store.ensure()
        self.routes = RouteTable(self.store, {i.name: i.route for i in self.cfg.interfaces})
        await self.routes.start()
        paths = self.cfg.reference.paths()
        if paths:
            self.reference = ReferenceStore(paths)
            self._tasks.append(asyncio.create_task(self._reload_reference(), name="reference-reload"))
        for icfg in self.cfg.interfaces:
            self.interfaces[icfg.name] = await STARTERS[icfg.kind](icfg, self.store, self.routes, self.reference)
            log.info("interface %s (%s) listening on %s, route %s", icfg.name, icfg.kind,
                     self.interfaces[icfg.name].address, self.routes.mode_for(icfg.name))
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

    async def stop(self) -> None:
        """Stops intake, finishes in-flight work, drains NATS, stops the embedded server."""
        for task in self._tasks:
            task.cancel()
        for running in self.interfaces.values():
            await running.listener.close()
        for running in self.interfaces.values():
            await running.pipeline.drain()
            if running.legacy is not None:
                await running.legacy.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.routes is not None:
            await self.routes.stop()
        if self.store is not None:
            await self.store.close()
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("stopped")

    async def wait(self) -> None:
        await self.stopping.wait()

    def ready(self) -> tuple[bool, list[str]]:
        """Readiness: NATS connected and every interface listening."""
        problems = []
        if self.store is None or not self.store.connected:
            problems.append("NATS not connected")
        for name, running in self.interfaces.items():
            if running.listener.port == 0:
                problems.append(f"{name} not listening")
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
