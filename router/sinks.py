"""Push delivery: each `[[sinks]]` entry POSTs canonical events to a receiver as CloudEvents.

Each sink reads its own durable JetStream pull consumer (`ficus-sink-<name>`, filtered by
subject from its type prefixes) on the live or the shadow stream, so its position survives
a restart and is shared by every instance. An event is acknowledged only once the receiver
answered 2xx, or once it has been dead-lettered: at least once, and the receiver drops
repeats by `Idempotency-Key` (the event id). Requests are structured-mode CloudEvents
(`application/cloudevents+json`), or JSON arrays of them (`application/cloudevents-batch+json`),
signed per Standard Webhooks when the sink has a `signing_secret`.

The order of every business key is kept (`business_key`: the claim, else the account, else
the encounter): each key's events go one after the other in stream order, different keys at
the same time, at most `max_in_flight` requests together (a batch sink sends one batch at a
time, so stream order). A failed request is retried with exponential backoff and full jitter, honouring
`Retry-After` on 429 and 503; a 4xx other than 408, 425 and 429 is final and dead-letters the
event at once, as does a failure that lasts past `retry.max_age_seconds`. Dead letters go to
`dlq.sink.<name>` (kind "undeliverable", unit = the event id, the last status in the reason).

A new consumer starts at the events stored from then on (`DeliverPolicy.NEW`): configuring a
sink does not replay a month of history into the receiver.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from standardwebhooks.webhooks import Webhook

from canonical.subjects import CANONICAL_PREFIX, SHADOW_PREFIX
from protocols.backoff import Backoff
from router import dlq, keyindex, names
from router.config import SinkConfig
from router.sink_auth import SinkAuth, TokenError
from router.store import Store, StoreError
from router.store.pull import Held, PullConsumer
from router.tracing import annotate, outbound, traced_delivery

log = logging.getLogger("ficus.sinks")

SINGLE_TYPE = "application/cloudevents+json"
BATCH_TYPE = "application/cloudevents-batch+json"
RETRYABLE_4XX = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
RETRY_AFTER_MAX = 3600.0
"""A Retry-After longer than this is not believed (capped)."""
FETCH_WAIT = 1.0
KV_SINKS = "ficus-sinks"
CONTROL_SECONDS = 1.0
"""How often a sink reads its control (pause, replay) and its lag."""
KEY_FIELDS = (("payer_claim_control_number", "claim"), ("account_number", "account"), ("encounter_number", "encounter"))
"""Where an event's business key is, in order of preference: data field, key kind."""


def consumer_name(sink: str) -> str:
    return f"ficus-sink-{sink}"


def dlq_interface(sink: str) -> str:
    """The dead letters' `interface`: `sink.<name>`, so they go to `dlq.sink.<name>`."""
    return f"sink.{sink}"


def subject_filters(cfg: SinkConfig) -> list[str]:
    """The consumer's subject filters: one per type prefix (a version is checked per event)."""
    base = CANONICAL_PREFIX if cfg.events == "live" else SHADOW_PREFIX
    if not cfg.filter.types:
        return [f"{base}.>"]
    out: list[str] = []
    for prefix in cfg.filter.types:
        parts = prefix.split(".")[2:5]  # domain, entity, action: the subject's tokens
        subject = ".".join([base, *parts])
        out.append(subject if len(parts) == 3 else f"{subject}.>")
    # Overlapping filters are refused by the server: keep the widest.
    return sorted({s for s in out if not any(o != s and o.endswith(".>") and s.startswith(o[:-1]) for o in out)})


def wanted(cfg: SinkConfig, event: dict[str, object], interface: str | None) -> bool:
    """The in-process part of the filter: full types (with a version), interfaces, facilities."""
    f = cfg.filter
    etype = str(event.get("type", ""))
    if f.types and not any(etype == t or etype.startswith(t + ".") for t in f.types):
        return False
    if f.interfaces and (interface or event.get("ficusinterface")) not in f.interfaces:
        return False
    return not f.facilities or event.get("ficusfacility") in f.facilities


def business_key(event: dict[str, object]) -> str:
    """What a receiver needs in order: the claim (payer claim control number), else the
    account, else the encounter, from the event's data; an event with none of them (a
    remittance's header) is ordered with the other events of its raw unit."""
    data = event.get("data")
    if isinstance(data, dict):
        for name, kind in KEY_FIELDS:
            value = data.get(name)
            if value not in (None, ""):
                return f"{kind}:{value}"
    return f"unit:{event.get('ficusraw') or event.get('id')}"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - (time.time() if now is None else now)), RETRY_AFTER_MAX)


@dataclass(frozen=True)
class Attempt:
    """What one request came to: `status` 0 when no answer came (`reason` says why)."""

    status: int
    reason: str
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def final(self) -> bool:
        """A refusal trying again will not change."""
        return 400 <= self.status < 500 and self.status not in RETRYABLE_4XX


LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class SinkStatus:
    """Counters of one sink since start (the API and metrics read them)."""

    delivered: int = 0
    attempts: int = 0
    failures: int = 0
    dead_lettered: int = 0
    last_delivered_at: str | None = None
    last_error: str | None = None
    token_fetches: int = 0
    lag: int | None = None
    """Events stored and not yet acknowledged (the consumer's pending + unacknowledged), refreshed every second."""
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        """One answered request's latency, into the histogram."""
        index = next((i for i, edge in enumerate(LATENCY_BUCKETS) if seconds <= edge), len(LATENCY_BUCKETS))
        self.latency_counts[index] += 1
        self.latency_sum += seconds


@dataclass(frozen=True)
class Control:
    """What operators asked of a sink, kept in KV `ficus-sinks` (key = sink name) for every instance."""

    paused: bool = False
    by: str | None = None
    at: str | None = None
    replay_since: str | None = None
    replay_token: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Control:
        raw = json.loads(data) if data else {}
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


async def control_of(store: Store, name: str) -> Control:
    entry = await (await store.kv(KV_SINKS, history=5)).get(name)
    return Control() if entry is None or not entry.value else Control.from_json(entry.value)


async def set_control(store: Store, name: str, control: Control) -> None:
    """Stores an operator's change; every instance's sink picks it up within CONTROL_SECONDS."""
    await (await store.kv(KV_SINKS, history=5)).put(name, control.to_json())


class Sink:
    """One running sink: its consumer loop, its HTTP session, its counters."""

    def __init__(self, cfg: SinkConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.status = SinkStatus()
        self._webhook = Webhook(cfg.signing_secret) if cfg.signing_secret else None
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._auth: SinkAuth | None = None
        self._task: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(cfg.max_in_flight)
        """Requests in flight across business keys."""
        self._room = asyncio.Event()
        self._held: dict[int, Held] = {}
        """Fetched and not yet acknowledged, by stream sequence."""
        self._queues: dict[str, collections.deque[tuple[Held, dict[str, object]]]] = {}
        self._lanes: dict[str, asyncio.Task[None]] = {}
        """One task per business key with events waiting."""
        self.control = Control()
        self._checked = 0.0
        stream = names.STREAM_CANONICAL if cfg.events == "live" else names.STREAM_SHADOW
        self.consumer = PullConsumer(store, stream, consumer_name(cfg.name))

    @property
    def window(self) -> int:
        """Events held (fetched, not yet acknowledged) at most: the consumer's max_ack_pending."""
        return max(self.cfg.batch_size, self.cfg.max_in_flight * 16, 64)

    @property
    def ack_wait(self) -> float:
        """Held events are kept alive every third of it (`_keep_held`), in flight or waiting."""
        return self.cfg.timeout_seconds * 2 + 2

    async def start(self) -> None:
        """Creates (or updates) the durable consumer, then runs the delivery loop in a task."""
        await self.consumer.ensure(subject_filters(self.cfg), ack_wait=self.ack_wait, max_ack_pending=self.window)
        if await self.consumer.restart_after_crash(subject_filters(self.cfg), ack_wait=self.ack_wait,
                                                   max_ack_pending=self.window):
            log.info("sink %s: events left unacknowledged by a stopped instance are delivered again, in order",
                     self.cfg.name)
        # A replay asked before this start has been done (or its consumer already made): not again.
        self.control = await control_of(self.store, self.cfg.name)
        self._session = aiohttp.ClientSession()
        self._auth = SinkAuth(self.cfg.auth, self._session, self.cfg.timeout_seconds)
        self._slots = asyncio.Semaphore(self.cfg.max_in_flight)
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.cfg.name}")
        self._keepalive = asyncio.create_task(self._keep_held(), name=f"sink-{self.cfg.name}-keepalive")

    async def stop(self) -> None:
        """Stops fetching; requests in flight finish, events not delivered are handed back (nak)."""
        self._stopping.set()
        self._room.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lanes:
            await asyncio.gather(*self._lanes.values(), return_exceptions=True)
        if self._keepalive is not None:
            self._keepalive.cancel()
        with contextlib.suppress(StoreError):
            for msg in list(self._held.values()):
                await msg.nak()
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        pause = Backoff(0.5, 10)
        while not self._stopping.is_set():
            try:
                await self._check_control()
                if self.control.paused:
                    await self._sleep(CONTROL_SECONDS)
                    continue
                room = self.window - len(self._held)
                if room <= 0:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), CONTROL_SECONDS)
                    continue
                size = min(room, self.cfg.batch_size if self.cfg.mode == "batch" else room)
                msgs = await self.consumer.fetch(size, timeout=FETCH_WAIT)
                if msgs:
                    await self._handle(msgs)
                pause.reset()
            except StoreError as exc:
                # A lost connection, a dead letter not stored: what was not acknowledged comes again.
                log.warning("sink %s: %s; retrying", self.cfg.name, exc.reason)
                await self._sleep(pause.next_delay())
        with contextlib.suppress(StoreError):
            await self.consumer.close()

    async def _check_control(self) -> None:
        """At most every CONTROL_SECONDS: reads the sink's control and its lag; starts a replay asked for."""
        now = time.monotonic()
        if now - self._checked < CONTROL_SECONDS:
            return
        self._checked = now
        control = await control_of(self.store, self.cfg.name)
        if control.replay_token and control.replay_token != self.control.replay_token and control.replay_since:
            await self._replay(datetime.fromisoformat(control.replay_since))
        self.control = control
        self.status.lag = await self.consumer.pending()

    async def _replay(self, since: datetime) -> None:
        """Drops what is held (the receiver may see it again) and makes the consumer again from `since`."""
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        self._lanes.clear()
        self._queues.clear()
        self._held.clear()
        await self.consumer.ensure(subject_filters(self.cfg), ack_wait=self.ack_wait, max_ack_pending=self.window,
                                   since=since)
        log.info("sink %s: replaying from %s", self.cfg.name, since.isoformat())

    async def redeliver(self, letter: dlq.DeadLetter) -> Attempt:
        """Sends a dead-lettered event once more (one attempt, outside the consumer: its place
        is unchanged); LookupError when the event is no longer stored or the letter is not this sink's."""
        stream, _, seq = (letter.locator or "").partition("/")
        if letter.interface != dlq_interface(self.cfg.name) or stream != self.consumer.stream or not seq.isdigit():
            raise LookupError("not a dead letter of this sink")
        msg = await self.store.get_msg(stream, int(seq))
        if msg is None:
            raise LookupError("the event is no longer stored (retention)")
        if self.cfg.mode == "batch":
            body, ctype = b"[" + msg.data + b"]", BATCH_TYPE
        else:
            body, ctype = msg.data, SINGLE_TYPE
        result = await self._post(body, letter.unit, ctype)
        if result.ok:
            self.status.delivered += 1
            self.status.last_delivered_at = dlq.now_iso()
            if self.store.cfg.key_index:
                with contextlib.suppress(StoreError):
                    await self.store.publish([keyindex.delivery(self.cfg.name, letter.unit, result.status, 1,
                                                                int(seq))])
        return result

    def view(self) -> dict[str, object]:
        """The sink's status for the API (no credentials: the URL without user info or query)."""
        url = urlsplit(self.cfg.url)
        st = self.status
        return {"name": self.cfg.name, "url": f"{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}"
                f"{url.path}", "events": self.cfg.events, "mode": self.cfg.mode, "paused": self.control.paused,
                "paused_by": self.control.by if self.control.paused else None, "lag": st.lag,
                "in_flight": len(self._held), "delivered": st.delivered, "attempts": st.attempts,
                "failures": st.failures, "dead_lettered": st.dead_lettered,
                "last_delivered_at": st.last_delivered_at, "last_error": st.last_error,
                "replay_since": self.control.replay_since}

    async def _handle(self, msgs: list[Held]) -> None:
        chosen: list[tuple[Held, dict[str, object]]] = []
        for msg in msgs:
            if msg.seq in self._held:
                continue  # delivered again while still held here (ack_wait passed): the held one goes on
            try:
                event = json.loads(msg.data)
            except ValueError:
                event = None
            if not isinstance(event, dict):  # not a canonical event: nothing any receiver could use
                log.warning("sink %s: message %d is not a JSON event; skipped", self.cfg.name, msg.seq)
                await msg.ack()
            elif wanted(self.cfg, event, msg.headers.get(names.HDR_INTERFACE)):
                chosen.append((msg, event))
                self._held[msg.seq] = msg
            else:
                await msg.ack()
        if self.cfg.mode == "batch":
            # One request at a time: a batch holds every key's events in stream order.
            if chosen:
                await self._delivered(chosen, await self._deliver(chosen))
            return
        for msg, event in chosen:
            key = business_key(event)
            self._queues.setdefault(key, collections.deque()).append((msg, event))
            if key not in self._lanes:
                self._lanes[key] = asyncio.create_task(self._lane(key), name=f"sink-{self.cfg.name}-lane")

    async def _lane(self, key: str) -> None:
        """Delivers one business key's events one after the other, in stream order."""
        queue = self._queues[key]
        pause = Backoff(0.5, 10)
        try:
            while queue and not self._stopping.is_set():
                item = queue[0]
                try:
                    done = await self._deliver([item])
                    await self._delivered([item], done)
                except StoreError as exc:  # an ack or a dead letter not stored: the same event again
                    log.warning("sink %s: %s; retrying", self.cfg.name, exc.reason)
                    await self._sleep(pause.next_delay())
                    continue
                if not done:
                    return  # stopping
                queue.popleft()
        finally:
            if not queue or self._stopping.is_set():
                self._queues.pop(key, None)
                self._lanes.pop(key, None)

    async def _delivered(self, items: list[tuple[Held, dict[str, object]]], done: bool) -> None:
        """Acknowledges what was delivered or dead-lettered, and makes room for more."""
        if not done:
            return
        for msg, _ in items:
            await msg.ack()
            self._held.pop(msg.seq, None)
        self._room.set()

    async def _keep_held(self) -> None:
        """Keeps every held event from being delivered again while it waits its turn or its retry."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            with contextlib.suppress(StoreError):
                for msg in list(self._held.values()):
                    await msg.in_progress()

    @traced_delivery("sink delivery", lambda self, batch: (
        [str(e["traceparent"]) if "traceparent" in e else None for _, e in batch],
        {"sink": self.cfg.name, "events": len(batch), "event_id": str(batch[0][1].get("id", ""))}))
    async def _deliver(self, batch: list[tuple[Held, dict[str, object]]]) -> bool:
        """Sends one request until it is accepted (True), dead-lettered (True) or the sink stops (False)."""
        msgs = [m for m, _ in batch]
        ids = [str(e.get("id", "")) for _, e in batch]
        if self.cfg.mode == "batch":
            body = b"[" + b",".join(m.data for m in msgs) + b"]"
            key = "batch-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]
            ctype = BATCH_TYPE
        else:
            body, key, ctype = msgs[0].data, ids[0], SINGLE_TYPE
        backoff = Backoff(self.cfg.retry.backoff_base_seconds, self.cfg.retry.backoff_max_seconds)
        first = time.monotonic()
        tries = 0
        while True:
            async with self._slots:
                result = await self._post(body, key, ctype)
            tries += 1
            if result.ok:
                self.status.delivered += len(msgs)
                self.status.last_delivered_at = dlq.now_iso()
                await self._note_delivery(batch, result.status, tries)
                return True
            self.status.failures += 1
            self.status.last_error = result.reason
            if result.final or time.monotonic() - first >= self.cfg.retry.max_age_seconds:
                await self._dead_letter(batch, result)
                await self._note_delivery(batch, result.status, tries)
                return True
            delay = backoff.next_delay()
            if result.status in RETRY_AFTER_STATUSES and result.retry_after is not None:
                delay = max(delay, result.retry_after)
            delay = min(delay, max(0.0, self.cfg.retry.max_age_seconds - (time.monotonic() - first)))
            if await self._sleep(delay):
                return False

    async def _note_delivery(self, batch: list[tuple[Held, dict[str, object]]], status: int, tries: int) -> None:
        """Records what a request came to per event (router/keyindex.py), for the message browser:
        one publish per request, best effort (a record lost must not send the events again)."""
        if not self.store.cfg.key_index:
            return
        items = [keyindex.delivery(self.cfg.name, str(event.get("id", "")), status, tries, msg.seq)
                 for msg, event in batch]
        try:
            await self.store.publish(items)
        except StoreError as exc:
            log.warning("sink %s: delivery record not stored: %s", self.cfg.name, exc.reason)

    async def _sleep(self, seconds: float) -> bool:
        """Waits `seconds` or until the sink stops; True when it is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()

    async def _post(self, body: bytes, key: str, ctype: str) -> Attempt:
        assert self._session is not None and self._auth is not None
        self.status.attempts += 1
        headers = {"Content-Type": ctype, "Idempotency-Key": key}
        trace = outbound()
        if trace is not None:  # the delivery span's context (W3C trace context), for the receiver
            headers["traceparent"] = trace
        if self._webhook is not None:
            now = datetime.now(UTC)
            headers["webhook-id"] = key
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            headers["webhook-signature"] = self._webhook.sign(key, now, body.decode())
        try:
            headers.update(await self._auth.header())
        except TokenError as exc:
            return Attempt(0, str(exc))
        finally:
            self.status.token_fetches = self._auth.fetched
        started = time.monotonic()
        try:
            async with self._session.post(self.cfg.url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_seconds)) as resp:
                await resp.read()
                status = resp.status
                after = retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            return Attempt(0, f"no answer within {self.cfg.timeout_seconds:g}s")
        except aiohttp.ClientError as exc:
            return Attempt(0, type(exc).__name__)
        self.status.observe(time.monotonic() - started)
        annotate(status=status)
        if status == 401 and self.cfg.auth is not None and self.cfg.auth.oauth2 is not None:
            self._auth.invalidate()
            return Attempt(status, "401 (token refused; fetching a new one)")  # retried: not final
        return Attempt(status, f"HTTP {status}", after)

    async def _dead_letter(self, batch: list[tuple[Held, dict[str, object]]], result: Attempt) -> None:
        """One dead letter per event; raises StoreError when it could not be stored (the events come again)."""
        letters = []
        for msg, event in batch:
            reason = f"last status {result.status}" if result.status else f"no answer ({result.reason})"
            letter = dlq.DeadLetter(
                interface=dlq_interface(self.cfg.name), kind="undeliverable", reason=reason,
                mode=self.cfg.events, unit=str(event.get("id", "")), raw=str(event.get("ficusraw") or "") or None,
                message_type=str(event.get("type", "")) or None,
                facility=str(event.get("ficusfacility") or "") or None, at=dlq.now_iso(),
                locator=f"{self.consumer.stream}/{msg.seq}")
            letters.append(letter.outgoing(f"{self.cfg.name}|{msg.seq}"))
        await self.store.publish(letters)
        self.status.dead_lettered += len(letters)
        log.warning("sink %s: %d event(s) dead-lettered: %s", self.cfg.name, len(letters), result.reason)


async def redeliver_letter(sinks: tuple[Sink, ...], letter: dlq.DeadLetter) -> Attempt:
    """A sink's dead letter sent again by its sink (the hook `ficus dlq replay ID` needs for
    `sink.<name>` letters); LookupError for an unknown sink or an event no longer stored."""
    for sink in sinks:
        if dlq_interface(sink.cfg.name) == letter.interface:
            return await sink.redeliver(letter)
    raise LookupError("no such sink")


async def start_sinks(configs: list[SinkConfig], store: Store) -> list[Sink]:
    """Starts every sink; a failure stops those already started and raises."""
    started: list[Sink] = []
    try:
        for cfg in configs:
            sink = Sink(cfg, store)
            await sink.start()
            started.append(sink)
    except BaseException:
        await asyncio.gather(*(s.stop() for s in started), return_exceptions=True)
        raise
    return started


class SinkCollector:
    """Prometheus: per sink, its lag, its requests by outcome and their latency."""

    def __init__(self, sinks: tuple[Sink, ...]) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily("ficus_sink_lag", "Events not yet acknowledged by the sink", labels=["sink"])
        attempts = CounterMetricFamily("ficus_sink_attempts", "Requests sent", labels=["sink"])
        failures = CounterMetricFamily("ficus_sink_failures", "Requests not answered 2xx", labels=["sink"])
        delivered = CounterMetricFamily("ficus_sink_delivered", "Events accepted", labels=["sink"])
        dead = CounterMetricFamily("ficus_sink_dead_lettered", "Events dead-lettered", labels=["sink"])
        latency = HistogramMetricFamily("ficus_sink_latency_seconds", "Request latency", labels=["sink"])
        for sink in self._sinks:
            st, name = sink.status, [sink.cfg.name]
            lag.add_metric(name, float(st.lag or 0))
            attempts.add_metric(name, st.attempts)
            failures.add_metric(name, st.failures)
            delivered.add_metric(name, st.delivered)
            dead.add_metric(name, st.dead_lettered)
            running, buckets = 0, []
            for edge, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], st.latency_counts, strict=True):
                running += count
                buckets.append((edge, float(running)))
            latency.add_metric(name, buckets, st.latency_sum)
        yield from (lag, attempts, failures, delivered, dead, latency)
