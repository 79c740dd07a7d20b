"""Failover of polling interfaces between two `ficus run` processes on a three-node NATS cluster.

An ODBC interface (PostgreSQL) and a folder interface under load, rows and files arriving
while the test runs: kill -9 the owner, the other instance takes both over within the bound
(`lease_seconds + renew_seconds`, and the TTL rounded up) and every row and every record is
in the canonical stream exactly once. SIGSTOP the owner past its lease, let the other take
over and make progress, SIGCONT the old owner: it writes no checkpoint, publishes nothing,
logs that it stepped down and waits as a standby. Then `ficus leases` and a release, audited,
refused to a viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from router import names
from tests.conftest import wait_for
from tests.ficus_proc import Ficus, csv_folder_interface, free_port
from tests.nats_cluster import NatsCluster, nats_cluster
from tests.odbc_db import UsageTable, usage_table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parent.parent
LEASE, RENEW = 3, 1
BOUND = LEASE + RENEW + 1.0
"""Takeover bound: lease + renew, and the per-key TTL rounded up to whole seconds."""
SLACK = 1.0
"""What the test adds to observe it (HTTP polls of /api/v1/leases on a loaded 2-core machine)."""
ODBC, FILES = "erp-usage", "billing"
TOKENS = {"viewer": "tok-viewer-" + "v" * 24, "operator": "tok-operator-" + "o" * 24, "admin": "tok-admin-" + "a" * 24}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"


def config(tmp: Path, name: str, url: str, api_port: int, db: UsageTable) -> Path:
    odbc = db.interface(ODBC, poll_seconds=0.2, batch_size=200)
    clients = "\n".join(
        f'[[api.clients]]\nname = "{role}-client"\nrole = "{role}"\n'
        f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"' for role, token in TOKENS.items())
    (tmp / "in").mkdir(exist_ok=True)
    conf = tmp / f"{name}.toml"
    conf.write_text(f"""
state_dir = "{tmp / name}"
log_level = "INFO"
shutdown_timeout_seconds = 10
[nats]
url = "{url}"
replicas = 3
publish_timeout_seconds = 5
[api]
listen = "127.0.0.1:{api_port}"
{clients}
[cluster]
instance = "{name}"
lease_seconds = {LEASE}
renew_seconds = {RENEW}
[[interfaces]]
{chr(10).join(f"{k} = {_toml(v)}" for k, v in odbc.items())}
{csv_folder_interface(FILES, tmp)}""")
    return conf


class Load:
    """Rows into the table and CSV files into the folder, until stopped (a thread each)."""

    def __init__(self, db: UsageTable, folder: Path) -> None:
        self.db, self.folder = db, folder
        self.rows = self.records = self.files = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._rows), threading.Thread(target=self._files)]

    def _rows(self) -> None:
        while not self.stopping.wait(0.05):
            self.db.insert(10)
            self.rows += 10

    def _files(self) -> None:
        self.folder.mkdir(exist_ok=True)
        while not self.stopping.wait(0.3):
            part = self.folder / f"batch-{self.files:04d}.part"
            with part.open("w") as fh:
                fh.write("TXN_ID,TXN_TYPE,SERVICE_DATE,POST_DATE,ACCOUNT,ENCOUNTER,CHARGE_CODE,CPT,QTY,AMOUNT,DEPT,"
                         "FACILITY\n")
                for i in range(50):
                    fh.write(f"T-{self.files:04d}-{i:03d},CG,01/05/2024,01/06/2024,ACC-{i},ENC-{i},99213,99213,1,"
                             f"{i + 10}.25,CLINIC,NORTH\n")
            part.rename(part.with_suffix(".csv"))  # complete = "rename"
            self.files += 1
            self.records += 50

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()


@contextlib.asynccontextmanager
async def instances(tmp: Path, cluster: NatsCluster, db: UsageTable, *names_: str) -> AsyncIterator[list[Ficus]]:
    procs = []
    for name in names_:
        port = free_port()
        procs.append(Ficus(config(tmp, name, cluster.url, port, db), port, tmp / f"{name}.log"))
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.proc.pid, signal.SIGCONT)
                    proc.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.proc.wait(), 20)
                except TimeoutError:
                    proc.kill_if_running()
                    await proc.proc.wait()


async def api(proc: Ficus, method: str, path: str, role: str = "admin", body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
            method, f"http://127.0.0.1:{proc.api_port}{path}", json=body,
            headers={"Authorization": f"Bearer {TOKENS[role]}"}, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status, await resp.json()


async def held_here(proc: Ficus) -> set[str]:
    try:
        status, answer = await api(proc, "GET", "/api/v1/leases", "viewer")
    except (aiohttp.ClientError, TimeoutError):
        return set()
    return {lease["interface"] for lease in answer["leases"] if lease["here"]} if status == 200 else set()


async def counts(proc: Ficus) -> dict[str, dict[str, int]]:
    _, answer = await api(proc, "GET", "/api/v1/interfaces", "viewer")
    return {i["name"]: i["counts"] for i in answer["interfaces"]}


async def canonical_ids(url: str) -> tuple[int, set[str]]:
    """Events stored in the canonical stream, and their distinct ids."""
    nc = await nats.connect(url.split(","))
    try:
        js = nc.jetstream()
        total = (await js.stream_info(names.STREAM_CANONICAL)).state.messages
        ids: set[str] = set()
        if total:
            done = asyncio.Event()

            async def take(msg: Any) -> None:
                ids.add(json.loads(msg.data)["id"])
                if msg.metadata.num_pending == 0:
                    done.set()

            sub = await js.subscribe("canonical.>", stream=names.STREAM_CANONICAL, ordered_consumer=True, cb=take)
            await asyncio.wait_for(done.wait(), 60)
            await sub.unsubscribe()
        return int(total), ids
    finally:
        await nc.close()


@pytest.fixture
def db() -> Iterator[UsageTable]:
    with usage_table("postgresql") as table:
        yield table


async def _all_published(url: str, load: Load) -> bool:
    total, _ = await canonical_ids(url)
    return total >= load.rows + load.records


async def test_kill_9_of_the_owner_the_other_takes_over_within_the_bound_and_publishes_each_once(
    db: UsageTable, tmp_path: Path
) -> None:
    async with nats_cluster(tmp_path / "nats") as cluster, instances(tmp_path, cluster, db, "node-a", "node-b") as (
            a, b):
        await (await a.start()).wait_ready()
        await wait_for(lambda: _is(held_here(a), {ODBC, FILES}), timeout=30)
        await (await b.start()).wait_ready()
        assert await held_here(b) == set()
        with Load(db, tmp_path / "in") as load:
            await wait_for(lambda: _published_some(a), timeout=60)
            await a.kill9()
            killed = time.monotonic()
            await wait_for(lambda: _is(held_here(b), {ODBC, FILES}), timeout=BOUND + 10, interval=0.1)
            took = time.monotonic() - killed
            rows_at_takeover, files_at_takeover = load.rows, load.files
            # Rows and files keep arriving after the takeover; B publishes, then the load stops.
            await wait_for(lambda: load.rows > rows_at_takeover + 100 and load.files > files_at_takeover + 3,
                           timeout=60)
            await wait_for(lambda: _published_any(b), timeout=60)
        await wait_for(lambda: _all_published(cluster.url, load), timeout=120, interval=0.5)
        total, ids = await canonical_ids(cluster.url)
        assert took <= BOUND + SLACK, f"takeover after {took:.1f}s (bound {BOUND}s)"
        assert (total, len(ids)) == (load.rows + load.records, load.rows + load.records)
        assert load.rows > rows_at_takeover > 0 and load.files > files_at_takeover > 0


async def _is(found: Any, expected: set[str]) -> bool:
    return await found == expected


async def _published_some(proc: Ficus) -> bool:
    now = await counts(proc)
    return now[ODBC]["published"] > 100 and now[FILES]["published"] > 100


async def _published_any(proc: Ficus) -> bool:
    now = await counts(proc)
    return now[ODBC]["published"] > 0 and now[FILES]["published"] > 0


async def checkpoint_writes(url: str, key: str, seen: list[tuple[int, int]], stop: asyncio.Event) -> None:
    """Every write of the interface's checkpoint from now on: (revision, epoch)."""
    nc = await nats.connect(url.split(","))
    try:
        kv = await nc.jetstream().key_value(names.KV_CHECKPOINTS)
        watcher = await kv.watch(key, include_history=False)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                entry = await watcher.updates(timeout=0.5)
                if entry is not None and entry.value:
                    seen.append((entry.revision or 0, json.loads(entry.value).get("epoch", 0)))
        await watcher.stop()
    finally:
        await nc.close()


async def test_a_paused_owner_that_wakes_writes_nothing_and_steps_down(db: UsageTable, tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "nats") as cluster, instances(tmp_path, cluster, db, "node-a", "node-b") as (
            a, b):
        await (await a.start()).wait_ready()
        await wait_for(lambda: _is(held_here(a), {ODBC, FILES}), timeout=30)
        await (await b.start()).wait_ready()
        _, leases = await api(b, "GET", "/api/v1/leases", "viewer")
        epoch_a = {lease["interface"]: lease["epoch"] for lease in leases["leases"]}[ODBC]
        writes: list[tuple[int, int]] = []
        stop_watch = asyncio.Event()
        watch = asyncio.create_task(checkpoint_writes(cluster.url, ODBC, writes, stop_watch))
        try:
            with Load(db, tmp_path / "in") as load:
                await wait_for(lambda: _published_some(a), timeout=60)
                assert a.proc is not None
                os.kill(a.proc.pid, signal.SIGSTOP)
                await wait_for(lambda: _is(held_here(b), {ODBC, FILES}), timeout=BOUND + 10, interval=0.1)
                _, leases = await api(b, "GET", "/api/v1/leases", "viewer")
                epoch_b = {lease["interface"]: lease["epoch"] for lease in leases["leases"]}[ODBC]
                assert epoch_b > epoch_a
                # The new owner makes progress: checkpoints under its epoch.
                await wait_for(lambda: sum(e == epoch_b for _, e in writes) >= 3, timeout=60)
                os.kill(a.proc.pid, signal.SIGCONT)
                await wait_for(lambda: "stepped down" in (tmp_path / "node-a.log").read_text(), timeout=30)
                after_wake = await counts(a)
                marker = sum(e == epoch_b for _, e in writes)
                await wait_for(lambda: sum(e == epoch_b for _, e in writes) >= marker + 3, timeout=60)
            await wait_for(lambda: _all_published(cluster.url, load), timeout=120, interval=0.5)
            # The last checkpoint write is seen by the watch too.
            await wait_for(lambda: _stable(b), timeout=30)
        finally:
            stop_watch.set()
            await watch
        first_b = next(i for i, (_, e) in enumerate(writes) if e == epoch_b)
        assert all(e == epoch_b for _, e in writes[first_b:]), writes  # nothing of node-a after the takeover
        assert await counts(a) == after_wake  # published and received nothing since it woke
        log = (tmp_path / "node-a.log").read_text()
        assert log.count(f"{ODBC}: lease (epoch {epoch_a}) lost") == 1, log[-3000:]
        assert await held_here(a) == set() and await held_here(b) == {ODBC, FILES}
        total, ids = await canonical_ids(cluster.url)
        assert (total, len(ids)) == (load.rows + load.records, load.rows + load.records)


async def _stable(proc: Ficus) -> bool:
    first = await counts(proc)
    await asyncio.sleep(0.5)
    return await counts(proc) == first


async def test_ficus_leases_and_release_audited_a_viewer_refused(db: UsageTable, tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "nats") as cluster, instances(tmp_path, cluster, db, "node-a", "node-b") as (
            a, b):
        await (await a.start()).wait_ready()
        await wait_for(lambda: _is(held_here(a), {ODBC, FILES}), timeout=30)
        await (await b.start()).wait_ready()
        table = _cli(a, "viewer", "leases")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["INTERFACE", "OWNER", "EPOCH", "EXPIRES", "IN"]
        assert any(line.split()[:3] == [ODBC, "node-a", "*"] for line in lines), table.stdout
        status, _ = await api(b, "POST", f"/api/v1/leases/{FILES}/release", "viewer", {"reason": "CHG-1"})
        assert status == 403
        status, _ = await api(b, "POST", f"/api/v1/leases/{FILES}/release", "operator", {})
        assert status == 400  # the reason is required
        released = _cli(b, "operator", "leases", "release", FILES, "--reason", "CHG-42 patch node-a")
        assert released.returncode == 0, released.stderr
        assert "released from node-a" in released.stdout
        # node-a steps down at its next renewal; node-b takes it; node-a does not take it back.
        await wait_for(lambda: _is(held_here(b), {FILES}), timeout=BOUND + 10, interval=0.1)
        assert await held_here(a) == {ODBC}
        # node-a learns it at its next renew: from the released record, or from node-b's if node-b
        # took the interface over first (both are one step-down line).
        def stepped_down() -> bool:
            log_a = (tmp_path / "node-a.log").read_text()
            return f"{FILES}: lease" in log_a and (
                "released by operator-client" in log_a or "taken over by node-b" in log_a)

        await wait_for(stepped_down, timeout=RENEW * 5)
        _, audit = await api(a, "GET", "/api/v1/audit?action=lease_release", "admin")
        results = [(r["actor"], r["result"], r["status"], r["interface"]) for r in audit["records"]]
        assert ("viewer-client", "refused", 403, FILES) in results
        assert ("operator-client", "started", None, FILES) in results
        assert ("operator-client", "ok", 200, FILES) in results
        ok = next(r for r in audit["records"] if r["result"] == "ok")
        assert ok["target"]["reason"] == "CHG-42 patch node-a" and ok["target"]["owner"] == "node-a"
        status, _ = await api(a, "POST", "/api/v1/leases/his-adt/release", "operator", {"reason": "x"})
        assert status == 404


def _cli(proc: Ficus, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args, "--api", f"http://127.0.0.1:{proc.api_port}",
                           "--token", TOKENS[role]], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
