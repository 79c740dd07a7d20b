"""router/worker_metrics.py: worker 1's `/metrics` carries every worker's series.

The merge is a pure function; the socket is served and read for real (an abstract Unix socket),
and a client running as another user is refused by the SO_PEERCRED check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import uuid
from collections.abc import Callable

import pytest
import uvloop
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.stats import InterfaceStats, StatsCollector
from router.worker_metrics import (
    combined,
    counts_json,
    fetch,
    gathered,
    host_counts,
    merged,
    serve,
    sibling_sockets,
    socket_name,
)


def _stats(received: int, acked: int) -> InterfaceStats:
    stats = InterfaceStats()
    stats.received, stats.acked = received, acked
    stats.ack_latency.observe(0.003)
    return stats


def _registry(received: int, acked: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StatsCollector({"his-charges": _stats(received, acked)}))
    return registry


def _counts(received: int, acked: int) -> Callable[[], dict[str, InterfaceStats]]:
    return lambda: {"his-charges": _stats(received, acked)}


def _samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_sample_of_every_worker_once_labelled_with_its_worker() -> None:
    one, two = generate_latest(_registry(5, 4)).decode(), generate_latest(_registry(7, 7)).decode()
    out = _samples(merged({"1": one, "2": two, "3": None}))
    key = (("interface", "his-charges"), ("worker", "1"))
    assert out[("ficus_received_total", key)] == 5.0
    assert out[("ficus_received_total", (("interface", "his-charges"), ("worker", "2")))] == 7.0
    assert out[("ficus_acked_total", (("interface", "his-charges"), ("worker", "2")))] == 7.0
    # Histograms keep their buckets, sum and count per worker.
    assert out[("ficus_mllp_ack_latency_seconds_count", key)] == 1.0
    assert out[("ficus_worker_up", (("worker", "1"),))] == 1.0
    assert out[("ficus_worker_up", (("worker", "3"),))] == 0.0
    # Nothing of worker 3 (it did not answer) but its up gauge; nothing unlabelled.
    assert not [k for k in out if ("worker", "3") in k[1] and k[0] != "ficus_worker_up"]
    assert all(any(label == "worker" for label, _ in labels) for _, labels in out)
    # Each worker's samples are exactly its own exposition's, plus the label.
    for worker, text in (("1", one), ("2", two)):
        own = {(n, tuple(sorted((*labels, ("worker", worker))))): v for (n, labels), v in _samples(text).items()}
        assert {k: v for k, v in out.items() if ("worker", worker) in k[1] and k[0] != "ficus_worker_up"} == own


def test_socket_names_are_per_supervisor_and_worker() -> None:
    assert socket_name(2, 100) != socket_name(2, 101) != socket_name(3, 101)
    assert socket_name(2, 100).startswith("\0")  # abstract: no file left after a kill -9
    assert set(sibling_sockets(3)) == {"2", "3"} and sibling_sockets(1) == {}


def test_served_and_read_under_uvloop_as_ficus_run_does() -> None:
    async def roundtrip() -> str | None:
        name = f"\0ficus-metrics-test-{uuid.uuid4().hex}"
        cleanup = await serve(_registry(3, 3), _counts(3, 3), name)
        try:
            return await fetch(name)
        finally:
            await cleanup()

    text = uvloop.run(roundtrip())
    assert text is not None and _samples(text)[("ficus_received_total", (("interface", "his-charges"),))] == 3.0


async def test_a_sibling_serves_its_registry_to_its_own_user_only() -> None:
    name = f"\0ficus-metrics-test-{uuid.uuid4().hex}"
    cleanup = await serve(_registry(11, 10), _counts(11, 10), name)
    try:
        text = await fetch(name)
        assert text is not None
        assert await fetch(name, b"nonsense") is None
        host = await host_counts({"his-charges": _stats(1, 1)}, {"2": name, "3": name + "-gone"})
        assert (host["his-charges"].received, host["his-charges"].acked) == (12, 11)
        assert _samples(text)[("ficus_received_total", (("interface", "his-charges"),))] == 11.0
        # Worker 1's view: its own registry as worker 1, this one as worker 2, an absent worker 3.
        out = _samples(await gathered(_registry(1, 1), {"2": name, "3": name + "-gone"}))
        assert out[("ficus_received_total", (("interface", "his-charges"), ("worker", "2")))] == 11.0
        assert out[("ficus_received_total", (("interface", "his-charges"), ("worker", "1")))] == 1.0
        assert out[("ficus_worker_up", (("worker", "3"),))] == 0.0
        if os.getuid() != 0:
            pytest.skip("the other-user check needs root to run a client as another user")
        # A client running as nobody reaches the socket (abstract names have no permissions) and gets nothing.
        probe = (  # imports first: the interpreter's own files are not readable by nobody
            "import os, socket, sys\n"
            "sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "sock.connect('\\0' + sys.argv[1])\n"
            "data = b''\n"
            "try:\n"
            "    sock.sendall(b'metrics\\n')\n"
            "    while chunk := sock.recv(65536):\n"
            "        data += chunk\n"
            "except (BrokenPipeError, ConnectionResetError):\n"  # closed on it, the request unread
            "    pass\n"
            "print(len(data), b'received_total' in data)\n"
        )
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", probe, name[1:],
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out_b, err_b = await asyncio.wait_for(child.communicate(), 60)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        assert out_b.decode().split() == ["0", "False"], (out_b, err_b[-2000:])
    finally:
        await cleanup()
    assert await fetch(name, timeout=1.0) is None  # stopped: nothing answers, quickly


def test_counts_are_summed_over_the_workers_and_the_latest_message_and_error_kept() -> None:
    one, two = _stats(5, 4), _stats(7, 6)
    one.last_message_at, two.last_message_at = 100.0, 200.0
    one.error("older")
    two.error("newer")
    two.last_error_at = (one.last_error_at or 0) + 1
    two.in_flight = 2
    host = combined({"his-charges": one}, [counts_json({"his-charges": two, "other": _stats(9, 9)}), None])
    total = host["his-charges"]
    assert (total.received, total.acked, total.errors, total.in_flight) == (12, 10, 2, 2)
    assert total.last_message_at == 200.0 and total.last_error == "newer"
    assert set(host) == {"his-charges"}  # only the interfaces this worker runs
    assert total.parity is one.parity  # not summed: the parity has its own view over instances
    assert one.received == 5  # this worker's own counters are untouched


async def test_a_worker_that_stopped_accepting_costs_worker_1_nothing() -> None:
    """A sibling stuck with its backlog full: the read fails at once instead of blocking worker
    1's event loop (which also answers MLLP) in a blocking connect."""
    name = f"\0ficus-metrics-test-{uuid.uuid4().hex}"
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.bind(name)
    stuck.listen(0)
    queued: list[socket.socket] = []
    try:
        for _ in range(3):  # fill the backlog: nobody accepts
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(name)
            queued.append(client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await fetch(name, timeout=30.0) is None
        assert loop.time() - started < 5.0
    finally:
        for client in queued:
            client.close()
        stuck.close()
