"""`/metrics` of every worker of `workers = N`, served by worker 1's API.

Worker 1 alone serves the API (router/workers.py), so its `/metrics` showed its own share of
the traffic only: with the kernel spreading MLLP connections over the workers, an operator saw
a half or a third of the messages, errors and dead letters. Each other worker now serves its
metrics registry on a Unix socket of the abstract namespace (no file to clean up after a kill
-9, no path-length limit), named after the supervisor's PID and the worker's number, and
answers only a peer running as the same user (SO_PEERCRED): the socket is reachable by every
local user, unlike a file, so the check is what keeps the counts private. Worker 1's
`/metrics` asks every sibling at scrape time and returns the families of all of them, each
sample labelled ``worker`` (1..N), plus ``ficus_worker_up{worker}`` -- 0 for a worker that did
not answer within ``FETCH_SECONDS`` (restarting, stuck), whose series are then absent, as a
scrape of a down target's are. `sum by (interface)` gives the host's totals; a restarted
worker's counters start from 0 as a restarted process's do (Prometheus' `rate` takes that as
a reset). With one worker nothing changes: no label, no socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

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


async def serve(registry: CollectorRegistry, name: str) -> Callable[[], Awaitable[None]]:
    """Serves ``registry`` on the abstract Unix socket ``name``: a peer of this user that connects
    gets the exposition text and the end of the stream, any other peer the end alone. Returns
    the cleanup. OSError when the name is taken (another process of the same supervisor and
    number). Not HTTP: one local reader, one answer; and uvloop's Unix connections take no
    abstract names, so the reader connects its own socket."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None and peer_uid(sock) == os.getuid():
                writer.write(generate_latest(registry))
                await writer.drain()
        except OSError:
            pass  # the reader gave up (worker 1's scrape timed out)
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


async def fetch(name: str, timeout: float = FETCH_SECONDS) -> str | None:
    """A sibling's metrics text, or None when it does not answer in time (logged at debug:
    a worker restarting is normal, and ``ficus_worker_up`` says so)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(name)  # a local socket: accepted or refused at once, or the timeout
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            try:
                data = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        sock.close()
        log.debug("metrics of %r: %s", name[1:], type(exc).__name__)
        return None
    return data.decode() if data else None


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
    answers: list[Any] = await asyncio.gather(*(fetch(siblings[w]) for w in labels))
    texts: dict[str, str | None] = {"1": generate_latest(own).decode()}
    texts.update(zip(labels, answers, strict=True))
    return merged(texts)


def sibling_sockets(workers: int) -> dict[str, str]:
    """Worker 1's view: the socket of every other worker of its supervisor."""
    return {str(k): socket_name(k) for k in range(2, workers + 1)}
