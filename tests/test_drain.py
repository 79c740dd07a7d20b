"""Issue 18: at SIGTERM `/readyz` goes false ("draining") at once, and the MLLP listener keeps
answering for `cluster.drain_seconds`, so a load balancer moves senders away before it closes.

A real `ficus run` process (embedded NATS), a real signal, real sockets.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from router import simulate
from tests.conftest import wait_for
from tests.ficus_proc import Ficus, free_port, write_config
from tests.mllp_client import MllpTestClient, msa

pytestmark = pytest.mark.integration

DRAIN = 4.0


async def test_sigterm_drains_readiness_first_while_mllp_still_acknowledges(tmp_path: Path) -> None:
    api_port, mllp_port = free_port(), free_port()
    conf = write_config(tmp_path, tmp_path / "state", api_port=api_port, mllp_port=mllp_port)
    conf.write_text(conf.read_text() + f"\n[cluster]\ndrain_seconds = {DRAIN}\n")
    ficus = Ficus(conf, api_port, tmp_path / "ficus.log")
    try:
        await ficus.start()
        await ficus.wait_ready(timeout=120)
        assert ficus.proc is not None
        loop = asyncio.get_running_loop()
        async with MllpTestClient(mllp_port) as before:
            assert msa(await before.exchange(simulate.dft(1), timeout=30))[0] == "AA"
            signalled = loop.time()
            ficus.proc.send_signal(signal.SIGTERM)

            async def draining() -> tuple[int, dict[str, object]] | None:
                got = await ficus.readyz()
                return got if got is not None and got[0] == 503 else None

            _, body = await wait_for(draining, timeout=DRAIN, interval=0.05)
            assert body["ready"] is False and body["problems"] == ["draining"], body
            # During the drain: a connection open before the signal and a new one both get AA.
            assert msa(await before.exchange(simulate.dft(2), timeout=10))[0] == "AA"
            async with MllpTestClient(mllp_port) as during:
                assert msa(await during.exchange(simulate.dft(3), timeout=10))[0] == "AA"
            assert loop.time() - signalled < DRAIN, "the checks above did not fit in the drain"
            assert ficus.proc.returncode is None, ficus.tail()
        code = await asyncio.wait_for(ficus.proc.wait(), 60)
        stopped_after = loop.time() - signalled
        assert code == 0, ficus.tail()
        # It served the whole drain before stopping.
        assert stopped_after >= DRAIN, stopped_after
        assert "draining" in ficus.tail()
    finally:
        ficus.kill_if_running()
        if ficus.proc is not None:
            await ficus.proc.wait()
