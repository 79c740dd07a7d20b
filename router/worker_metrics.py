"""The figures of every worker of `workers = N`, served by worker 1's API: `/metrics`, and the
counts of `GET /api/v1/interfaces` and the console's overview (:func:`host_counts`).

Worker 1 alone serves the API (router/workers.py), so it showed its own share of the traffic
only: with the kernel spreading MLLP connections over the workers, an operator saw a half or a
third of the messages, errors and dead letters. Each other worker serves its metrics registry
and its counters on a Unix socket of the abstract namespace (no file to clean up after a kill
-9, no path-length limit), named after the supervisor's PID and the worker's number, and
answers only a peer running as the same user (SO_PEERCRED): the socket is reachable by every
local user, unlike a file, so the check is what keeps the counts private.

Worker 1's `/metrics` asks every sibling at scrape time and returns the families of all of
them, each sample labelled ``worker`` (1..N), plus ``ficus_worker_up{worker}`` -- 0 for a
worker that did not answer within ``FETCH_SECONDS`` (restarting, stuck), whose series are then
absent, as a scrape of a down target's are. `sum by (interface)` gives the host's totals; a
restarted worker's counters start from 0 as a restarted process's do (Prometheus' `rate` takes
that as a reset). The interface list and the overview sum the counters of the workers that
answer. With one worker nothing changes: no label, no socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import fields

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from router.stats import InterfaceStats

log = logging.getLogger("ficus.workers")

FETCH_SECONDS = 2.0
"""How long worker 1's `/metrics` waits for a sibling's metrics."""
LABEL = "worker"
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def socket_name(number: int, supervisor: int | None = None) -> str:
    """The abstract socket worker ``number`` of the supervisor ``supervisor`` (default: this
    process's parent, the supervisor of a worker) serves its metrics on."""
    return f"\0ficus-metrics-{os.getppid() if supervisor is None else supervisor}-{number}"


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a connected Unix socket."""
    _, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return int(uid)


METRICS, COUNTS = b"metrics", b"counts"
"""What a reader asks for, as one line: the exposition text, or the interfaces' counts (JSON)."""


async def serve(registry: CollectorRegistry, counts: Callable[[], Mapping[str, InterfaceStats]],
                name: str) -> Callable[[], Awaitable[None]]:
    """Serves this worker's figures on the abstract Unix socket ``name``: a peer of this user
    sends one line, ``metrics`` (the exposition of ``registry``) or ``counts`` (``counts()``'s
    interfaces as :func:`counts_json`), and gets the answer and the end of the stream; any other
    peer, or any other line, the end alone. Returns the cleanup. OSError when the name is taken
    (another process of the same supervisor and number). Not HTTP: one local reader, one
    answer; and uvloop's Unix connections take no abstract names, so the reader connects its
    own socket."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None and peer_uid(sock) == os.getuid():
                async with asyncio.timeout(FETCH_SECONDS):
                    what = (await reader.readline()).strip()
                if what == METRICS:
                    writer.write(generate_latest(registry))
                elif what == COUNTS:
                    writer.write(counts_json(counts()))
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # the reader gave up (worker 1's scrape timed out) or never asked
        finally:
            writer.close()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
        server = await asyncio.start_unix_server(answer, sock=sock)
    except BaseException:
        sock.close()
        raise

    async def cleanup() -> None:
        server.close()
        await server.wait_closed()

    return cleanup


async def fetch(name: str, what: bytes = METRICS, timeout: float = FETCH_SECONDS) -> bytes | None:
    """A sibling's answer to ``what``, or None when it does not answer in time (logged at
    debug: a worker restarting is normal, and ``ficus_worker_up`` says so)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Never blocking the loop: a Unix socket connects at once, or fails at once -- refused
        # (no such worker) or EAGAIN (its backlog full: a worker that stopped accepting).
        sock.setblocking(False)
        sock.connect(name)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            try:
                writer.write(what + b"\n")
                data = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        sock.close()
        log.debug("%s of %r: %s", what.decode(), name[1:], type(exc).__name__)
        return None
    return data or None


_SUMMED = tuple(f.name for f in fields(InterfaceStats) if f.type in ("int", int))
"""The counters of an interface (summed over the workers); the rest is not shared."""


def counts_json(stats: Mapping[str, InterfaceStats]) -> bytes:
    """What a worker tells worker 1 of its interfaces: counters, last message and last error."""
    return json.dumps({name: {**{k: getattr(st, k) for k in _SUMMED}, "last_message_at": st.last_message_at,
                              "last_error": st.last_error, "last_error_at": st.last_error_at}
                       for name, st in stats.items()}).encode()


def combined(own: Mapping[str, InterfaceStats], answers: list[bytes | None]) -> dict[str, InterfaceStats]:
    """Every worker's counts of each interface as one :class:`InterfaceStats`: counters summed,
    the latest message and error of any worker; parity and latencies are this worker's (not
    summable: parity has its own cluster view, latencies are in `/metrics` per worker)."""
    out: dict[str, InterfaceStats] = {}
    for name, st in own.items():
        total = InterfaceStats(parity=st.parity, ack_latency=st.ack_latency, commit_latency=st.commit_latency)
        for k in _SUMMED:
            setattr(total, k, getattr(st, k))
        total.last_message_at, total.last_error, total.last_error_at = (
            st.last_message_at, st.last_error, st.last_error_at)
        out[name] = total
    for answer in answers:
        if answer is None:
            continue
        for name, theirs in json.loads(answer).items():
            found = out.get(name)
            if found is None:
                continue  # an interface worker 1 does not run (another config version mid-restart)
            for k in _SUMMED:
                setattr(found, k, getattr(found, k) + int(theirs.get(k, 0)))
            at = theirs.get("last_message_at")
            if at is not None and (found.last_message_at is None or at > found.last_message_at):
                found.last_message_at = float(at)
            err_at = theirs.get("last_error_at")
            if err_at is not None and (found.last_error_at is None or err_at > found.last_error_at):
                found.last_error, found.last_error_at = theirs.get("last_error"), float(err_at)
    return out


async def host_counts(own: Mapping[str, InterfaceStats], siblings: Mapping[str, str]) -> dict[str, InterfaceStats]:
    """Worker 1's view of the host: its interfaces' counts summed with every sibling's that
    answers (asked side by side); a sibling that does not answer is left out."""
    answers: list[bytes | None] = list(await asyncio.gather(*(fetch(n, COUNTS) for n in siblings.values())))
    return combined(own, answers)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merged(texts: Mapping[str, str | None]) -> bytes:
    """One exposition of every worker's metrics (``texts``: worker label -> its text, None when it
    did not answer): each family once, its samples labelled ``worker``; ``ficus_worker_up``."""
    families: dict[str, Metric] = {}
    for worker, text in texts.items():
        if text is None:
            continue
        for fam in text_string_to_metric_families(text):
            into = families.get(fam.name)
            if into is None:
                into = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            into.samples.extend(Sample(s.name, {**s.labels, LABEL: worker}, s.value, s.timestamp, s.exemplar)
                                for s in fam.samples)
    up = GaugeMetricFamily("ficus_worker_up", "1 when the worker answered this scrape (workers > 1)",
                           labels=[LABEL])
    for worker, text in texts.items():
        up.add_metric([worker], 0.0 if text is None else 1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), up]))
    return generate_latest(registry)


async def gathered(own: CollectorRegistry, siblings: Mapping[str, str]) -> bytes:
    """Worker 1's `/metrics`: its own registry as worker "1" and each sibling's (``siblings``:
    worker label -> socket name), asked side by side."""
    labels = list(siblings)
    answers: list[bytes | None] = list(await asyncio.gather(*(fetch(siblings[w]) for w in labels)))
    texts: dict[str, str | None] = {"1": generate_latest(own).decode()}
    texts.update((w, None if a is None else a.decode()) for w, a in zip(labels, answers, strict=True))
    return merged(texts)


def sibling_sockets(workers: int) -> dict[str, str]:
    """Worker 1's view: the socket of every other worker of its supervisor."""
    return {str(k): socket_name(k) for k in range(2, workers + 1)}
