"""Building each kind of interface from its config: the explicit registry `STARTERS`.

Each starter wires a wrapper (intake), the legacy path and a pipeline, starts them, and
returns an immutable `RunningInterface` whose `stop_intake` and `finish` the service calls
in that order at shutdown: first no new work, then the work in flight completes. A starter
builds its parts inside an AsyncExitStack: when a part fails to start (a listen port taken,
a bucket refused), the parts already started are closed before the error goes up, so the
service has nothing of a half-started interface to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from canonical.reference import ReferenceStore
from legacy.file_delivery import FolderDelivery, InPlaceDelivery, OnConflict, SftpDelivery
from legacy.mllp_sender import MllpSender
from protocols.backoff import Backoff
from protocols.tls import ReloadingContext, TlsFiles, client_context, server_context
from protocols.tls_server import DEFAULT_HANDSHAKE_TIMEOUT
from router import names
from router.config import (
    FileInterfaceConfig,
    InterfaceConfig,
    LegacyTlsConfig,
    MllpInterfaceConfig,
    MllpTlsConfig,
    OdbcInterfaceConfig,
    SftpConfig,
)
from router.file_pipeline import Delivery, FilePipeline
from router.leases import Lease, Leases, while_held
from router.manifest import Manifest
from router.mllp_pipeline import MllpPipeline
from router.odbc_pipeline import CheckpointStore, OdbcPipeline, odbc_settings
from router.routes import RouteTable
from router.stats import InterfaceStats
from router.store import Store
from wrappers.completeness import CompletenessRule
from wrappers.file_source import FileSource
from wrappers.folder_watcher import FolderWatcher
from wrappers.mllp_listener import MllpListener
from wrappers.odbc_poller import OdbcPoller
from wrappers.sftp_poller import SftpPoller, SftpSettings, open_sftp

log = logging.getLogger("ficus.interfaces")


@dataclass(frozen=True)
class Deps:
    """What every starter may use."""

    store: Store
    routes: RouteTable
    reference: ReferenceStore | None
    state_dir: Path
    leases: Leases | None = None
    """One owner per polling interface (router/leases.py); None: every poller always runs."""
    reuse_port: bool = False
    """MLLP listeners bind with SO_REUSEPORT (`workers` > 1: every worker binds the same port)."""
    pipelined: bool = True
    """File chunks pipelined (the next translated while one commits): only where no MLLP listener
    shares the process, since the pipelined file path keeps JetStream and the GIL busy enough
    to hold MLLP ACKs (bench.ack_under_ingest, 50 MB 835 at 200 DFT/s: ACK p99 158 ms pipelined,
    37 ms in turn)."""

    def lease(self, name: str) -> Lease | None:
        return self.leases.lease(name) if self.leases is not None else None


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class RunningInterface:
    """One interface as running (built once by its starter)."""

    cfg: InterfaceConfig
    stats: InterfaceStats
    address: Callable[[], str]
    stop_intake: Callable[[], Awaitable[None]] = _nothing
    finish: Callable[[], Awaitable[None]] = _nothing
    details: Callable[[], dict[str, Any]] = dict
    ready: Callable[[], bool] = lambda: True
    problem: Callable[[], str | None] = lambda: None
    """Why the interface is not ready, else None: its listener not bound, its pipeline stopped or
    crash-looping, its source, database or legacy destination failing (from the first failed pass
    until one succeeds), a file set aside. Identifiers and error classes only, never data."""
    listener: MllpListener | None = None
    pipeline: MllpPipeline | FilePipeline | OdbcPipeline | None = None
    tls: tuple[ReloadingContext, ...] = ()
    """The interface's TLS contexts, reloaded by `reload_certificates` (SIGHUP)."""


def listener_tls(name: str, cfg: MllpTlsConfig) -> ReloadingContext:
    """The listener's server context; raises TlsError (an OSError) when the files do not load."""
    files = TlsFiles(Path(cfg.cert), Path(cfg.key), Path(cfg.client_ca) if cfg.client_ca else None)
    return ReloadingContext(f"{name} listener",
                            lambda: server_context(files, require_client_cert=cfg.require_client_cert), files.paths())


def legacy_tls(name: str, cfg: LegacyTlsConfig) -> ReloadingContext:
    """The legacy sender's client context (only `cfg.ca` trusted); raises TlsError."""
    ca, cert, key = Path(cfg.ca), Path(cfg.cert) if cfg.cert else None, Path(cfg.key) if cfg.key else None
    return ReloadingContext(f"{name} legacy", lambda: client_context(ca, cert, key), TlsFiles(cert, key, ca).paths())


def reload_certificates(interfaces: Mapping[str, RunningInterface]) -> None:
    """Reload every interface's TLS files now (SIGHUP); files that do not load keep the old ones."""
    for running in interfaces.values():
        for context in running.tls:
            context.reload()


async def start_mllp(cfg: MllpInterfaceConfig, deps: Deps) -> RunningInterface:
    """An hl7-mllp interface: listener, legacy MLLP sender, pipeline."""
    stats = InterfaceStats()
    legacy: MllpSender | None = None
    hp = cfg.legacy_host_port
    server_tls = listener_tls(cfg.name, cfg.tls) if cfg.tls is not None else None
    sender_tls = legacy_tls(cfg.name, cfg.legacy_tls) if cfg.legacy_tls is not None else None
    async with contextlib.AsyncExitStack() as started:
        if hp is not None:
            legacy = await started.enter_async_context(MllpSender(
                cfg.name, hp[0], hp[1], connections=cfg.legacy_connections,
                connect_timeout=cfg.legacy_connect_timeout_seconds,
                ack_timeout=cfg.legacy_ack_timeout_seconds, max_message_bytes=cfg.max_message_bytes,
                tls=sender_tls.fresh if sender_tls else None,
                server_hostname=cfg.legacy_tls.server_name if cfg.legacy_tls else None,
            ))
        pipeline = MllpPipeline(cfg, deps.store, deps.routes, legacy, stats, reference=deps.reference)
        host, port = cfg.listen_host_port
        listener = await started.enter_async_context(MllpListener(
            cfg.name, host, port, pipeline, max_message_bytes=cfg.max_message_bytes,
            idle_timeout=cfg.idle_timeout_seconds, on_oversize=pipeline.on_oversize,
            on_malformed=pipeline.on_malformed, max_connections=cfg.max_connections,
            end_grace=cfg.frame_end_grace_seconds, tls=server_tls.fresh if server_tls else None,
            handshake_timeout=cfg.tls.handshake_timeout_seconds if cfg.tls else DEFAULT_HANDSHAKE_TIMEOUT,
            reuse_port=deps.reuse_port,
        ))
        started.pop_all()  # all started: from here `stop_intake` and `finish` own them

    async def finish() -> None:
        await pipeline.drain()
        if legacy is not None:
            await legacy.close()

    return RunningInterface(
        cfg, stats, address=lambda: f"{host}:{listener.port}", stop_intake=listener.close, finish=finish,
        details=lambda: {"listener": dataclasses.asdict(listener.stats)},
        ready=lambda: listener.port != 0, listener=listener, pipeline=pipeline,
        problem=lambda: None if listener.port else f"MLLP listener not bound ({cfg.listen})",
        tls=tuple(c for c in (server_tls, sender_tls) if c is not None),
    )


def sftp_settings(cfg: SftpConfig, remote_dir: str, patterns: list[str]) -> SftpSettings:
    return SftpSettings(
        host=cfg.host, port=cfg.port, username=cfg.username, password=cfg.password,
        private_key_path=cfg.private_key, private_key_passphrase=cfg.private_key_passphrase,
        known_hosts_path=cfg.known_hosts, remote_dir=remote_dir, patterns=patterns,
        connect_timeout=cfg.connect_timeout_seconds, operation_timeout=cfg.operation_timeout_seconds,
        reconnect_max_backoff=cfg.reconnect_max_backoff_seconds,
    )


def _source(cfg: FileInterfaceConfig) -> FileSource:
    rule = CompletenessRule(mode=cfg.complete, stable_seconds=cfg.stable_seconds, marker_suffix=cfg.marker_suffix)
    if cfg.kind == "sftp":
        return SftpPoller(cfg.name, sftp_settings(cfg.sftp, cfg.path, cfg.patterns), rule,
                          poll_seconds=cfg.poll_seconds)
    return FolderWatcher(cfg.name, Path(cfg.path), cfg.patterns, rule, poll_seconds=cfg.poll_seconds)


def _delivery(cfg: FileInterfaceConfig, on_conflict: OnConflict = "wait") -> Delivery | None:
    if cfg.legacy is None:
        return None
    if cfg.legacy == "in-place":
        return InPlaceDelivery()
    if cfg.legacy.startswith("sftp://"):
        assert cfg.legacy_sftp is not None
        remote_dir = "/" + cfg.legacy.removeprefix("sftp://").partition("/")[2]
        settings = sftp_settings(cfg.legacy_sftp, remote_dir, ["*"])
        return SftpDelivery(lambda: open_sftp(settings), remote_dir,
                            operation_timeout=cfg.legacy_sftp.operation_timeout_seconds, on_conflict=on_conflict)
    return FolderDelivery(Path(cfg.legacy.removeprefix("file://")), on_conflict=on_conflict)


def _ack_delivery(cfg: FileInterfaceConfig) -> FolderDelivery | SftpDelivery | None:
    """Where an HL7 file's batch ACK goes (ack_file): ack_dir, else next to the legacy delivery.
    Ficus's own ACK of a file may be written over (a rewrite after a crash is the same ACK)."""
    if not cfg.ack_file:
        return None
    if cfg.ack_dir is not None:
        return FolderDelivery(Path(cfg.ack_dir), on_conflict="replace")
    found = _delivery(cfg, on_conflict="replace")
    assert isinstance(found, (FolderDelivery, SftpDelivery)), "config: ack_file without ack_dir needs a directory"
    return found


class _Runner(Protocol):
    async def run(self, stopping: asyncio.Event) -> None: ...


@dataclass(frozen=True)
class _Leased:
    """A runner that runs only while the interface's lease is held here."""

    runner: _Runner
    lease: Lease

    async def run(self, stopping: asyncio.Event) -> None:
        await while_held(self.lease, self.runner.run, stopping)


def _polling(
    cfg: FileInterfaceConfig | OdbcInterfaceConfig, stats: InterfaceStats, runner: _Runner,
    close: Callable[[], Awaitable[None]], address: str, details: Callable[[], dict[str, Any]],
    problem: Callable[[], str | None] = lambda: None, pipeline: FilePipeline | OdbcPipeline | None = None,
    lease: Lease | None = None,
) -> RunningInterface:
    """A polling interface: one task running `runner.run(stopping)`; shutdown lets its unit finish.

    With a `lease` the runner runs only while this instance holds the interface's lease
    (router/leases.py): it waits for it, stops when it is lost, and waits for it again.
    """
    stopping = asyncio.Event()
    if lease is not None:
        runner = _Leased(runner, lease)
    supervision = Supervision()
    task = asyncio.create_task(_supervised(cfg.name, stats, runner, stopping, supervision),
                               name=f"{cfg.kind}-{cfg.name}")

    async def stop_intake() -> None:
        stopping.set()

    async def finish() -> None:
        # The unit in flight finishes. The service's shutdown deadline bounds this wait by
        # cancelling finish, which cancels the pipeline with it: a hard stop is safe too (its
        # resume point -- manifest, checkpoint -- is only advanced after the unit is stored).
        try:
            await asyncio.wait({task})
        finally:
            if not task.done():
                task.cancel()
        await close()

    return RunningInterface(cfg, stats, address=lambda: address, stop_intake=stop_intake, finish=finish,
                            details=details, pipeline=pipeline, ready=lambda: not task.done(),
                            problem=lambda: "pipeline stopped" if task.done() else supervision.problem() or problem())


HEALTHY_SECONDS = 60.0
"""A pipeline run that lasted this long before crashing was healthy: the backoff starts over."""


@dataclass
class Supervision:
    """A supervised pipeline's crash state, for readiness."""

    crashes: int = 0
    """Crashes in a row (runs shorter than HEALTHY_SECONDS)."""
    last_error: str = ""
    restarted_at: float = 0.0

    def problem(self, healthy_seconds: float = HEALTHY_SECONDS) -> str | None:
        """Crash-looping: crashed, and not yet running well for `healthy_seconds` since."""
        if not self.crashes or time.monotonic() - self.restarted_at >= healthy_seconds:
            return None
        return f"pipeline crash-looping ({self.crashes} crash(es) in a row, last {self.last_error})"


async def _supervised(
    name: str, stats: InterfaceStats, runner: _Runner, stopping: asyncio.Event,
    supervision: Supervision | None = None, *, healthy_seconds: float = HEALTHY_SECONDS,
    backoff: Backoff | None = None,
) -> None:
    """Runs a polling pipeline; an unexpected crash is logged, counted and restarted after a pause.

    The pause is drawn below a ceiling that doubles with each crash in a row, from 1 s up to
    60 s (full jitter: `backoff`), and starts over after a run that lasted `healthy_seconds`.
    Nothing is lost by a restart: each pipeline resumes from its stored checkpoint or manifest.
    """
    state = supervision if supervision is not None else Supervision()
    pauses = backoff if backoff is not None else Backoff(1.0, 60.0)
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await runner.run(stopping)
            return
        except Exception as exc:  # a supervisor: logged, counted, restarted
            if time.monotonic() - started >= healthy_seconds:
                pauses.reset()  # it ran well before this crash: not a loop
                state.crashes = 0
            state.crashes += 1
            state.last_error = type(exc).__name__
            delay = pauses.next_delay()
            stats.error(f"pipeline crashed: {type(exc).__name__}; restarting in {delay:.3g}s")
            log.exception("%s: pipeline crashed; restarting in %.3gs", name, delay)
        state.restarted_at = float("inf")  # not ready while waiting to restart
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        state.restarted_at = time.monotonic()


async def start_files(cfg: FileInterfaceConfig, deps: Deps) -> RunningInterface:
    """A folder or sftp interface: source, legacy file delivery, manifest, pipeline task."""
    stats = InterfaceStats()
    async with contextlib.AsyncExitStack() as started:
        source = _source(cfg)
        started.push_async_callback(source.close)
        spool = Path(cfg.spool_dir or deps.state_dir / "spool" / cfg.name)
        await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
        lease = deps.lease(cfg.name)
        manifest = Manifest(await deps.store.kv(names.KV_FILES, history=1), fence=lease)
        objects = await deps.store.object_store(names.OBJ_RAW_FILES)
        acks = _ack_delivery(cfg)
        pipeline = FilePipeline(cfg, deps.store, deps.routes, source, _delivery(cfg), stats, manifest, objects,
                                spool, reference=deps.reference, acks=acks, fence=lease, pipelined=deps.pipelined)
        started.pop_all()  # the pipeline task below owns the source from here (`finish` closes it)

    async def close() -> None:
        await pipeline.close()
        await source.close()
        if acks is not None:
            await acks.close()

    return _polling(cfg, stats, pipeline, close, f"{cfg.kind}:{cfg.path}", pipeline.details,
                    pipeline.problem, pipeline, lease)


async def start_odbc(cfg: OdbcInterfaceConfig, deps: Deps) -> RunningInterface:
    """An odbc interface (database job): poller, checkpoint in KV, pipeline task."""
    stats = InterfaceStats()
    async with contextlib.AsyncExitStack() as started:
        poller = OdbcPoller(cfg.name, odbc_settings(cfg))
        started.push_async_callback(poller.close)
        lease = deps.lease(cfg.name)
        checkpoints = CheckpointStore(await deps.store.kv(names.KV_CHECKPOINTS), cfg.name, fence=lease)
        pipeline = OdbcPipeline(cfg, deps.store, deps.routes, poller, stats, checkpoints, reference=deps.reference,
                                fence=lease)
        started.pop_all()  # the pipeline task below owns the poller from here (`finish` closes it)
    return _polling(cfg, stats, pipeline, poller.close, f"odbc:{cfg.table}", pipeline.details, pipeline.problem,
                    pipeline, lease)


async def start(cfg: InterfaceConfig, deps: Deps) -> RunningInterface:
    """The explicit registry from `kind` to its starter."""
    if isinstance(cfg, MllpInterfaceConfig):
        return await start_mllp(cfg, deps)
    if isinstance(cfg, OdbcInterfaceConfig):
        return await start_odbc(cfg, deps)
    return await start_files(cfg, deps)
