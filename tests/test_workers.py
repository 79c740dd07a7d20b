"""`workers = N` (router/workers.py): one `ficus run` as a supervisor and N worker processes.

Real processes on the embedded nats-server the supervisor starts: MLLP from many connections
spread over both workers (SO_REUSEPORT), each message stored once; a folder interface polled
by exactly one worker (its lease), kill -9 of that worker and every record published once;
SIGTERM stops everything with exit 0; `workers = 1` is one process as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.errors
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router import names
from router.config import ConfigError, parse_config
from tests.conftest import process_table, wait_for
from tests.ficus_proc import Ficus, alive, csv_folder_interface, free_port, servers_on, store_url, wait_gone
from tests.ha import check_exactly_once, dft_messages, raw_control_ids, stored_events
from tests.mllp_client import MllpTestClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parent.parent
FILES = "billing"
LINES = 2
CONNECTIONS, PER_CONNECTION = 16, 12


def config(tmp: Path, *, workers: int, api_port: int, mllp_port: int, folder: bool = False) -> Path:
    files = ""
    if folder:
        (tmp / "in").mkdir(exist_ok=True)
        files = "\n" + csv_folder_interface(FILES, tmp)
    conf = tmp / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp / 'state'}"
log_level = "INFO"
shutdown_timeout_seconds = 20
{f"workers = {workers}" if workers != 1 else ""}
[nats]
url = "embedded"
publish_timeout_seconds = 5
[api]
listen = "127.0.0.1:{api_port}"
[cluster]
instance = "box"
lease_seconds = 3
renew_seconds = 1
[[interfaces]]
name = "his-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp_port}"
mapping = "hl7v2.dft_p03"
route = "modern"
{files}
""")
    return conf


@contextlib.asynccontextmanager
async def running(tmp: Path, **kwargs: Any) -> AsyncIterator[tuple[Ficus, int]]:
    """`ficus run` (the supervisor) ready; yields it and its MLLP port. Killed by PID at the end
    if the test did not stop it, with every process under it and the store's server."""
    api_port, mllp_port = free_port(), free_port()
    ficus = Ficus(config(tmp, api_port=api_port, mllp_port=mllp_port, **kwargs), api_port, tmp / "ficus.log")
    await ficus.start()
    assert ficus.proc is not None
    supervisor = ficus.proc.pid
    seen: set[int] = set()
    try:
        await ficus.wait_ready(90)
        yield ficus, mllp_port
    finally:
        seen.update(descendants(supervisor))
        ficus.kill_if_running()
        for pid in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if ficus.proc.returncode is None:
            await ficus.proc.wait()
        for pid in servers_on(tmp / "state" / "nats"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await wait_gone(list(seen), 10)


async def _metrics(api_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The API's /metrics as {(sample, sorted labels): value}."""
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{api_port}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def descendants(pid: int) -> list[int]:
    table = process_table()
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if table[child].alive:
                found.append(child)
                todo.append(child)
    return found


async def kv_records(url: str, bucket: str) -> dict[str, dict[str, Any]]:
    """Every key of a KV bucket with its JSON value (read from the test's own connection)."""
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        out: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(nats.js.errors.NoKeysError):
            for key in await kv.keys():
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(key)
                    if entry.value:
                        with contextlib.suppress(ValueError):
                            out[key] = json.loads(entry.value)
        return out
    finally:
        await nc.close()


async def workers_up(url: str, count: int) -> dict[str, dict[str, Any]] | None:
    """The registry's worker entries when `count` of them are fresh and ready, else None."""
    found = {name: r for name, r in (await kv_records(url, names.KV_INSTANCES)).items()
             if name.startswith("box-w") and r.get("ready") and time.time() - r["seen_at"] < 3}
    return found if len(found) == count else None


async def send(port: int, messages: list[tuple[str, bytes]]) -> dict[str, bytes]:
    """One connection: each message, its reply."""
    replies = {}
    async with MllpTestClient(port) as client:
        for control_id, payload in messages:
            reply = await client.exchange(payload)
            assert reply is not None, f"no reply for {control_id}"
            replies[control_id] = reply
    return replies


async def test_two_workers_share_the_mllp_port_store_each_message_once_and_stop_cleanly(tmp_path: Path) -> None:
    async with running(tmp_path, workers=2) as (ficus, port):
        assert ficus.proc is not None
        url = store_url(tmp_path / "state" / "nats")
        await wait_for(lambda: workers_up(url, 2), timeout=60, interval=0.2)
        batches = [dft_messages(k + 1, PER_CONNECTION, LINES) for k in range(CONNECTIONS)]
        answers = await asyncio.wait_for(asyncio.gather(*(send(port, batch) for batch in batches)), 120)
        replies = {cid: reply for answer in answers for cid, reply in answer.items()}
        assert len(replies) == CONNECTIONS * PER_CONNECTION
        not_aa = [cid for cid, reply in replies.items() if b"MSA|AA|" not in reply]
        assert not not_aa, f"{len(not_aa)} without AA, e.g. {replies[not_aa[0]][:200]!r}"
        check_exactly_once({cid: 0.0 for cid in replies}, await stored_events(url), await raw_control_ids(url),
                           LINES)

        # Both workers took connections: the registry's per-worker counts add up to every message.
        async def spread() -> dict[str, int] | None:
            entries = await kv_records(url, names.KV_INSTANCES)
            got = {name: int(r.get("received", 0)) for name, r in entries.items() if name.startswith("box-w")}
            return got if sum(got.values()) == len(replies) else None

        per_worker = await wait_for(spread, timeout=30, interval=0.2)
        assert set(per_worker) == {"box-w1", "box-w2"} and all(n > 0 for n in per_worker.values()), per_worker
        # Worker 1's /metrics shows both workers' counts, each under its `worker` label.
        metrics = await _metrics(ficus.api_port)
        for k in ("1", "2"):
            assert metrics[("ficus_received_total", (("interface", "his-charges"), ("worker", k)))] == \
                per_worker[f"box-w{k}"], metrics
            assert metrics[("ficus_acked_total", (("interface", "his-charges"), ("worker", k)))] == \
                per_worker[f"box-w{k}"]
            assert metrics[("ficus_worker_up", (("worker", k),))] == 1.0
        # The API's interface list and the console's overview count the host: both workers.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ficus.api_port}/api/v1/interfaces") as resp:
                listed = {i["name"]: i for i in (await resp.json())["interfaces"]}
            async with http.get(f"http://127.0.0.1:{ficus.api_port}/") as resp:
                overview = await resp.text()
        counts = listed["his-charges"]["counts"]
        assert counts["received"] == counts["acked"] == len(replies), counts
        assert f'data-iface="his-charges" data-field="received">{len(replies)}<' in overview
        # One supervisor, two workers under it, one nats-server (started once, by the supervisor).
        workers = [p for p in descendants(ficus.proc.pid) if "--worker" in _cmdline(p)]
        servers = servers_on(tmp_path / "state" / "nats")
        assert len(workers) == 2 and len(servers) == 1, (workers, servers)
        assert process_table()[servers[0]].ppid == ficus.proc.pid

        everything = [*workers, *servers]
        assert await ficus.terminate(60) == 0, ficus.tail()
        assert await wait_gone(everything, 10), [p for p in everything if alive(p)]
    log = (tmp_path / "ficus.log").read_text()
    assert "worker 1 (pid" in log and "stopped with code 0" in log and "restarting" not in log, log[-3000:]


class Files:
    """CSV files dropped into the folder (complete = rename) until stopped, in a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.files, self.records = folder, 0, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            part = self.folder / f"batch-{self.files:04d}.part"
            with part.open("w") as fh:
                fh.write("TXN_ID,TXN_TYPE,SERVICE_DATE,POST_DATE,ACCOUNT,ENCOUNTER,CHARGE_CODE,CPT,QTY,AMOUNT,DEPT,"
                         "FACILITY\n")
                for i in range(40):
                    fh.write(f"T-{self.files:04d}-{i:03d},CG,01/05/2024,01/06/2024,ACC-{i},ENC-{i},99213,99213,1,"
                             f"{i + 10}.25,CLINIC,NORTH\n")
            part.rename(part.with_suffix(".csv"))
            self.files += 1
            self.records += 40

    def __enter__(self) -> Files:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()


async def canonical_ids(url: str, subject: str) -> tuple[int, set[str]]:
    """Events stored on `subject` (a filter), and their distinct ids."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(names.STREAM_CANONICAL, subjects_filter=subject)
        total = sum((info.state.subjects or {}).values())
        ids: set[str] = set()
        if total:
            sub = await js.subscribe(subject, stream=names.STREAM_CANONICAL, ordered_consumer=True)
            try:
                for _ in range(total):
                    ids.add(json.loads((await sub.next_msg(timeout=10)).data)["id"])
            finally:
                await sub.unsubscribe()
        return total, ids
    finally:
        await nc.close()


async def lease(url: str) -> tuple[str, int] | None:
    """The folder's lease: its owner and epoch (one more at each new owner), when held."""
    record = (await kv_records(url, names.KV_LEASES)).get(FILES)
    return (record["owner"], int(record["epoch"])) if record and record.get("owner") else None


async def holders(url: str) -> list[str]:
    """The workers whose registry entry (fresh) says they hold the folder's lease."""
    entries = await kv_records(url, names.KV_INSTANCES)
    return sorted(n for n, r in entries.items() if FILES in r.get("leases", []) and time.time() - r["seen_at"] < 3)


async def test_one_worker_polls_the_folder_and_its_kill_9_loses_and_repeats_no_record(tmp_path: Path) -> None:
    async with running(tmp_path, workers=2, folder=True) as (ficus, _port):
        assert ficus.proc is not None
        url = store_url(tmp_path / "state" / "nats")
        await wait_for(lambda: workers_up(url, 2), timeout=60, interval=0.2)
        first, epoch = await wait_for(lambda: lease(url), timeout=30, interval=0.2)
        assert await wait_for(lambda: _equal(holders(url), [first]), timeout=10, interval=0.2)
        subject = "canonical.>"
        with Files(tmp_path / "in") as load:
            await wait_for(lambda: _published_at_least(url, subject, 200), timeout=60, interval=0.2)
            # Still exactly one worker polls.
            assert await holders(url) == [first]
            victim = int((await kv_records(url, names.KV_INSTANCES))[first]["pid"])
            os.kill(victim, signal.SIGKILL)
            killed, files_then = time.monotonic(), load.files

            async def taken_over() -> tuple[str, int] | None:
                # Held again at a later epoch: by the other worker, or by the restarted one.
                now = await lease(url)
                return now if now is not None and now[1] > epoch else None

            new_owner, _ = await wait_for(taken_over, timeout=30, interval=0.1)
            took = time.monotonic() - killed
            await wait_for(lambda: load.files > files_then + 5, timeout=30)
        await wait_for(lambda: _published_at_least(url, subject, load.records), timeout=120, interval=0.5)
        total, ids = await canonical_ids(url, subject)
        assert (total, len(ids)) == (load.records, load.records), (total, len(ids), load.records)
        assert not alive(victim)
        # The supervisor restarted the killed worker: both are up again under their names.
        await wait_for(lambda: workers_up(url, 2), timeout=60, interval=0.2)
        assert await holders(url) in ([new_owner], [])
        assert took < 3 + 1 + 5, f"takeover after {took:.1f}s"
        assert await ficus.terminate(60) == 0, ficus.tail()
    log = (tmp_path / "ficus.log").read_text()
    assert "exited with code -9 (SIGKILL); restarting it" in log, log[-3000:]


async def _equal(found: Any, expected: list[str]) -> bool:
    return bool(await found == expected)


async def _published_at_least(url: str, subject: str, count: int) -> bool:
    total, _ = await canonical_ids(url, subject)
    return total >= count


async def test_one_worker_is_one_process_as_before(tmp_path: Path) -> None:
    async with running(tmp_path, workers=1) as (ficus, port):
        assert ficus.proc is not None
        children = descendants(ficus.proc.pid)
        assert children == servers_on(tmp_path / "state" / "nats"), [_cmdline(p) for p in children]
        # The listener is not in a SO_REUSEPORT group: nobody can bind beside it.
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                sock.bind(("127.0.0.1", port))
        url = store_url(tmp_path / "state" / "nats")
        assert set(await kv_records(url, names.KV_INSTANCES)) == {"box"}
        assert await ficus.terminate(60) == 0, ficus.tail()


async def test_a_second_ficus_on_the_same_ports_is_refused(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second `ficus run` share the MLLP port silently: the supervisor
    checks each port first, as one process's bind would."""
    (tmp_path / "a").mkdir()
    async with running(tmp_path / "a", workers=2) as (first, port):
        assert first.proc is not None
        other = tmp_path / "b"
        other.mkdir()
        conf = config(other, workers=2, api_port=free_port(), mllp_port=port)
        second = Ficus(conf, 0, other / "ficus.log")
        await second.start()
        assert second.proc is not None
        try:
            code = await asyncio.wait_for(second.proc.wait(), 60)
        finally:
            second.kill_if_running()
        assert code == 1
        assert "Address already in use" in second.tail(), second.tail()
        assert await first.terminate(60) == 0, first.tail()


def test_workers_need_fixed_mllp_ports() -> None:
    base = {"nats": {"url": "nats://127.0.0.1:4999"}, "cluster": {"instance": "box"},
            "interfaces": [{"name": "his", "kind": "hl7-mllp", "listen": "127.0.0.1:0", "mapping": "hl7v2.dft_p03",
                            "route": "modern"}]}
    parse_config(base, "t")  # one worker: port 0 is fine
    with pytest.raises(ConfigError, match="port 0"):
        parse_config({**base, "workers": 2}, "t")
    with pytest.raises(ConfigError, match="too long"):
        parse_config({**base, "workers": 2, "cluster": {"instance": "x" * 99},
                      "interfaces": []}, "t")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
