"""`ficus run` always ends: a shutdown deadline, a second signal that exits at once, and a clean
stop that does not warn about its own disconnection.

The outage is real: the test's own nats-server is frozen with SIGSTOP (its sockets stay open,
nothing answers -- the worst case for a client), then `ficus run` gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from protocols.mllp import frame
from router import names, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import stream_count, wait_for
from tests.ficus_proc import Ficus, free_port
from tests.mllp_client import MllpTestClient, msa

pytestmark = pytest.mark.integration


def write_config(tmp: Path, nats_url: str, *, api_port: int, mllp_port: int, shutdown: float) -> Path:
    (tmp / "in").mkdir(exist_ok=True)
    conf = tmp / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp / 'state'}"
log_level = "INFO"
shutdown_timeout_seconds = {shutdown}
[nats]
url = "{nats_url}"
publish_timeout_seconds = 10
[api]
listen = "127.0.0.1:{api_port}"
[[interfaces]]
name = "drop"
kind = "folder"
path = "{tmp / 'in'}"
patterns = ["*.x12"]
format = "x12-835"
poll_seconds = 0.2
after = "archive"
archive_dir = "{tmp / 'archive'}"
route = "modern"
[[interfaces]]
name = "his-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp_port}"
mapping = "hl7v2.dft_p03"
route = "modern"
""")
    return conf


@contextlib.contextmanager
def frozen(server: EmbeddedNats) -> Iterator[None]:
    """The server stopped (SIGSTOP) for the block; always continued after."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def running(tmp: Path, nats_url: str, shutdown: float) -> AsyncIterator[tuple[Ficus, int]]:
    api_port, mllp_port = free_port(), free_port()
    conf = write_config(tmp, nats_url, api_port=api_port, mllp_port=mllp_port, shutdown=shutdown)
    ficus = Ficus(conf, api_port, tmp / "ficus.log")
    try:
        await ficus.start()
        await ficus.wait_ready(timeout=120)
        yield ficus, mllp_port
    finally:
        ficus.kill_if_running()
        if ficus.proc is not None:
            await ficus.proc.wait()


async def exit_seconds(ficus: Ficus, timeout: float) -> float:
    """Seconds until the process exits; fails (the process is killed by `running`) past `timeout`."""
    assert ficus.proc is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await asyncio.wait_for(ficus.proc.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"still running {timeout}s after the signal\n{ficus.tail()}") from None
    return loop.time() - started


async def test_sigterm_during_a_nats_outage_ends_within_the_deadline(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    deadline = 3.0
    message = simulate.dft(1, lines=2)
    async with running(tmp_path, nats_server.url, deadline) as (ficus, mllp_port), \
            MllpTestClient(mllp_port) as sender:
        with frozen(nats_server):
            await sender.send_raw(frame(message))  # in flight: its raw cannot be stored
            await wait_for(lambda: _in_flight(ficus), timeout=30)
            assert ficus.proc is not None
            ficus.proc.send_signal(signal.SIGTERM)
            seconds = await exit_seconds(ficus, 60)
            log = ficus.tail()
            # A bound, not an expectation: the deadline plus room for a loaded machine.
            assert seconds < deadline + 12, f"shutdown took {seconds:.1f}s\n{log}"
            assert ficus.proc.returncode == 1, log
            assert "shutdown deadline" in log and "abandoned" in log, log
            with contextlib.suppress(TimeoutError, ConnectionError):
                reply = await sender.reply(timeout=2)
                assert reply is None or msa(reply)[0] != "AA", "acknowledged a message that was not stored"
    # Not acknowledged, so the sender sends it again after the restart: nothing is lost.
    async with running(tmp_path, nats_server.url, 30) as (ficus, mllp_port), MllpTestClient(mllp_port) as sender:
        reply = await sender.exchange(message, timeout=60)
        assert msa(reply)[0] == "AA"
        assert await stream_count(nats_server.url, names.STREAM_RAW) >= 1
        assert ficus.proc is not None
        ficus.proc.send_signal(signal.SIGTERM)
        await exit_seconds(ficus, 60)
        assert ficus.proc.returncode == 0, ficus.tail()


async def _in_flight(ficus: Ficus) -> bool:
    """The listener handed the frame to the pipeline (the API still answers: it needs no NATS)."""
    url = f"http://127.0.0.1:{ficus.api_port}/api/v1/interfaces"
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError):
        return False
    return any(i["name"] == "his-charges" and i["listener"]["frames_in"] >= 1 for i in body["interfaces"])


async def test_a_second_signal_exits_at_once(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with running(tmp_path, nats_server.url, 600) as (ficus, mllp_port), MllpTestClient(mllp_port) as sender:
        with frozen(nats_server):
            await sender.send_raw(frame(simulate.dft(2, lines=2)))
            assert ficus.proc is not None
            ficus.proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: "ficus: stopping" in ficus.tail(), timeout=30)
            ficus.proc.send_signal(signal.SIGINT)
            seconds = await exit_seconds(ficus, 60)
            log = ficus.tail()
            assert seconds < 10, f"the second signal took {seconds:.1f}s\n{log}"
            assert ficus.proc.returncode != 0, log
            assert "second signal" in log, log


async def test_a_clean_stop_does_not_warn_about_its_own_disconnection(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with running(tmp_path, nats_server.url, 30) as (ficus, mllp_port):
        reply = await asyncio.wait_for(_send(mllp_port), 60)
        assert msa(reply)[0] == "AA"
        assert ficus.proc is not None
        ficus.proc.send_signal(signal.SIGTERM)
        await exit_seconds(ficus, 60)
        log = ficus.tail()
        assert ficus.proc.returncode == 0, log
        assert "stopped" in log, log
        assert "WARNING" not in log, log


async def _send(port: int) -> bytes | None:
    async with MllpTestClient(port) as sender:
        return await sender.exchange(simulate.dft(3, lines=2), timeout=30)
