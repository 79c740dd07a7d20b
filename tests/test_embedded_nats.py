"""The embedded nats-server dies with Ficus, and a store is never opened by two servers.

Real `ficus run` processes with `nats.url = "embedded"`, killed with SIGKILL; the servers
on the store are found in /proc by their config file. Every process started here is killed
by PID in a finally.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from router import names, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import stream_count, wait_for
from tests.ficus_proc import (
    REPO,
    Ficus,
    alive,
    free_port,
    kill_servers,
    servers_on,
    store_url,
    wait_gone,
    write_config,
)
from tests.mllp_client import msa, send_one

pytestmark = pytest.mark.integration
EVENTS_PER_DFT = 3  # simulate.dft: two charges and a credit
# What nats-server logs when a store was left inconsistent (two writers, or an unclean stop).
RECOVERY_TROUBLE = re.compile(r"recover|corrupt|inconsisten|damaged|rebuil|truncat|checksum", re.IGNORECASE)


def _recovery_problems(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines()
            if "[ERR]" in line or ("[WRN]" in line and RECOVERY_TROUBLE.search(line))]


async def _one_life(tmp: Path, conf: Path, api: int, mllp: int, seq: int, store: Path) -> list[int]:
    """Starts Ficus, stores one DFT (AA), kills Ficus with SIGKILL; returns its servers' pids."""
    ficus = Ficus(conf, api, tmp / f"ficus-{seq}.log")
    try:
        await (await ficus.start()).wait_ready()
        pids = servers_on(store)
        assert len(pids) == 1, f"servers on the store while Ficus runs: {pids}"
        assert msa(await send_one(mllp, simulate.dft(seq)))[0] == "AA"
        await ficus.kill9()
        return pids
    finally:
        ficus.kill_if_running()


async def test_kill9_three_times_leaves_no_server_and_a_clean_store(tmp_path: Path) -> None:
    state, api, mllp = tmp_path / "state", free_port(), free_port()
    store = state / "nats"
    conf = write_config(tmp_path, state, api_port=api, mllp_port=mllp)  # nats.embedded.port = 0
    seen: set[int] = set()
    try:
        for seq in (1, 2, 3):
            pids = await _one_life(tmp_path, conf, api, mllp, seq, store)
            seen.update(pids)
            assert await wait_gone(pids, 20), f"nats-server {pids} outlived Ficus (kill -9, round {seq})"
            assert servers_on(store) == []
        log_before = (store / "nats-server.log").stat().st_size
        ficus = Ficus(conf, api, tmp_path / "ficus-4.log")
        try:
            await (await ficus.start()).wait_ready()
            assert len(servers_on(store)) == 1
            url = store_url(store)
            assert await stream_count(url, names.STREAM_RAW) == 3
            assert await stream_count(url, names.STREAM_CANONICAL) == 3 * EVENTS_PER_DFT
            assert await ficus.terminate() == 0, ficus.tail()
        finally:
            ficus.kill_if_running()
        with (store / "nats-server.log").open("rb") as fh:
            fh.seek(log_before)
            problems = _recovery_problems(fh.read().decode(errors="replace"))
        assert problems == [], problems
        assert servers_on(store) == []
        assert len(seen) == 3
    finally:
        kill_servers(store)


async def test_kill9_with_a_fixed_port_then_restart_on_that_port(tmp_path: Path) -> None:
    state, api, mllp, port = tmp_path / "state", free_port(), free_port(), free_port()
    store = state / "nats"
    conf = write_config(tmp_path, state, api_port=api, mllp_port=mllp, nats_port=port)
    try:
        pids = await _one_life(tmp_path, conf, api, mllp, 1, store)
        assert await wait_gone(pids, 20), f"nats-server {pids} outlived Ficus on fixed port {port}"
        ficus = Ficus(conf, api, tmp_path / "ficus-2.log")
        try:
            await (await ficus.start()).wait_ready()
            (pid,) = servers_on(store)
            assert pid not in pids
            assert store_url(store) == f"nats://127.0.0.1:{port}"
            assert await stream_count(store_url(store), names.STREAM_CANONICAL) == EVENTS_PER_DFT
            assert msa(await send_one(mllp, simulate.dft(2)))[0] == "AA"
            assert await ficus.terminate() == 0, ficus.tail()
        finally:
            ficus.kill_if_running()
        assert servers_on(store) == []
    finally:
        kill_servers(store)


async def test_a_port_served_by_another_server_is_refused_clearly(tmp_path: Path) -> None:
    """A fixed port already served (here by someone else's nats-server): never attach to it."""
    state, api, mllp, port = tmp_path / "state", free_port(), free_port(), free_port()
    conf = write_config(tmp_path, state, api_port=api, mllp_port=mllp, nats_port=port)
    async with EmbeddedNats(tmp_path / "someone-else", port=port):
        ficus = Ficus(conf, api, tmp_path / "ficus.log")
        try:
            await ficus.start()
            assert ficus.proc is not None
            code = await asyncio.wait_for(ficus.proc.wait(), 60)
        finally:
            ficus.kill_if_running()
    err = ficus.tail()
    assert code == 1, err
    assert "Traceback" not in err, err
    assert re.search(rf"^ficus: port 127\.0\.0\.1:{port} .*in use", err, re.MULTILINE), err
    assert servers_on(state / "nats") == []


async def test_a_leftover_server_on_the_store_is_stopped_and_reported(tmp_path: Path) -> None:
    state, api, mllp = tmp_path / "state", free_port(), free_port()
    store = state / "nats"
    conf = write_config(tmp_path, state, api_port=api, mllp_port=mllp)
    orphan: asyncio.subprocess.Process | None = None
    try:
        first = Ficus(conf, api, tmp_path / "ficus-1.log")
        try:
            await (await first.start()).wait_ready()
            assert msa(await send_one(mllp, simulate.dft(1)))[0] == "AA"
            assert await first.terminate() == 0, first.tail()
        finally:
            first.kill_if_running()
        # As an orphan would be: the binary Ficus runs, on the config Ficus wrote for the store.
        orphan = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "nats-server"), "-c", str(store / "nats-server.conf"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert await stream_count(store_url(store), names.STREAM_CANONICAL) == EVENTS_PER_DFT
        second = Ficus(conf, api, tmp_path / "ficus-2.log")
        try:
            await (await second.start()).wait_ready()
            await asyncio.wait_for(orphan.wait(), 30)
            assert servers_on(store) != [orphan.pid] and len(servers_on(store)) == 1
            log = second.tail()
            assert re.search(rf"WARNING .*stale nats-server \(pid {orphan.pid}\)", log), log
            assert await stream_count(store_url(store), names.STREAM_CANONICAL) == EVENTS_PER_DFT
            assert await second.terminate() == 0, second.tail()
        finally:
            second.kill_if_running()
    finally:
        if orphan is not None and orphan.returncode is None:
            orphan.kill()
            await orphan.wait()
        kill_servers(store)


async def test_a_store_in_use_by_another_ficus_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = state / "nats"
    api1, api2 = free_port(), free_port()
    conf1 = write_config(tmp_path, state, api_port=api1, mllp_port=free_port())
    conf2 = write_config(tmp_path, state, api_port=api2, mllp_port=free_port())
    first, second = Ficus(conf1, api1, tmp_path / "ficus-1.log"), Ficus(conf2, api2, tmp_path / "ficus-2.log")
    try:
        await (await first.start()).wait_ready()
        (pid,) = servers_on(store)
        await second.start()
        assert second.proc is not None and first.proc is not None
        code = await asyncio.wait_for(second.proc.wait(), 60)
        err = second.tail()
        assert code == 1, err
        assert "Traceback" not in err, err
        assert f"ficus: NATS store {store} is in use by another Ficus (pid {first.proc.pid})" in err, err
        assert servers_on(store) == [pid] and alive(pid)
        assert await first.terminate() == 0, first.tail()
    finally:
        first.kill_if_running()
        second.kill_if_running()
        kill_servers(store)


CHILD = """
import asyncio, sys
from router.embedded_nats import EmbeddedNats

async def main():
    server = EmbeddedNats(sys.argv[2])
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(3600)

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_the_server_dies_with_its_parent_on_either_loop(tmp_path: Path, loop: str) -> None:
    store = tmp_path / "nats"
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, loop, str(store), cwd=REPO, stdout=asyncio.subprocess.PIPE)
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        pid = int(line)
        assert servers_on(store) == [pid]
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert str(store / "ficus.lock") not in held, "the server inherited the store lock"
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
        assert await wait_gone([pid], 20), f"nats-server {pid} outlived its parent on {loop}"
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        kill_servers(store)


async def test_a_stale_server_deaf_to_sigterm_is_killed(tmp_path: Path) -> None:
    """A stopped (SIGSTOP) stale server ignores SIGTERM: SIGKILL after the bound."""
    from router import embedded_guard

    store = tmp_path / "nats"
    conf = EmbeddedNats(store)._write_config()
    stale = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "nats-server"), "-c", str(conf),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        await wait_for(lambda: servers_on(store) == [stale.pid])
        os.kill(stale.pid, signal.SIGSTOP)
        assert await embedded_guard.stop_stale(store, conf, timeout=1.0) == [stale.pid]
        assert await asyncio.wait_for(stale.wait(), 10) == -signal.SIGKILL
    finally:
        if stale.returncode is None:
            stale.kill()
            await stale.wait()
