"""Start-up that fails half-way stops everything it had started, and says what failed in one line.

A real Service on an embedded nats-server with two MLLP interfaces; the second one's listen
port is held by the test, so it cannot bind. By then the nats-server runs, the store's lock
is taken and the first listener is bound: all of that must be gone when `Service` raises.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from router import embedded_guard as guard
from router.service import Service, StartError
from tests.conftest import make_config
from tests.ficus_proc import free_port, kill_servers, servers_on, wait_gone

pytestmark = pytest.mark.integration


async def test_a_taken_port_on_the_second_interface_stops_what_was_started(tmp_path: Path) -> None:
    first_port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    taken = holder.getsockname()[1]
    store = tmp_path / "state" / "nats"
    cfg = make_config("embedded", [
        {"name": "his-a", "mapping": "hl7v2.dft_p03", "route": "modern", "listen": f"127.0.0.1:{first_port}"},
        {"name": "his-b", "mapping": "hl7v2.dft_p03", "route": "modern", "listen": f"127.0.0.1:{taken}"},
    ], state_dir=tmp_path / "state")
    try:
        with pytest.raises(Exception) as caught:
            async with Service(cfg):
                pytest.fail("started although his-b's port is taken")
        text = str(caught.value)
        # One clear error: the component, then the reason (no traceback needed to act on it).
        assert "interface his-b" in text and "address already in use" in text, text
        assert isinstance(caught.value, StartError), type(caught.value)
        # Everything started before his-b was stopped: the nats-server, its lock, his-a's listener.
        assert await wait_gone(servers_on(store), 10), "nats-server left running"
        fd = guard.lock_store(store)  # raises while another holder keeps the lock
        guard.unlock_store(fd)
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", first_port)
            writer.close()
    finally:
        holder.close()
        kill_servers(store)


async def test_a_service_not_started_says_so(tmp_path: Path) -> None:
    svc = Service(make_config("nats://127.0.0.1:1", [{"name": "his-a", "mapping": "hl7v2.dft_p03", "route": "modern"}]))
    with pytest.raises(RuntimeError, match="not started"):
        _ = svc.store
