"""Service assembly: NATS (embedded or not), the routing table, every interface, the API.

This is the only place that wires wrappers, legacy senders and canonical mappings
together. Start and stop are paired (`async with Service(cfg)`). Start-up builds one
immutable `Running` (every component, none optional but those that are: an embedded
server, reference tables); each component, the moment it has started, registers how it
stops with the service's `Lifetimes`, so a start-up that fails half-way stops exactly what
was started and raises one `StartError` naming the component. Stopping stops intake first,
finishes what is in flight, then drains NATS and stops the embedded server, so nothing
acknowledged to a sender is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
import types
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from aiohttp import web

from canonical.posting.rules import load_rules
from canonical.reference import ReferenceStore
from canonical.safe_text import safe_reason
from protocols.tls import ReloadingContext
from router import instances, names, parity, posting, views, worker_metrics
from router.alerts import Alerts
from router.config import ConfigError, FicusConfig, parse_hostport
from router.embedded_nats import EmbeddedNats, EmbeddedNatsError
from router.instances import Registry, Siblings
from router.interfaces import Deps, RunningInterface
from router.interfaces import start as start_interface
from router.leases import Leases
from router.routes import RouteTable
from router.sinks import Sink, start_sinks
from router.stats import InterfaceStats, ParityStats
from router.store import Store, StoreError, connect

log = logging.getLogger("ficus.service")
READY_REASON_MAX = 400
"""The longest line /readyz shows per problem (escaped, cut with a hash of the whole)."""
DRAINING = "draining"
"""/readyz's problem from the first SIGTERM on: a load balancer stops sending new connections."""


class StartError(RuntimeError):
    """A component could not start; what had started before it has been stopped.

    One line, `could not start <component>: <reason>` (an error class, an OS reason, a store
    reason: never data). The original error is the `__cause__`.
    """

    def __init__(self, component: str, exc: BaseException) -> None:
        self.component = component
        self.reason = _reason(exc)
        super().__init__(f"could not start {component}: {self.reason}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # asyncio's bind error names the address: "error while attempting to bind ..."
    if isinstance(exc, StoreError):
        return exc.reason
    return type(exc).__name__


@contextlib.contextmanager
def _starting(component: str) -> Iterator[None]:
    """Turns a failure into a StartError naming `component` (config and store-lock errors are already one line)."""
    try:
        yield
    except (StartError, ConfigError, EmbeddedNatsError):
        raise
    except Exception as exc:
        raise StartError(component, exc) from exc


def readiness(embedded: EmbeddedNats | None, store: Store, interfaces: Mapping[str, RunningInterface],
              only: Collection[str] | None = None) -> tuple[bool, list[str]]:
    """Readiness: the embedded server up, NATS connected, and every interface working (`only`:
    those interfaces alone, e.g. the MLLP interface a load balancer checks for its backend).

    One line per problem, `<interface>: <reason>` (identifiers and error classes, bounded):
    a listener not bound, a pipeline stopped or crash-looping, a source, database or legacy
    destination failing since the last pass (reported from the first failed pass, cleared
    by the next good one), a file set aside.
    """
    problems = []
    if embedded is not None and embedded.problem:
        problems.append(embedded.problem)
    if not store.connected:
        problems.append("NATS not connected")
    for name, running in interfaces.items():
        if only is not None and name not in only:
            continue
        problem = running.problem()
        if problem is None and not running.ready():
            problem = "not running"
        if problem is not None:
            problems.append(safe_reason(f"{name}: {problem}", READY_REASON_MAX))
    return not problems, problems


def _concerns(problem: str, only: Collection[str], interfaces: Collection[str]) -> bool:
    """Whether a sibling worker's problem line (`worker W: <interface>: <reason>`, or a problem of
    the worker itself such as `worker W: NATS not connected`) is about `only` or the worker."""
    rest = problem.partition(": ")[2]
    named = rest.partition(": ")[0]
    return named in only or named not in interfaces


@dataclass(frozen=True)
class Running:
    """Ficus as started: built once by `Service.start`, never changed afterwards.

    Each part is handed on to whoever needs only that part (the API gets the store, the
    routes, the interfaces... each under its own key).
    """

    cfg: FicusConfig
    store: Store
    routes: RouteTable
    interfaces: Mapping[str, RunningInterface]
    """Read-only: every interface of the config, started."""
    embedded: EmbeddedNats | None
    reference: ReferenceStore | None
    api_url: str | None
    """None when the service runs without its API."""
    started_at: float
    sinks: tuple[Sink, ...] = ()
    """Every `[[sinks]]` entry, delivering (router/sinks.py)."""
    leases: Leases | None = None
    """This instance's leases of polling interfaces (router/leases.py); `leases.held()` lists them."""
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the first SIGTERM (`Service.drain`) and at stop: `/readyz` says "draining"."""
    siblings: Siblings | None = None
    """Worker 1 of several (`workers`): the other workers' problems, added to this one's readiness."""
    parity: parity.Shared | None = None
    """The parity windows of every instance (router/parity.py): what the gate and the API judge."""
    sibling_metrics: Mapping[str, str] = field(default_factory=dict)
    """Worker 1 of several: the other workers' metrics sockets by worker number, which its
    `/metrics` gathers (router/worker_metrics.py); empty otherwise."""

    @property
    def nats_url(self) -> str:
        return self.embedded.url if self.embedded is not None else self.cfg.nats.url

    async def parity_of(self, name: str) -> ParityStats:
        """The interface's parity window over every instance of the cluster (router/parity.py), as
        the gate judges it; this instance's alone for a Running built without its parity (tests)."""
        if self.parity is None:
            return self.interfaces[name].stats.parity
        return await self.parity.view(name)

    async def host_stats(self) -> Mapping[str, InterfaceStats]:
        """Each interface's counters on this host: this process's, summed with the other workers'
        (worker 1 of `workers`, router/worker_metrics.py) -- what the API's interface list and the
        console's overview count."""
        own = {n: r.stats for n, r in self.interfaces.items()}
        if not self.sibling_metrics:
            return own
        return await worker_metrics.host_counts(own, self.sibling_metrics)

    def parity_now(self, name: str) -> ParityStats:
        """:meth:`parity_of` without reading NATS: the other instances' samples as last read
        (every few seconds); what the console's overview shows and the `parity` alerts judge."""
        if self.parity is None:
            return self.interfaces[name].stats.parity
        return self.parity.latest(name)

    def ready(self, *, siblings: bool = True, only: Collection[str] | None = None) -> tuple[bool, list[str]]:
        """See `readiness`; "draining" first once the service is stopping; with `siblings`
        (/readyz), the other workers' problems too (see `Siblings`); `only`: the problems of
        those interfaces and the instance's own (NATS, the embedded server, draining)."""
        ok, problems = readiness(self.embedded, self.store, self.interfaces, only)
        if siblings and self.siblings is not None and (others := self.siblings.problems()):
            if only is not None:
                others = [p for p in others if _concerns(p, only, self.interfaces)]
            if others:
                ok, problems = False, [*problems, *others]
        if self.draining.is_set():
            return False, [DRAINING, *problems]
        return ok, problems


Phase = Literal["tasks", "intake", "finish", "api", "parity", "routes", "nats", "server"]
Stopper = Callable[[float], Awaitable[object]]
"""Stops one component; gets the seconds its step has (closing NATS and the server use them)."""


def _untimed(stop: Callable[[], Awaitable[object]]) -> Stopper:
    """A stop that needs no seconds: the step's deadline bounds it from outside."""
    return lambda _left: stop()


@dataclass(frozen=True)
class _PhaseRule:
    name: Phase
    work: bool = False
    """Ends at the work deadline, a little before the shutdown deadline (see CLOSE_RESERVE)."""
    minimum: float = 0.0
    """Seconds its steps get even past the deadline (closing NATS, the embedded server)."""


# The shutdown order. Not an exit stack's last-in-first-out order, on purpose: intake stops on
# every interface before any finishes its work in flight (two phases across components), and
# the API -- started last, because it serves the interfaces -- answers until the work is done.
PHASES: tuple[_PhaseRule, ...] = (
    _PhaseRule("tasks", work=True), _PhaseRule("intake", work=True), _PhaseRule("finish", work=True),
    _PhaseRule("api"), _PhaseRule("parity"), _PhaseRule("routes"),
    _PhaseRule("nats", minimum=1.0), _PhaseRule("server", minimum=2.0),
)


class Lifetimes:
    """What has been started, each with how it stops, run in shutdown phases under one deadline.

    Like an AsyncExitStack, a component registers its stop as soon as it has started, so a
    failure later in start-up stops exactly what is running; unlike one, stops run by phase
    (PHASES), the steps of a phase at the same time, each bounded by the deadline.
    """

    CLOSE_RESERVE = 5.0
    """Seconds of the shutdown deadline kept for closing NATS and the embedded server."""
    MIN_STEP = 0.2
    """Seconds each step gets even when the deadline has passed."""

    def __init__(self) -> None:
        self._steps: dict[Phase, list[tuple[str, Stopper]]] = {rule.name: [] for rule in PHASES}
        self.abandoned: list[str] = []
        """Steps cut short by the deadline."""

    def on_stop(self, phase: Phase, what: str, stop: Stopper) -> None:
        """Registers a started component's stop; `what` names the step in logs and `abandoned`."""
        self._steps[phase].append((what, stop))

    def on_stop_task(self, task: asyncio.Task[None]) -> None:
        """A background task: cancelled first, not waited for."""
        async def cancel(_left: float) -> None:
            task.cancel()

        self.on_stop("tasks", f"cancel {task.get_name()}", cancel)

    async def close(self, total: float) -> None:
        """Runs every registered stop, phase by phase, within `total` seconds (see Service.stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        # Work (intake, in-flight units) ends a little early, so the connection and the embedded
        # server are still closed in order when the work had to be cut short.
        work_deadline = deadline - min(self.CLOSE_RESERVE, total / 4)
        for rule in PHASES:
            steps, self._steps[rule.name] = self._steps[rule.name], []
            if not steps:
                continue
            now = loop.time()
            if rule.minimum:
                # Closing gets a short minimum even past the deadline (Service.GRACE bounds the overrun).
                left = max(rule.minimum, deadline - now)
                until = now + left + 1
            else:
                until = work_deadline if rule.work else deadline
                left = until - now
            await asyncio.gather(*(self._step(what, stop(left), until) for what, stop in steps))

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


def embedded_server(cfg: FicusConfig) -> EmbeddedNats:
    """The embedded nats-server of `cfg` (not started): its store under the state directory."""
    emb = cfg.nats.embedded
    store_dir = Path(emb.store_dir or Path(cfg.state_dir) / "nats")
    # A free port picked now must not be one the API or a listener will bind in a moment.
    named = [cfg.api.listen, *(getattr(i, "listen", None) for i in cfg.interfaces)]
    avoid = {parse_hostport(value)[1] for value in named if isinstance(value, str)}
    return EmbeddedNats(store_dir, host=emb.host, port=emb.port, sync_interval=emb.sync_interval, avoid=avoid)


def _bind(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before the API is built: the `Running` it serves names its URL."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class Service:
    """The whole running Ficus: `async with Service(cfg) as svc: await svc.wait()`.

    After start, `running` (and the shortcuts `store`, `routes`, `interfaces`, `api_url`...)
    are the started components; none of them is optional.
    """

    CLOSE_RESERVE = Lifetimes.CLOSE_RESERVE
    MIN_STEP = Lifetimes.MIN_STEP
    GRACE = 10.0
    """What `stop` may take beyond the deadline at most: closing NATS and the server get a minimum."""

    def __init__(self, cfg: FicusConfig, *, api: bool = True, siblings: Sequence[str] = (),
                 metrics_socket: str | None = None, sibling_metrics: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.with_api = api
        self.sibling_names = list(siblings)
        """The other workers' instance names (worker 1 of `workers`): its /readyz answers for them too."""
        self.metrics_socket = metrics_socket
        """Another worker than the first: where it serves its metrics to worker 1 (router/worker_metrics.py)."""
        self.sibling_metrics = dict(sibling_metrics or {})
        self.stopping = asyncio.Event()
        self.draining = asyncio.Event()
        """Set by `drain` (and `stop`): readiness false with problem "draining"."""
        self._lifetimes = Lifetimes()
        self._running: Running | None = None
        self.api_tls: ReloadingContext | None = None
        self.poster: posting.Poster | None = None
        self.alerts: Alerts | None = None
        """The alert evaluator when `[[alerts]]` are configured (tests, diagnostics)."""
        """The posting consumers' holder when `[posting] enabled` (its counts: tests, diagnostics)."""
        """The API's HTTPS certificates (api.tls), reloaded by :meth:`reload_certificates`."""
        self.registry: Registry | None = None
        """This instance's entry in the instance registry, once started (router/instances.py)."""

    @property
    def running(self) -> Running:
        """The started service; RuntimeError before `start`."""
        if self._running is None:
            raise RuntimeError("the service is not started (use `async with Service(cfg)`)")
        return self._running

    @property
    def abandoned(self) -> list[str]:
        """Shutdown steps cut short by the deadline (then `ficus run` exits with code 1)."""
        return self._lifetimes.abandoned

    @property
    def store(self) -> Store:
        return self.running.store

    @property
    def routes(self) -> RouteTable:
        return self.running.routes

    @property
    def interfaces(self) -> Mapping[str, RunningInterface]:
        return self.running.interfaces

    @property
    def embedded(self) -> EmbeddedNats | None:
        return self.running.embedded

    @property
    def reference(self) -> ReferenceStore | None:
        return self.running.reference

    @property
    def api_url(self) -> str | None:
        return self.running.api_url

    @property
    def nats_url(self) -> str:
        return self.running.nats_url

    def reload_certificates(self) -> None:
        """Reads every TLS file again now (SIGHUP): each MLLP interface's listener and legacy
        certificates and the API's; files that do not load keep the old ones (logged)."""
        from router.interfaces import reload_certificates

        if self._running is None:
            return  # still starting: each certificate is read as its component starts
        reload_certificates(self.interfaces)
        if self.api_tls is not None:
            self.api_tls.reload()

    def ready(self) -> tuple[bool, list[str]]:
        """See `readiness`."""
        return self.running.ready()

    async def start(self) -> None:
        """Starts every component in order and builds `running`; raises StartError naming what failed.

        A failure leaves the components started before it registered: `stop` (which
        `async with` calls) stops them.
        """
        if self._running is not None:
            raise RuntimeError("the service is already started")
        cfg, stops = self.cfg, self._lifetimes
        started_at = time.time()
        from router import tracing  # OTLP spans when [tracing] says so (else nothing is imported)

        if tracing.configure(cfg.tracing):  # the last spans are flushed once the work has stopped
            stops.on_stop("routes", "flush traces", lambda _left: asyncio.to_thread(tracing.shutdown))
        embedded: EmbeddedNats | None = None
        servers = cfg.nats.servers
        if cfg.nats.url == "embedded":
            embedded = embedded_server(cfg)
            server = embedded
            # Registered before it starts: a start that fails half-way leaves a process to stop.
            stops.on_stop("server", "stop the embedded nats-server", lambda left: server.stop(timeout=left))
            with _starting("the embedded nats-server"):
                servers = [await embedded.start()]
            embedded.supervise()  # a server that dies is started again, on the same store and port
        with _starting("NATS"):
            store = Store(await connect(cfg.nats, servers), cfg.nats, audit_days=cfg.audit.retention_days)
        stops.on_stop("nats", "close NATS", store.close)
        with _starting("the JetStream streams and buckets"):
            await store.ensure()
            instances_kv = await instances.bucket_of(store)
        routes = RouteTable(store, {i.name: i.route for i in cfg.interfaces})
        stops.on_stop("routes", "stop the routing table", _untimed(routes.stop))
        with _starting("the routing table"):
            await routes.start()
        reference: ReferenceStore | None = None
        paths = cfg.reference.paths()
        if paths:
            with _starting("the reference tables"):
                reference = ReferenceStore(paths)
            stops.on_stop_task(asyncio.create_task(self._reload_reference(reference), name="reference-reload"))
        # One owner per polling interface (router/leases.py). Renewed until the pipelines have
        # finished at shutdown, then handed over: the next instance takes them over at once.
        with _starting("the leases"):
            leases = Leases(await store.kv(names.KV_LEASES, history=1), cfg.cluster.instance,
                            cfg.cluster.lease_seconds, cfg.cluster.renew_seconds, sole=embedded is not None)
        leases_task = asyncio.create_task(leases.run(), name="leases")

        async def hand_over(_left: float) -> None:
            leases_task.cancel()
            await asyncio.wait({leases_task})
            await leases.close()

        stops.on_stop("routes", "hand the leases over", hand_over)
        deps = Deps(store, routes, reference, Path(cfg.state_dir), leases, reuse_port=cfg.workers > 1,
                    pipelined=not any(i.kind == "hl7-mllp" for i in cfg.interfaces))
        interfaces: dict[str, RunningInterface] = {}
        for icfg in cfg.interfaces:
            with _starting(f"interface {icfg.name} ({icfg.kind})"):
                running = await start_interface(icfg, deps)
            interfaces[icfg.name] = running
            stops.on_stop("intake", f"stop intake of {icfg.name}", _untimed(running.stop_intake))
            stops.on_stop("finish", f"finish {icfg.name}", _untimed(running.finish))
            log.info("interface %s (%s) on %s, route %s", icfg.name, icfg.kind, running.address(),
                     routes.mode_for(icfg.name))
        sinks: list[Sink] = []
        if cfg.sinks:
            with _starting("the sinks"):
                sinks = await start_sinks(cfg.sinks, store)
            for sink in sinks:
                # After intake stopped: a request in flight finishes, the rest is delivered at the next start.
                stops.on_stop("finish", f"stop sink {sink.cfg.name}", _untimed(sink.stop))
        stats = {name: r.stats for name, r in interfaces.items()}
        with _starting("the parity windows"):
            shared = parity.Shared(await store.kv(parity.KV_PARITY, history=1), stats, cfg.cluster.instance)
            stops.on_stop("parity", "save parity", lambda _left: shared.save())
            await shared.restore(routes)
        stops.on_stop_task(asyncio.create_task(shared.keep_saved(), name="parity-save"))
        # The status lookups' views (router/views.py): a durable consumer shared by every instance.
        if cfg.views.enabled:
            stops.on_stop_task(asyncio.create_task(views.keep(views.views_of(store)), name="views"))
        # Live posting (router/posting.py): durable consumers shared by every instance.
        if cfg.posting.enabled:
            rules_path = cfg.posting.rules_path()
            assert rules_path is not None  # the config requires rules when enabled
            with _starting("the posting rules"):
                rules = load_rules(rules_path)
            self.poster = posting.Poster(cfg.posting, store, rules, routes)
            stops.on_stop_task(asyncio.create_task(posting.keep(self.poster), name="posting"))
        # Alerts (router/alerts.py): every instance evaluates; each notice is sent once (KV ficus-alerts).
        if cfg.alerts:
            self.alerts = Alerts(cfg, store, routes, types.MappingProxyType(interfaces), sinks, started_at,
                                 parity_of=shared.latest)
            stops.on_stop_task(asyncio.create_task(self.alerts.run(), name="alerts"))
        sock: socket.socket | None = None
        api_url: str | None = None
        if self.with_api:
            host, port = cfg.api.host_port
            with _starting(f"the API on {cfg.api.listen}"):
                sock = _bind(host, port)
            api_url = f"{'https' if cfg.api.tls else 'http'}://{host}:{sock.getsockname()[1]}"
        siblings: Siblings | None = None
        if self.sibling_names:
            siblings = Siblings(instances_kv, self.sibling_names, cfg.cluster.lease_seconds, cfg.cluster.renew_seconds)
            stops.on_stop_task(asyncio.create_task(siblings.keep(), name="sibling-workers"))
        self._running = Running(cfg, store, routes, types.MappingProxyType(interfaces), embedded, reference,
                                api_url, started_at, tuple(sinks), leases, self.draining, siblings, shared,
                                self.sibling_metrics)
        if self.metrics_socket is not None:
            await self._serve_metrics(self._running, self.metrics_socket)
        if sock is not None:
            with _starting(f"the API on {cfg.api.listen}"):
                await self._serve_api(self._running, sock)
            log.info("API on %s", api_url)
        # The instance registry (router/instances.py): this instance in KV ficus-instances, kept
        # fresh every cluster.renew_seconds until the work is done, then removed (a clean stop).
        # Its own readiness: worker 1's /readyz adds the other workers' from their entries.
        self.registry = Registry(instances_kv, cfg.cluster, api=api_url, interfaces=[i.name for i in cfg.interfaces],
                                 started_at=started_at, ready=functools.partial(self._running.ready, siblings=False),
                                 draining=self.draining.is_set, held=leases.held,
                                 received=lambda: sum(r.stats.received for r in interfaces.values()))
        stops.on_stop("routes", "leave the instance registry", _untimed(self.registry.stop))
        with _starting("the instance registry"):
            await self.registry.start()

    async def _serve_api(self, running: Running, sock: socket.socket) -> None:
        from router.api import make_app, tls_context

        tls = running.cfg.api.tls
        try:
            # HTTPS when api.tls is set; a certificate that does not load stops the start (TlsError, one line).
            ssl_context, self.api_tls = tls_context(tls) if tls is not None else (None, None)
            runner = web.AppRunner(make_app(running), access_log=None)
        except BaseException:
            sock.close()
            raise
        self._lifetimes.on_stop("api", "stop the API", _untimed(runner.cleanup))
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()

    async def _serve_metrics(self, running: Running, name: str) -> None:
        from router.api import metrics_registry

        with _starting("the metrics socket for worker 1"):
            cleanup = await worker_metrics.serve(
                metrics_registry(running), lambda: {n: r.stats for n, r in running.interfaces.items()}, name)
        self._lifetimes.on_stop("api", "stop the metrics socket", _untimed(cleanup))

    async def _reload_reference(self, reference: ReferenceStore) -> None:
        """Picks up changed reference tables without a restart; a bad file keeps the old table."""
        while True:
            await asyncio.sleep(self.cfg.reference.reload_seconds)
            for problem in await asyncio.to_thread(reference.maybe_reload):
                log.warning("reference: %s", problem)

    async def stop(self, timeout: float | None = None) -> None:
        """Stops intake, finishes in-flight work, stops the API, saves parity, closes NATS, stops the embedded server.

        All of it within `timeout` seconds (default `shutdown_timeout_seconds`): each step gets
        what is left of the deadline and is abandoned (cancelled, named in `abandoned`) when it
        runs out. Abandoning is safe: a sender is acknowledged, a file moved and a checkpoint
        advanced only after the unit is stored, so what was cut short is redone at the next start.
        Only what was started is stopped (also after a failed start); a second call does nothing.
        """
        total = self.cfg.shutdown_timeout_seconds if timeout is None else timeout
        self.draining.set()
        await self._lifetimes.close(total)
        if self.abandoned:
            log.error("shutdown deadline of %gs reached: abandoned %s; work not finished was not acknowledged "
                      "and is taken again at the next start", total, ", ".join(self.abandoned))
        else:
            log.info("stopped")

    async def wait(self) -> None:
        await self.stopping.wait()

    async def drain(self) -> None:
        """Before `stop`: readiness false ("draining") at once, everything still serving for
        `cluster.drain_seconds`, so a load balancer checking `/readyz` sends new connections
        elsewhere before the listeners close (deploy/haproxy/ficus.cfg)."""
        self.draining.set()
        seconds = self.cfg.cluster.drain_seconds
        if seconds > 0:
            log.info("draining: /readyz answers 503; still serving for %gs", seconds)
            await asyncio.sleep(seconds)

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
