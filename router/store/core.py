"""JetStream as Ficus's durable store: connection, streams and buckets, acknowledged publishing.

Every publish carries a `Nats-Msg-Id`, and success means JetStream acknowledged it; any
other outcome (server down, timeout, no stream) raises `StoreUnavailable`, which callers
treat as "retry later" and never as success. Re-publishing with the same id after an
unknown outcome is safe: the stream's duplicate window drops the copy.

This package is the only door to nats-py (with router/publisher.py, its hot path): what is
read comes back as Ficus types (`StoredMsg`, `kv.Entry`) and what fails as `StoreError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from canonical.envelope import CloudEvent
from router import names
from router.config import NatsConfig
from router.fast_ingest import FastIngest, Unsupported
from router.publisher import FastPublisher, encode_headers, supported
from router.store import secure
from router.store.errors import StoreRejected, StoreUnavailable, mapped
from router.store.kv import Bucket
from router.store.objects import Objects
from router.store.outgoing import Outgoing
from router.store.pages import direct_page

log = logging.getLogger("ficus.store")
T = TypeVar("T")
DAY = 86400.0
SELFTEST_STREAM = "FICUS_SELFTEST"
SELFTEST_SUBJECT = "ficus.selftest"
"""Where the start-up publish goes that chooses the publisher (one message kept, in memory)."""
FAST = "fast"
FALLBACK = "publish_async"
INGEST = "fast-ingest"
INGEST_OFF = "off"
INGEST_MIN = 8
"""Messages for one stream below which a batch is not worth its first round trip."""
BATCHED_STREAMS = (names.STREAM_CANONICAL, names.STREAM_SHADOW, names.STREAM_EVIDX, names.STREAM_DLQ,
                   names.STREAM_LEDGER, SELFTEST_STREAM)
"""Streams that take fast-ingest batches (`allow_batched`) when the server and `nats.fast_ingest` allow:
what file chunks and row batches store (router/fast_ingest.py), and the self-test's."""
BATCHED_SINCE = (2, 14)
"""The first nats-server version with fast-ingest batches (ADR-50)."""


@dataclass(frozen=True, slots=True)
class StoredMsg:
    """One message read back from a stream."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    pending: int = 0
    """Messages after this one still to come (a scan's; for progress)."""
    time: datetime | None = None
    """When the stream stored it (a page's or a tail's)."""


def event_message(event: CloudEvent, interface: str, msg_id: str | None = None) -> Outgoing:
    """A canonical event as stored: its subject, compact JSON, its id as Nats-Msg-Id.

    Two headers only, so consumers can route without parsing; everything else is in the
    event (`ficusraw`, `ficuscorrelation`), and each header costs on the hot path.
    """
    return Outgoing(event.nats_subject(), event.to_json(), msg_id or event.id,
                    {names.HDR_INTERFACE: interface, names.HDR_EVENT_TYPE: event.type})


def index_message(event: Outgoing, interface: str, facility: str | None) -> Outgoing:
    """The event index's copy of a stored event (names.evidx_subject): same bytes, headers and
    Msg-Id (deduplication is per stream), on a subject that names mode, interface and facility."""
    mode = "shadow" if event.subject.startswith("shadow.") else "live"
    return Outgoing(names.evidx_subject(mode, interface, facility, event.subject), event.payload,
                    event.msg_id, event.headers)


AUDIT_DAYS = 2190.0
"""The audit trail's retention when none is given (`[audit] retention_days`): six years."""


def stream_configs(cfg: NatsConfig, audit_days: float = AUDIT_DAYS, *, batched: bool = False,
                   ) -> list[StreamConfig]:
    """The streams Ficus owns, from the retention settings of the config (`audit_days`: `[audit]`);
    ``batched``: the server takes fast-ingest batches, given to the BATCHED_STREAMS."""

    def stream(name: str, subjects: str, days: float, description: str) -> StreamConfig:
        if batched and name in BATCHED_STREAMS:
            return _file_stream(cfg, name, subjects, days, description, allow_batched=True)
        return _file_stream(cfg, name, subjects, days, description)

    return [
        stream(names.STREAM_RAW, names.SUBJECTS_RAW, cfg.raw_max_age_days, "raw inbound units"),
        stream(names.STREAM_CANONICAL, names.SUBJECTS_CANONICAL, cfg.events_max_age_days,
               "live canonical events"),
        stream(names.STREAM_SHADOW, names.SUBJECTS_SHADOW, cfg.events_max_age_days,
               "shadow canonical events"),
        stream(names.STREAM_EVIDX, names.SUBJECTS_EVIDX, cfg.events_max_age_days,
               "canonical events by mode, interface and facility (the consumer API's index)"),
        stream(names.STREAM_DLQ, names.SUBJECTS_DLQ, cfg.dlq_max_age_days, "dead letters"),
        audit_stream(cfg, audit_days),
        # A year and a month: reconciliation looks back further than events are kept (router/ledger.py).
        stream(names.STREAM_LEDGER, names.SUBJECTS_LEDGER, 400, "reconciliation ledger deltas"),
        # GL parity looks back as far as the ledger: a month-end question about last quarter.
        stream(names.STREAM_GLREF, names.SUBJECTS_GLREF, 400, "legacy GL export lines by posting day"),
        stream(names.STREAM_POSTIDX, names.SUBJECTS_POSTIDX, 400, "journal entries by posting day"),
        # The business-key index (router/keyindex.py) points at raw units: kept as long as they are.
        stream(names.STREAM_KEYS, names.SUBJECTS_KEYS, cfg.raw_max_age_days,
               "business keys (keyed hashes) of committed units, their links and sink deliveries"),
        StreamConfig(name=SELFTEST_STREAM, description="the publisher's start-up self-test",
                     subjects=[SELFTEST_SUBJECT], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.MEMORY, discard=DiscardPolicy.OLD, max_msgs=1, max_age=DAY,
                     num_replicas=cfg.replicas, duplicate_window=60, allow_batched=True if batched else None),
    ]


def audit_stream(cfg: NatsConfig, days: float) -> StreamConfig:
    """The audit trail (router/audit.py, route flips): append-only, nothing in it can be deleted or
    purged through the API; only `max_age` ends a record."""
    return _file_stream(cfg, names.STREAM_AUDIT, names.SUBJECTS_AUDIT, days,
                        "audit trail: route flips, replays, reads of message content", deny_delete=True,
                        deny_purge=True)


def _file_stream(cfg: NatsConfig, name: str, subjects: str, days: float, description: str,
                 **extra: Any) -> StreamConfig:
    """A stream on file, oldest messages dropped past ``days``, with the config's replicas and window."""
    return StreamConfig(
        name=name, description=description, subjects=[subjects], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, discard=DiscardPolicy.OLD, max_age=days * DAY, num_replicas=cfg.replicas,
        # Direct gets: a page of the consumer API is one batched request (Store.page), no consumer.
        duplicate_window=cfg.duplicate_window_seconds, allow_direct=True, **extra,
    )


WAIT_LOG_SECONDS = 5.0
"""While the first connection is waited for, a log line at most this often."""


async def connect(cfg: NatsConfig, servers: list[str], *, name: str = "ficus") -> Client:
    """Connects with settings for a long-lived service: reconnect forever, notice loss fast.

    With `nats.tls` and a credential from the config (router/store/secure.py). A server
    that is down is waited for, as ever; one that refuses Ficus (credentials refused, a
    certificate that does not verify, no TLS where TLS is required) is not: once each
    server has refused, `StoreRejected` names the URLs and why, never a secret. A first
    connection not made within `nats.start_timeout_seconds` is `StoreUnavailable`; after it,
    a lost connection is waited for without end (an outage must not stop the service).
    """

    nc = secure.GuardedClient(tls_everywhere=cfg.tls is not None)
    connected = False
    refusals = 0
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[str] = loop.create_future()

    def closing() -> bool:
        return bool(nc.is_closed or nc.is_draining)

    last_error = ""
    attempts = 0
    logged_at = -WAIT_LOG_SECONDS

    async def on_error(exc: Exception) -> None:
        nonlocal refusals, last_error, attempts, logged_at
        why = None if connected else secure.refusal(exc, cfg)
        if why is not None:
            refusals += 1
            # The pool is tried in turn: as many refusals as servers and none would have Ficus.
            if refusals >= len(servers) and not refused.done():
                refused.set_result(why)
        if closing():  # our own close (a timed-out flush at shutdown, say): not an incident
            log.info("nats: while closing: %s", type(exc).__name__)
            return
        if not connected:
            # Waiting for the first connection: one line every WAIT_LOG_SECONDS, not one a try.
            attempts += 1
            last_error = f"{type(exc).__name__}: {exc}"
            if loop.time() - logged_at < WAIT_LOG_SECONDS:
                return
            logged_at = loop.time()
            log.warning("nats: waiting for %s (attempt %d, at most %gs): %s", secure.shown(servers), attempts,
                        cfg.start_timeout_seconds, last_error)
            return
        log.warning("nats: %s: %s", type(exc).__name__, exc)

    async def on_disconnect() -> None:
        if closing() or not connected:  # a clean stop disconnects too; only a lost connection deserves a warning
            log.info("nats: connection closed")
            return
        log.warning("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    tls = cfg.tls
    connecting = asyncio.ensure_future(nc.connect(
        servers=servers,
        name=name,
        tls=secure.tls_context(cfg, servers),
        tls_hostname=tls.server_name if tls is not None else None,
        user=cfg.user,
        password=cfg.password,
        token=cfg.token,
        nkeys_seed=cfg.nkey_seed_file,
        user_credentials=cfg.creds_file,
        connect_timeout=2,
        # The default (60 attempts, then closed for good) would end an outage with a dead service.
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int, used as seconds (a float)
        ping_interval=5,
        max_outstanding_pings=2,
        pending_size=8 * 1024 * 1024,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        allow_reconnect=True,
    ))
    first: set[asyncio.Future[Any]] = {connecting, refused}
    try:
        await asyncio.wait(first, timeout=cfg.start_timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
        if refused.done() and not connecting.done():
            raise StoreRejected(f"{secure.shown(servers)} refused the connection: {refused.result()}")
        if not connecting.done():
            # A server that is down at start is waited for, within a bound: a service manager
            # restarts Ficus, and the operator sees why, instead of a start that never ends.
            raise StoreUnavailable(f"{secure.shown(servers)} not reachable within {cfg.start_timeout_seconds:g}s "
                                   f"({attempts} attempts; last: {last_error or 'no answer'})")
        connecting.result()
    except BaseException:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # what it raised is raised below
            await connecting
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await nc.close()
        raise
    connected = True
    return nc


class Store:
    """Streams, buckets and acknowledged publishing on one NATS connection."""

    def __init__(self, nc: Client, cfg: NatsConfig, *, fast: bool = True, audit_days: float = AUDIT_DAYS) -> None:
        self._nc = nc
        self._page_slots = asyncio.Semaphore(self.PAGES_AT_ONCE)
        self.cfg = cfg
        self.audit_days = audit_days
        self._js: JetStreamContext = nc.jetstream(publish_async_max_pending=4096)
        self._replicated: set[str] = set()
        """Bucket streams whose replicas `_replicate` has checked."""
        self.timeout = cfg.publish_timeout_seconds
        # The hot path; nats-py's publish_async when this nats-py lacks what it needs, when
        # `fast` is off, or when the fast path fails its self-test (`ensure`).
        self.fast: FastPublisher | None = (
            FastPublisher(nc, names.HDR_MSG_ID) if fast and supported(nc) else None)
        self.publisher = FAST if self.fast is not None else FALLBACK
        """Which path publishes: "fast" or "publish_async" (shown by /readyz)."""
        self.ingester: FastIngest | None = (
            FastIngest(nc, names.HDR_MSG_ID) if cfg.fast_ingest and supported(nc) else None)
        self.ingest_mode = INGEST_OFF
        """Whether file chunks and row batches go as fast-ingest batches: "fast-ingest" once the
        start-up self-test stored one, else "off" (shown by /readyz)."""
        self._batched: set[str] = set()
        """Streams configured with `allow_batched` by `ensure`."""
        self._stream_of = {sc.subjects[0].removesuffix(".>"): sc.name or ""
                           for sc in stream_configs(cfg) if sc.subjects and sc.subjects[0].endswith(".>")}

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (it reconnects by itself)."""
        return bool(self._nc.is_connected)

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts, headers included."""
        return int(self._nc.max_payload)

    async def ensure(self) -> None:
        """Creates or updates every stream and bucket, then chooses the publisher; safe at each start."""
        batched = self.ingester is not None and self.server_takes_batches()
        for sc in stream_configs(self.cfg, self.audit_days, batched=batched):
            with mapped(f"stream {sc.name}"):
                await self._patient(functools.partial(self._add_or_update, sc))
                await self._settled(sc.name or "")
            if sc.allow_batched:
                self._batched.add(sc.name or "")
        await self.kv(names.KV_ROUTES)
        await self.choose_publisher()
        await self.choose_ingest()

    async def _add_or_update(self, sc: StreamConfig) -> None:
        try:
            await self._js.add_stream(sc)
        except nats.js.errors.BadRequestError:
            # Exists with other settings (e.g. retention changed in the config).
            await self._js.update_stream(sc)

    @property
    def ingest_batches(self) -> int:
        """Fast-ingest batches committed since start (shows the path in use)."""
        return self.ingester.batches if self.ingester is not None else 0

    def server_takes_batches(self) -> bool:
        """Whether the server we are connected to is of a version with fast-ingest batches."""
        try:
            version = self._nc.connected_server_version
            return (version.major, version.minor) >= BATCHED_SINCE
        except (AttributeError, ValueError, TypeError):
            return False

    async def choose_ingest(self) -> str:
        """Stores a two-message fast-ingest batch on the self-test stream; keeps the path only if
        the server committed it whole (a server, a stream or a nats-py that does not take it
        leaves file chunks and row batches on the publisher chosen above)."""
        self.ingest_mode = INGEST_OFF
        if self.ingester is None or SELFTEST_STREAM not in self._batched:
            why = "off in the config" if not self.cfg.fast_ingest else "not taken by this server"
            log.info("ingest: %s (fast-ingest batches %s)", INGEST_OFF, why)
            return self.ingest_mode
        try:
            await self.ingester.publish([self._self_test_item(), self._self_test_item()], self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure of the batch path is the verdict
            self._batched.clear()
            log.warning("ingest: %s; the fast-ingest self-test failed (%s)", INGEST_OFF, type(exc).__name__)
            return self.ingest_mode
        self.ingest_mode = INGEST
        log.info("ingest: %s (self-test committed)", INGEST)
        return self.ingest_mode

    async def choose_publisher(self) -> str:
        """Publishes one self-test message on the fast path and keeps it only if JetStream acked it.

        The fast path reaches inside nats-py (router/publisher.py); a nats-py whose insides
        changed would show here as a missing or wrong PubAck, so that path is dropped for
        `publish_async` and the log says why. When the fallback fails too, JetStream itself is
        away: `StoreUnavailable`, as for any other start-up write.
        """
        if self.fast is None:
            self.publisher = FALLBACK
            log.info("publisher: %s (the fast path is off or unsupported by this nats-py)", FALLBACK)
            return self.publisher
        try:
            (ack,) = await self.fast.publish([self._self_test_item()], self.timeout)
            if ack.stream != SELFTEST_STREAM:
                raise ValueError("PubAck from another stream")
        except Exception as exc:  # noqa: BLE001 - any failure of the fast path is the verdict
            why = type(exc).__name__
            try:
                await self._publish_async([self._self_test_item()])
            except StoreUnavailable as again:
                raise StoreUnavailable(f"publisher self-test: {again.reason}") from exc
            await self.fast.stop()
            self.fast = None
            self.publisher = FALLBACK
            log.warning("publisher: %s; the fast path failed its self-test (%s)", FALLBACK, why)
            return self.publisher
        self.publisher = FAST
        log.info("publisher: %s (self-test acknowledged)", FAST)
        return self.publisher

    @staticmethod
    def _self_test_item() -> Outgoing:
        return Outgoing(SELFTEST_SUBJECT, b"publisher self-test", f"selftest-{secrets.token_hex(8)}")

    async def kv(self, bucket: str, history: int = 16, max_age: float | None = None) -> Bucket:
        """A KV bucket, created on first use; `max_age`: a value not written again for this many
        seconds is removed (the bucket's TTL; set when the bucket is created)."""
        async def open_kv() -> KeyValue:
            try:
                return await self._js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                return await self._js.create_key_value(
                    KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE,
                                   replicas=self.cfg.replicas, ttl=max_age)
                )

        with mapped(f"bucket {bucket}"):
            kv = await self._patient(open_kv)
            await self._replicate(f"KV_{bucket}")
        return Bucket(kv, bucket, self._js)

    async def _patient(self, op: Callable[[], Awaitable[T]]) -> T:
        """Runs a JetStream API call made while starting, again while it times out, for up to
        `nats.start_timeout_seconds`.

        On a cluster, instances starting together create and replicate the same streams and
        buckets at once; the meta leader then answers some API requests after nats-py's 5 s
        (CI: `bucket ficus-instances: TimeoutError` with three instances starting). Each step
        is idempotent (look up, else create with the same settings), so asking again is safe.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.start_timeout_seconds
        while True:
            try:
                return await op()
            except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                # Disconnected is an outage, not a busy cluster: the caller's error at once.
                if loop.time() >= deadline or not self._nc.is_connected:
                    raise
                log.info("JetStream API busy (%s); asking again", type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _replicate(self, stream: str) -> None:
        """Gives a bucket's stream `nats.replicas` and waits until they serve it (once per bucket
        and process).

        Streams are updated by `ensure`; a bucket made before `nats.replicas` was raised (a single
        server grown into a cluster) would otherwise stay on one server and be lost with it.
        """
        if stream in self._replicated:
            return
        info = await self._patient(lambda: self._js.stream_info(stream))
        if info.config.num_replicas != self.cfg.replicas:
            log.info("stream %s: replicas %s -> %d", stream, info.config.num_replicas, self.cfg.replicas)
            config = dataclasses.replace(info.config, num_replicas=self.cfg.replicas)
            await self._patient(lambda: self._js.update_stream(config))
        await self._settled(stream)
        self._replicated.add(stream)

    async def _settled(self, stream: str, timeout: float = 10.0) -> None:
        """Waits (bounded) until a replicated stream has a leader and a majority of current peers.
        A stream just made or changed (by this instance, or by another one starting at the same
        time) times out reads and writes until then, and the first of them is usually the next
        thing done. A majority, not all: with one server of three down, writes go on, and so
        must a start."""
        if self.cfg.replicas == 1:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                cluster = (await self._js.stream_info(stream)).cluster
            except (TimeoutError, nats.js.errors.ServiceUnavailableError):
                cluster = None  # no leader yet to answer
            peers = cluster.replicas or [] if cluster is not None else []
            current = 1 + sum(1 for peer in peers if peer.current and not peer.offline)
            if cluster is not None and cluster.leader and current > self.cfg.replicas // 2:
                return
            await asyncio.sleep(0.2)
        log.warning("stream %s: replicas not caught up within %gs", stream, timeout)

    async def object_store(self, bucket: str) -> Objects:
        """An object store bucket (whole raw files), created on first use."""
        with mapped(f"object store {bucket}"):
            obj = await self._patient(functools.partial(self._open_object_store, bucket))
            await self._replicate(f"OBJ_{bucket}")
        return Objects(obj, bucket, self._js, self.publish, lambda: self.max_payload)

    async def _open_object_store(self, bucket: str) -> ObjectStore:
        try:
            return await self._js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await self._js.create_object_store(
                bucket, config=ObjectStoreConfig(bucket=bucket, storage=StorageType.FILE,
                                                 replicas=self.cfg.replicas))

    async def publish(self, items: Sequence[Outgoing]) -> list[PubAck]:
        """Stores all items; returns their acks in order or raises StoreUnavailable."""
        if not items:
            return []
        if not self._nc.is_connected:
            raise StoreUnavailable("NATS is not connected")
        if self.fast is not None:
            try:
                return await self.fast.publish(items, self.timeout)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                raise StoreUnavailable(f"JetStream did not acknowledge: {type(exc).__name__}") from exc
        return await self._publish_async(items)

    def stream_of(self, subject: str) -> str:
        """The stream of Ficus that takes ``subject`` ("" for none)."""
        return self._stream_of.get(subject.split(".", 1)[0], "")

    async def ingest(self, items: Sequence[Outgoing], fence: Callable[[], None] | None = None,
                     piece: int = 50) -> None:
        """Stores all items, as fast-ingest batches where it can (one per stream, run side by
        side), else by `publish` in pieces; returns once every one is stored, or raises
        StoreUnavailable (what was stored is a duplicate when sent again). ``fence`` is called
        before every piece and every FENCE_EVERY batched messages and raises to stop."""
        if not items:
            return
        if not self._nc.is_connected:
            raise StoreUnavailable("NATS is not connected")
        groups: dict[str, list[Outgoing]] = {}
        subject, group = None, []
        for item in items:
            if item.subject != subject:  # runs of one subject (a batch's events, its deltas): looked up once
                subject = item.subject
                group = groups.setdefault(self.stream_of(subject), [])
            group.append(item)
        if len(groups) == 1:
            ((stream, group),) = groups.items()
            await self._ingest_group(stream, group, fence, piece)
            return
        try:
            async with asyncio.TaskGroup() as tasks:
                for stream, group in groups.items():
                    tasks.create_task(self._ingest_group(stream, group, fence, piece))
        except BaseExceptionGroup as failed:
            # Callers know StoreUnavailable and LeaseLost, not groups: the first failure is the verdict.
            raise failed.exceptions[0] from None

    async def _ingest_group(self, stream: str, items: list[Outgoing], fence: Callable[[], None] | None,
                            piece: int) -> None:
        ingester = self.ingester
        if (ingester is not None and self.ingest_mode == INGEST and stream in self._batched
                and len(items) >= INGEST_MIN):
            try:
                await ingester.publish(items, self.timeout, fence)
                return
            except Unsupported as exc:
                # Changed under us (a stream edited, a server downgraded): that stream goes the
                # other way from now on; the one message the server may have kept dedupes below.
                self._batched.discard(stream)
                log.warning("ingest: %s no longer takes fast-ingest batches (%s); publishing one by one",
                            stream, exc)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                raise StoreUnavailable(f"JetStream did not store the batch: {type(exc).__name__}") from exc
        for start in range(0, len(items), piece):
            if fence is not None:
                fence()
            await self.publish(items[start: start + piece])

    async def _publish_async(self, items: Sequence[Outgoing]) -> list[PubAck]:
        """nats-py's own publishing path: the fallback, same outcome rules."""
        futures: list[asyncio.Future[PubAck]] = []
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for costs a Task per call.
            async with asyncio.timeout(self.timeout):
                for item in items:
                    # nats-py checks the payload alone; the server counts the headers too and
                    # answers an oversize command by closing the connection (as in publisher.py).
                    if len(encode_headers(names.HDR_MSG_ID, item)) + len(item.payload) > self._nc.max_payload:
                        raise nats.errors.MaxPayloadError()
                    headers = {names.HDR_MSG_ID: item.msg_id, **item.headers}
                    futures.append(await self._js.publish_async(item.subject, item.payload, headers=headers))
                if len(futures) == 1:
                    return [await futures[0]]
                return list(await asyncio.gather(*futures))
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            for fut in futures:
                fut.cancel()
            raise StoreUnavailable(f"JetStream did not acknowledge: {type(exc).__name__}") from exc

    async def get_msg(self, stream: str, seq: int) -> StoredMsg | None:
        """Message `seq` of `stream`, or None when it is not there (never stored, or expired)."""
        with mapped(f"{stream}: get message"):
            try:
                msg = await self._js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                return None
        return StoredMsg(seq, msg.subject or "", msg.data or b"", dict(msg.headers or {}))

    async def scan(self, stream: str, subject: str, since: datetime,
                   idle: float = 1.0) -> AsyncGenerator[StoredMsg, None]:
        """Every message of `subject` stored since `since`, in order, until the last one (or
        until none arrives for `idle` seconds). Use with `contextlib.aclosing`."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                opt_start_time=since.astimezone(UTC),
                                inactive_threshold=30.0)
        with mapped(f"{stream}: scan"):
            sub = await self._js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
        try:
            while True:
                with mapped(f"{stream}: scan"):
                    try:
                        msg = await sub.next_msg(timeout=idle)
                    except nats.errors.TimeoutError:
                        return
                yield StoredMsg(msg.metadata.sequence.stream, msg.subject, msg.data, dict(msg.headers or {}),
                                msg.metadata.num_pending)
                if msg.metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await sub.unsubscribe()

    async def subscribe(self, subject: str, handler: Callable[[StoredMsg], Awaitable[None]]) -> None:
        """Core NATS delivery of `subject` to `handler` (seq 0: not read from a stream), for
        the life of the connection; for displays such as the demo, never for processing."""

        async def deliver(msg: Msg) -> None:
            await handler(StoredMsg(0, msg.subject, msg.data, dict(msg.headers or {})))

        with mapped(f"subscribe {subject}"):
            await self._nc.subscribe(subject, cb=deliver)

    READ_BATCH = 256

    async def read(
        self, stream: str, subject: str, after: int = 0, limit: int = 100
    ) -> list[tuple[int, bytes, dict[str, str]]]:
        """Up to `limit` messages of `subject` with sequence > after: (seq, data, headers).

        A pull consumer fetched in batches asks the server for exactly what is wanted (a push
        consumer would stream the whole rest of the subject at the client), and the loop yields
        between batches, so a large read does not hold up MLLP acknowledgements.
        """
        if limit <= 0:
            return []
        with mapped(f"{stream}: read"):
            return await self._read(stream, subject, after, limit)

    async def _read(
        self, stream: str, subject: str, after: int, limit: int
    ) -> list[tuple[int, bytes, dict[str, str]]]:
        try:
            info = await self._js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        if info.state.messages == 0 or after >= info.state.last_seq:
            return []
        name = f"ficus-read-{secrets.token_hex(8)}"
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(after + 1, info.state.first_seq),
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=10.0,
            mem_storage=True,
            num_replicas=1,
        )
        consumer = await self._js.add_consumer(stream, config)
        msgs = await self._drain(stream, name, consumer.num_pending, limit)
        return [(msg.metadata.sequence.stream, msg.data, dict(msg.headers or {})) for msg in msgs]

    async def _drain(self, stream: str, name: str, pending: int | None, limit: int) -> list[Msg]:
        """Up to `limit` messages of the ephemeral consumer `name` (made with `pending` waiting),
        fetched in batches that yield to the loop between them; the consumer is deleted after."""
        out: list[Msg] = []
        # Never ask for more than exist: a fetch for absent messages waits for its timeout.
        wanted = min(limit, pending or 0)
        if wanted == 0:
            await self._delete_consumer(stream, name)
            return out
        sub = await self._js.pull_subscribe_bind(name, stream=stream)
        try:
            while len(out) < wanted:
                try:
                    msgs = await sub.fetch(min(wanted - len(out), self.READ_BATCH), timeout=2.0)
                except nats.errors.TimeoutError:
                    break  # expired meanwhile (retention): return what there is
                out += msgs
                if not msgs or msgs[-1].metadata.num_pending == 0:
                    break
                await asyncio.sleep(0)
        finally:
            await sub.unsubscribe()
            await self._delete_consumer(stream, name)
        return out[:limit]

    async def page(self, stream: str, subject: str, *, start_seq: int = 0, start_time: datetime | None = None,
                   limit: int = 100) -> list[StoredMsg]:
        """Up to `limit` messages of `subject` from `start_seq` (or stored at/after `start_time`), in
        order: one filtered consumer positioned by the server, so a page costs O(limit) whatever
        the stream holds (the consumer API, router/events_api.py)."""
        if limit <= 0:
            return []
        # Pages share the event loop with the listeners: a few at a time, the rest wait their turn
        # (what one client may ask is bounded by api.rate_limit_per_minute).
        async with self._page_slots:
            with mapped(f"{stream}: page"):
                return await self._page(stream, subject, start_seq, start_time, limit)

    async def _page(self, stream: str, subject: str, start_seq: int, start_time: datetime | None,
                    limit: int) -> list[StoredMsg]:
        direct = await direct_page(self._nc, stream, subject, start_seq, start_time, limit)
        if direct is not None:
            return direct
        return await self._page_by_consumer(stream, subject, start_seq, start_time, limit)

    async def _page_by_consumer(self, stream: str, subject: str, start_seq: int, start_time: datetime | None,
                                limit: int) -> list[StoredMsg]:
        name = f"ficus-page-{secrets.token_hex(8)}"
        if start_time is not None and start_seq <= 0:
            position: dict[str, Any] = {"deliver_policy": DeliverPolicy.BY_START_TIME,
                                        "opt_start_time": start_time.astimezone(UTC)}
        else:
            position = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": max(1, start_seq)}
        config = ConsumerConfig(name=name, filter_subject=subject, ack_policy=AckPolicy.NONE,
                                inactive_threshold=10.0, mem_storage=True, num_replicas=1, **position)
        try:
            consumer = await self._js.add_consumer(stream, config)
        except nats.js.errors.NotFoundError:
            return []
        return [_stored(msg) for msg in await self._drain(stream, name, consumer.num_pending, limit)]

    PAGES_AT_ONCE = 2

    async def tail(self, stream: str, subject: str, start_seq: int = 0,
                   start_time: datetime | None = None) -> AsyncGenerator[StoredMsg, None]:
        """Every message of `subject` from `start_seq` (or `start_time`; else only new ones), then
        each new one as it is stored, without end (an ordered consumer: the server pushes, flow
        control and gaps handled by nats-py). Use with `contextlib.aclosing`."""
        if start_seq > 0:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq,
                                    inactive_threshold=30.0)
        elif start_time is not None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                    opt_start_time=start_time.astimezone(UTC), inactive_threshold=30.0)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW, inactive_threshold=30.0)
        with mapped(f"{stream}: tail"):
            sub = await self._js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
        try:
            while True:
                with mapped(f"{stream}: tail"):
                    try:
                        msg = await sub.next_msg(timeout=60.0)
                    except nats.errors.TimeoutError:
                        continue
                yield _stored(msg)
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await sub.unsubscribe()

    async def _delete_consumer(self, stream: str, name: str) -> None:
        # Best effort: the inactive threshold removes it anyway.
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await self._js.delete_consumer(stream, name)

    async def close(self, timeout: float | None = None) -> None:
        """Waits (bounded) for outstanding publishes, then closes the connection.

        Every wait is bounded by `timeout` (default: the publish timeout) in total: a server that
        is away, or frozen with its socket open, cannot hold a shutdown. Publishes still
        unacknowledged then were never acknowledged upstream either, so nothing is lost.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        try:
            await self._close(deadline)
        finally:
            if self.fast is not None:
                await self.fast.stop()

    async def _close(self, deadline: float) -> None:
        if self._nc.is_closed:
            return
        loop = asyncio.get_running_loop()
        if self._nc.is_connected:
            try:
                await asyncio.wait_for(self._js.publish_async_completed(), max(0.0, deadline - loop.time()))
                if self.fast is not None and not await self.fast.wait_idle(max(0.0, deadline - loop.time())):
                    raise TimeoutError
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.warning("nats: closing with publishes still unacknowledged (%s)", type(exc).__name__)
            else:
                # A flush, then close: not nc.drain(), which swallows a cancellation and then
                # waits on a flush of its own (a shutdown past its deadline).
                try:
                    await asyncio.wait_for(self._nc.flush(), max(0.001, deadline - loop.time()))
                except (TimeoutError, nats.errors.Error, OSError) as exc:
                    log.info("nats: final flush not confirmed (%s); closing", type(exc).__name__)
        # Nothing to wait for while NATS is away; close() itself writes what is buffered and
        # waits for the socket, so it is bounded too and abandoned past the deadline.
        closer = asyncio.ensure_future(self._close_quietly())
        done, _ = await asyncio.wait({closer}, timeout=max(0.5, deadline - loop.time()))
        if not done:
            closer.cancel()
            log.warning("nats: the connection did not close in time; abandoned")

    async def _close_quietly(self) -> None:
        try:
            await self._nc.close()
        except (nats.errors.Error, OSError) as exc:
            log.warning("nats: close: %s", type(exc).__name__)


def _stored(msg: Msg) -> StoredMsg:
    meta = msg.metadata
    return StoredMsg(meta.sequence.stream, msg.subject, msg.data, dict(msg.headers or {}), meta.num_pending,
                     meta.timestamp)
