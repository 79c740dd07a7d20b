"""Issue 10 item 7: one stuck file must not block its interface. A file Ficus may not read or
whose legacy name is still occupied is set aside (retried alone, dead-lettered after
`stuck_after_seconds`), the files behind it flow, and /readyz says why meanwhile."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from protocols.backoff import Backoff
from router import names
from router.embedded_nats import EmbeddedNats
from router.interfaces import Supervision, _supervised
from router.stats import InterfaceStats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.test_files_restart import config as restart_config
from tests.test_files_service import BILLING, folder_iface
from tests.test_service_mllp import read_subject

REPO = Path(__file__).resolve().parent.parent


async def readyz(url: str) -> tuple[int, list[str]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
        body = await resp.json()
        return resp.status, body["problems"]


async def _ready(url: str) -> bool:
    return await readyz(url) == (200, [])


def drop(inbox: Path, name: str, data: bytes, age: int = 0) -> Path:
    """A file renamed into the inbox; ``age`` seconds older than now (the scan takes oldest first)."""
    temp = inbox.parent / f"{name}.part"
    temp.write_bytes(data)
    stamp = os.stat(temp).st_mtime - age
    os.utime(temp, (stamp, stamp))
    temp.rename(inbox / name)
    return inbox / name


@pytest.mark.integration
async def test_occupied_legacy_name_does_not_block_the_files_behind_it(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface = folder_iface(tmp_path, route="legacy", complete="rename")
    (tmp_path / "legacy" / "a.csv").write_bytes(b"yesterday's file, not consumed yet")
    a, b = BILLING.read_bytes(), BILLING.read_bytes().replace(b"\n", b"\r\n")
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        drop(tmp_path / "in", "a.csv", a, age=60)  # first in line, and stuck
        drop(tmp_path / "in", "b.csv", b)
        await wait_for(lambda: (tmp_path / "archive" / "b.csv").exists(), timeout=20)
        assert (tmp_path / "legacy" / "b.csv").read_bytes() == b, "the file behind the stuck one flowed"
        assert (tmp_path / "in" / "a.csv").exists()
        assert svc.api_url is not None
        status, problems = await readyz(svc.api_url)
        assert status == 503, problems
        assert any("billing" in p and "a.csv" in p and "not consumed" in p for p in problems), problems

        (tmp_path / "legacy" / "a.csv").unlink()  # the legacy consumer took yesterday's file
        await wait_for(lambda: (tmp_path / "archive" / "a.csv").exists(), timeout=30)
        assert (tmp_path / "legacy" / "a.csv").read_bytes() == a
        assert await readyz(svc.api_url) == (200, [])
        assert stats.acked == 2 and stats.dead_lettered == 0


@pytest.mark.integration
async def test_a_file_stuck_too_long_is_dead_lettered_and_kept(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface = folder_iface(tmp_path, route="shadow", complete="rename", stuck_after_seconds=1.5)
    (tmp_path / "legacy" / "a.csv").write_bytes(b"never consumed")
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        drop(tmp_path / "in", "a.csv", BILLING.read_bytes())
        await wait_for(lambda: stats.dead_lettered == 1, timeout=30)
        assert svc.api_url is not None
        # Dead-lettered: no longer stuck (the count moves just before the file leaves the set-aside list).
        await wait_for(lambda: _ready(svc.api_url), timeout=30, interval=0.1)
        await asyncio.sleep(0.5)  # a few more passes: it is not taken again
        assert stats.dead_lettered == 1
    [letter] = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("billing"))
    assert letter["kind"] == "undeliverable" and letter["unit"] == "a.csv"
    assert letter["reason"].startswith("a.csv: not processed after ")
    assert "a.csv still holds a different file (not consumed yet)" in letter["reason"]
    assert letter["raw"].startswith("objectstore://") and f"original in {letter['raw']}" in letter["reason"]
    assert (tmp_path / "in" / "a.csv").read_bytes() == BILLING.read_bytes(), "left where it was"
    assert (tmp_path / "legacy" / "a.csv").read_bytes() == b"never consumed"


def _without_dac_override() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set, so root is bound by file modes (a chmod 000 file is unreadable)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.integration
async def test_unreadable_file_is_set_aside_and_dead_lettered(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "archive").mkdir()
    conf = restart_config(tmp_path, nats_server.url)
    text = conf.read_text().replace('log_level = "WARNING"', 'log_level = "INFO"')
    conf.write_text(text.replace('route = "modern"', 'route = "modern"\nstuck_after_seconds = 6'))
    unreadable = drop(tmp_path / "in", "a.csv", BILLING.read_bytes(), age=60)
    unreadable.chmod(0)
    drop(tmp_path / "in", "b.csv", BILLING.read_bytes().replace(b"\n", b"\r\n"))
    log = tmp_path / "ficus.log"
    cmd = [sys.executable, "-m", "router.cli", "run", "-c", str(conf)]
    with log.open("wb") as errfile:
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=errfile,
                                                    preexec_fn=_without_dac_override)
        try:
            found: list[str] = []

            def api_url() -> bool:
                found.extend(re.findall(r"API on (http://\S+)", log.read_text(errors="replace")))
                return bool(found)

            await wait_for(api_url, timeout=60)
            await wait_for(lambda: (tmp_path / "archive" / "b.csv").exists(), timeout=30)
            status, problems = await readyz(found[0])
            assert status == 503, problems
            assert any("billing" in p and "a.csv" in p and "PermissionError" in p for p in problems), problems
            await wait_for(lambda: _dead_letters(nats_server.url), timeout=60, interval=0.2)  # 9-16 s alone
            # Dead-lettered: no longer stuck. The dead letter is published two manifest writes
            # before the file leaves the set-aside list, so wait (as the test above does).
            await wait_for(lambda: _ready(found[0]), timeout=30, interval=0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert unreadable.exists(), "left where it is"
    [letter] = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("billing"))
    assert letter["unit"] == "a.csv" and "raw" not in letter
    assert "cannot open a.csv (PermissionError" in letter["reason"]
    assert f"file left in {tmp_path / 'in'}" in letter["reason"]
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) > 0, "b.csv flowed"


async def _dead_letters(url: str) -> bool:
    return await stream_count(url, names.STREAM_DLQ) >= 1


async def test_supervisor_backoff_starts_over_after_a_healthy_run() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    states: list[str | None] = []
    supervision = Supervision()

    class Runner:
        async def run(self, stopping: asyncio.Event) -> None:
            starts.append(loop.time())
            states.append(supervision.problem(healthy_seconds=0.4))
            if len(starts) == 3:
                await asyncio.sleep(0.6)  # ran well for a while before this crash
            if len(starts) == 5:
                await stopping.wait()
                return
            raise RuntimeError("boom")

    stopping = asyncio.Event()
    # The pauses are drawn at random below their ceilings (full jitter): pinned to the ceilings here.
    ceilings = Backoff(1.0, 60.0, uniform=lambda low, high: high)
    task = asyncio.create_task(_supervised("t", InterfaceStats(), Runner(), stopping, supervision,
                                           healthy_seconds=0.4, backoff=ceilings))
    try:
        await wait_for(lambda: len(starts) == 5, timeout=30)
        assert supervision.problem(healthy_seconds=0.4) is not None, "just restarted after a crash loop"
        await wait_for(lambda: supervision.problem(healthy_seconds=0.4) is None, timeout=5)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.9 < gaps[0] < 1.6 and 1.9 < gaps[1] < 2.6, gaps  # 1 s, then 2 s
    assert gaps[2] < 0.6 + 1.6, f"after a healthy run the pause starts over at 1 s: {gaps}"
    assert states[1] is not None and "RuntimeError" in states[1]
