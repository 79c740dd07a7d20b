"""Shared fixtures: a real nats-server per test (free port, temp store), real MLLP peers,
the public corpus (skipped with a message when absent), and a service factory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest

from router.config import FicusConfig, parse_config
from router.embedded_nats import EmbeddedNats
from router.service import Service

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def corpus_root() -> Path | None:
    env = os.environ.get("FICUS_CORPUS")
    root = Path(env) if env else REPO.parent / "shared" / "corpus"
    return root if root.is_dir() else None


class Proc:
    """One line of /proc/PID/stat: what the leak check needs."""

    __slots__ = ("pgrp", "pid", "ppid", "start", "state")

    def __init__(self, pid: int, stat: str) -> None:
        fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
        self.pid = pid
        self.state, self.ppid, self.pgrp = fields[0], int(fields[1]), int(fields[2])
        self.start = int(fields[19])  # starttime: with the pid, one process (pids are reused)

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie is dead, just not reaped yet


def process_table() -> dict[int, Proc]:
    """Every process now, read from /proc (psutil is not a dependency)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                table[int(entry)] = Proc(int(entry), Path(f"/proc/{entry}/stat").read_text())
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return table


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def started_by_test(table: dict[int, Proc], before: set[tuple[int, int]], tmp: Path | None) -> list[Proc]:
    """Live processes that did not exist when the test started and are the test's: descendants
    of this process, orphans in its process group (a re-parented grandchild keeps the group), or
    a command line naming the test's tmp directory (a server that detached into its own session).
    The machine's own services (its NATS server, the databases) are none of these."""
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    mine: set[int] = set()
    todo = [me]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in mine:
                mine.add(child)
                todo.append(child)
    group = os.getpgrp()
    tmp_text = str(tmp) if tmp is not None else None
    found = []
    for proc in table.values():
        if proc.pid == me or proc.key in before or not proc.alive:
            continue
        parent = table.get(proc.ppid)
        # In our group with a parent outside it: re-parented (to init or a subreaper), so orphaned
        # by one of ours. A process with its parent in the group belongs to that parent -- perhaps
        # another pytest started by the same script, whose processes are not ours to kill.
        orphan = proc.pgrp == group and (parent is None or parent.pgrp != group)
        if proc.pid in mine or orphan or (tmp_text is not None and tmp_text in cmdline(proc.pid)):
            found.append(proc)
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that leaves a process it started running, after killing it by PID.

    Runs around every test (autouse fixtures are set up first, so torn down last: after the
    test's own fixtures stopped what they started). A process still stopping gets a few seconds.
    """
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    before = {proc.key for proc in process_table().values()}
    yield
    deadline = time.monotonic() + 5
    while (leaked := started_by_test(process_table(), before, tmp)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not leaked:
        return
    names = [f"pid {proc.pid} ({cmdline(proc.pid)[:200]})" for proc in leaked]
    for proc in leaked:
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    pytest.fail(f"the test left {len(leaked)} process(es) running, killed now: {'; '.join(names)}")


@pytest.fixture
def corpus() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    return root


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def make_config(nats_url: str, interfaces: list[dict[str, Any]], **top: Any) -> FicusConfig:
    """A config on loopback with free ports: listeners and API on port 0."""
    ifaces = []
    for iface in interfaces:
        kind = iface.get("kind", "hl7-mllp")
        merged = {"kind": kind, **({"listen": "127.0.0.1:0"} if kind == "hl7-mllp" else {}), **iface}
        ifaces.append(merged)
    data: dict[str, Any] = {
        "state_dir": str(top.pop("state_dir", "/tmp/ficus-test-state")),
        "nats": {"url": nats_url, "publish_timeout_seconds": 2, **top.pop("nats", {})},
        "api": {"listen": "127.0.0.1:0", **top.pop("api", {})},
        "interfaces": ifaces,
        **top,
    }
    return parse_config(data, "test-config")


ServiceFactory = Callable[..., Any]


@pytest.fixture
def service_factory() -> ServiceFactory:
    """`async with service_factory(cfg) as svc:` starts and stops a real Service."""

    @asynccontextmanager
    async def factory(cfg: FicusConfig) -> AsyncIterator[Service]:
        async with Service(cfg) as svc:
            yield svc

    return factory


async def stream_count(url: str, stream: str, subject: str | None = None) -> int:
    """Messages in a stream (optionally on one subject), read from a separate connection."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream, subjects_filter=subject) if subject else await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0
        if subject:
            return int((info.state.subjects or {}).get(subject, 0))
        return int(info.state.messages)
    finally:
        await nc.close()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Polls an (async or sync) predicate until truthy; fails the test on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of `pid` is in the stopped state (T) by now."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return bool(states) and all(s in ("T", "t") for s in states)


async def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP `pid` and wait until all its threads have stopped: kill() only queues the signal,
    and on a busy machine a nats-server thread already running could still answer a request made
    right after it (CI: a publish meant to time out was acknowledged)."""
    os.kill(pid, signal.SIGSTOP)
    await wait_for(lambda: _all_threads_stopped(pid), timeout=timeout, interval=0.01)


# -- the reconciliation ledger (router/ledger.py) ------------------------------------------------


async def _read_all(url: str, stream: str) -> list[tuple[bytes, dict[str, str]]]:
    """Every message of a stream (data, headers), in stream order: the `total` it held when asked."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        total = info.state.messages
        out: list[tuple[bytes, dict[str, str]]] = []
        if total == 0:
            return out
        # An ordered push consumer with a callback: 100,000 messages in about a second. A pull
        # consumer's fetch reads message by message in nats-py (and an ack each) and took 20 s
        # and more for the ledger check of every test that stores that many events.
        done = asyncio.Event()

        async def take(msg: Any) -> None:
            out.append((msg.data, dict(msg.headers or {})))
            if len(out) >= total:
                done.set()

        sub = await js.subscribe(">", stream=stream, ordered_consumer=True, cb=take, pending_msgs_limit=-1)
        try:
            with suppress(TimeoutError):  # what arrived is returned, as a fetch that timed out did
                await asyncio.wait_for(done.wait(), 60)
        finally:
            await sub.unsubscribe()
        return out[:total]
    finally:
        await nc.close()


def _event_money(body: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    """(charges, payments, adjustments) of a stored event, read from its JSON independently of
    router/ledger.py's money_of (the same definitions, another implementation)."""
    kind, data = str(body.get("type", "")), body.get("data") or {}
    if ".revenue.charge." in kind:
        return Decimal(data.get("amount") or 0), Decimal(0), Decimal(0)
    if ".claims.claim.adjudicated." in kind:
        return Decimal(data["charge"]), Decimal(data["paid"]), Decimal(data["adjustment_total"])
    if ".claims.remittance.received." in kind:
        return Decimal(0), Decimal(0), Decimal(data["total_provider_adjustment"])
    return Decimal(0), Decimal(0), Decimal(0)


async def assert_ledger_balances(nats_url: str, *, events_match: bool = True) -> dict[str, Any]:
    """Fails unless, for every interface, day and facility of the ledger, received = published +
    dead-lettered + filtered + duplicates + legacy (money included), every delta is readable, and
    (``events_match``) the events and money stored (live and shadow) for the interface are the
    ledger's published plus replayed ones (stored_vs_ledger). Returns the folded ledger:
    interface -> day -> facility."""
    from router import ledger, names

    folded: dict[str, ledger.Days] = {}
    for data, _ in await _read_all(nats_url, names.STREAM_LEDGER):
        body = json.loads(data)  # strict: an unreadable delta fails here
        assert {"i", "d", "m", "u"} <= body.keys(), body
        ledger.fold([data], folded.setdefault(body["i"], {}))
    problems = [f"{iface} {day} {fac or '-'}: {p}" for iface, days in folded.items()
                for day, rows in days.items() for fac, row in rows.items() for p in row.problems()]
    assert not problems, "ledger does not balance:\n" + "\n".join(problems)
    if events_match:
        stored: dict[str, list[Decimal]] = {}
        for stream in (names.STREAM_CANONICAL, names.STREAM_SHADOW):
            for data, headers in await _read_all(nats_url, stream):
                iface = headers.get(names.HDR_INTERFACE, "?")
                c, p, a = _event_money(json.loads(data))
                acc = stored.setdefault(iface, [Decimal(0)] * 4)
                acc[0] += 1
                acc[1] += c
                acc[2] += p
                acc[3] += a
        mismatches = stored_vs_ledger(stored, folded)
        assert not mismatches, "\n".join(mismatches)
    return folded


def stored_vs_ledger(stored: dict[str, list[Decimal]], folded: dict[str, Any]) -> list[str]:
    """Per interface, where the events and money stored ([events, charges, payments, adjustments])
    differ from the ledger's published plus replayed ones (``folded``: interface -> ledger.Days):
    a replay publishes events again without a reception, under the ledger's ``replayed`` line."""
    from router import ledger

    out: list[str] = []
    for iface in sorted(set(stored) | set(folded)):
        counted = ledger.Tally()
        for rows in folded.get(iface, {}).values():
            for row in rows.values():
                counted.merge(row)
        pub, rep = counted.money["published"], counted.money[ledger.REPLAYED]
        want = [Decimal(counted.events + counted.replayed_events), pub.charges + rep.charges,
                pub.payments + rep.payments, pub.adjustments + rep.adjustments]
        have = stored.get(iface, [Decimal(0)] * 4)
        if have != want:
            out.append(f"{iface}: stored events/charges/payments/adjustments {have} "
                       f"!= ledger's published + replayed {want}")
    return out


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each parallel worker in a process group of its own: the leak check's orphans (processes
        # of our group whose parent left it) are then this worker's, never another worker's.
        os.setpgrp()
    config.addinivalue_line("markers", "ledger_unchecked: an integration test whose ledger is not checked "
                                       "after it (the ledger_balances fixture skips it)")


@pytest.fixture
def ledger_balances(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used ``nats_server``: the ledger balances (assert_ledger_balances).

    Set up before the test's own fixtures (usefixtures), and the server is requested here, so
    it is torn down after this check. Sync on purpose: the check runs on a loop of its own,
    after the test's.
    """
    server: EmbeddedNats | None = None
    if "nats_server" in request.fixturenames and request.node.get_closest_marker("ledger_unchecked") is None:
        server = request.getfixturevalue("nats_server")
    yield
    if server is not None and server.url:
        asyncio.run(assert_ledger_balances(server.url))
