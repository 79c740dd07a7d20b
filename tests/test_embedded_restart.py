"""The embedded nats-server killed while Ficus runs: restarted with backoff, nothing acked lost.

A real Service with `nats.url = "embedded"` and a modern-mode MLLP interface; the server is
killed with SIGKILL and its port held by the test for a while, so restart attempts fail
and back off, then let go: the server comes back on the same store and port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from router import simulate
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.ficus_proc import Ficus, free_port, kill_servers, servers_on, store_url, wait_gone, write_config
from tests.mllp_client import msa, send_one

pytestmark = pytest.mark.integration
EVENTS_PER_DFT = 3


async def _readyz(url: str) -> tuple[int, list[str]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, list(body["problems"])


async def _hold(port: int) -> socket.socket:
    """Listens on the dead server's port as soon as the kernel lets go of it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(8)
            return sock
        except OSError:
            sock.close()
            assert loop.time() < deadline, f"port {port} not released"
            await asyncio.sleep(0.01)


async def _events_by_control_id(url: str) -> dict[str, int]:
    """Canonical events per originating MSH-10, read from a connection of the test's own."""
    nc = await nats.connect(url)
    counts: dict[str, int] = {}
    try:
        sub = await nc.jetstream().subscribe("canonical.>", ordered_consumer=True)
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except nats.errors.TimeoutError:
                break
            event = json.loads(msg.data)
            control = event["ficuscorrelation"].rpartition(":")[2]  # sender:MSH-10
            counts[control] = counts.get(control, 0) + 1
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
    finally:
        await nc.close()
    return counts


def _control_id(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].split(b"|")[9].decode()


async def test_a_killed_embedded_server_is_restarted_and_nothing_acked_is_lost(
    tmp_path: Path, service_factory: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ficus.nats")
    cfg = make_config("embedded", [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}],
                      state_dir=tmp_path / "state")
    acked: list[str] = []
    refused: list[str] = []
    async with service_factory(cfg) as svc:
        emb = svc.embedded
        assert emb is not None and svc.api_url is not None
        emb.restart_initial = 2.0  # room for the test to take the port before the first attempt
        emb.restart_jitter = lambda low, high: high  # pauses at their ceilings (2 s, then 4 s), not drawn
        port, url = svc.interfaces["his-charges"].listener.port, emb.url
        for seq in (1, 2, 3):
            payload = simulate.dft(seq)
            assert msa(await send_one(port, payload)) == ("AA", _control_id(payload))
            acked.append(_control_id(payload))
        first = emb.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        holder = await _hold(emb.port)
        try:
            async def down() -> list[str] | None:
                status, problems = await _readyz(svc.api_url or "")
                hit = [p for p in problems if p.startswith("embedded NATS down (exit code -9), restart attempt")]
                return problems if status == 503 and hit else None

            await wait_for(down, timeout=15)
            for seq in (4, 5):  # sent while the store is down: never AA
                payload = simulate.dft(seq)
                code, echoed = msa(await send_one(port, payload, timeout=30))
                assert code != "AA" and echoed == _control_id(payload)
                refused.append(echoed)

            async def second_attempt() -> bool:
                _, problems = await _readyz(svc.api_url or "")
                return any("restart attempt 2 in 4 s" in p for p in problems)

            await wait_for(second_attempt, timeout=30)  # the first attempt failed on the taken port
        finally:
            holder.close()

        async def up() -> bool:
            return (await _readyz(svc.api_url or ""))[0] == 200

        await wait_for(up, timeout=60)
        assert emb.url == url and emb.pid not in (None, first) and emb.restarts == 1
        for seq in (6, 7, 8):
            payload = simulate.dft(seq)
            assert msa(await send_one(port, payload, timeout=30)) == ("AA", _control_id(payload))
            acked.append(_control_id(payload))
        stored = await _events_by_control_id(url)
    assert {c: stored.get(c, 0) for c in acked} == {c: EVENTS_PER_DFT for c in acked}, stored
    text = caplog.text
    assert f"embedded nats-server (pid {first}) exited with code -9 (SIGKILL)" in text
    assert "restart attempt 1 failed: port 127.0.0.1:" in text
    assert "embedded nats-server restarted at" in text


async def test_ficus_run_restarts_its_killed_server_on_the_same_port(tmp_path: Path) -> None:
    """The same through `ficus run` (uvloop when installed): the port chosen at start is kept."""
    state, api, mllp = tmp_path / "state", free_port(), free_port()
    store = state / "nats"
    ficus = Ficus(write_config(tmp_path, state, api_port=api, mllp_port=mllp), api, tmp_path / "ficus.log")
    try:
        await (await ficus.start()).wait_ready()
        url = store_url(store)
        payload = simulate.dft(1)
        assert msa(await send_one(mllp, payload))[0] == "AA"
        (first,) = servers_on(store)
        os.kill(first, signal.SIGKILL)
        assert await wait_gone([first], 20)
        (second,) = await wait_for(lambda: [p for p in servers_on(store) if p != first], timeout=30)
        await ficus.wait_ready()  # the client reconnected too
        assert servers_on(store) == [second]
        assert second != first and store_url(store) == url
        payload2 = simulate.dft(2)
        assert msa(await send_one(mllp, payload2, timeout=30))[0] == "AA"
        stored = await _events_by_control_id(url)
        assert stored == {_control_id(payload): EVENTS_PER_DFT, _control_id(payload2): EVENTS_PER_DFT}
        log = ficus.tail()
        assert f"WARNING ficus.nats: embedded nats-server (pid {first}) exited with code -9 (SIGKILL)" in log
        assert "INFO ficus.nats: embedded nats-server restarted at" in log
        assert await ficus.terminate() == 0, ficus.tail()
        assert servers_on(store) == []
    finally:
        ficus.kill_if_running()
        kill_servers(store)
