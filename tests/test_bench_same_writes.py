"""The same-writes MLLP ceiling (bench/ceilings.py) stores, per message, what Ficus stores for it:
the raw copy, the events and the ledger delta, on the same streams. If Ficus's writes per
message change, its ceiling must change with them (bench/mllp_ratio.py compares the two)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from bench.ceilings import same_writes_items
from bench.messages import Feed
from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.mllp_client import MllpTestClient, msa

REPO = Path(__file__).resolve().parent.parent
STREAMS = (names.STREAM_RAW, names.STREAM_CANONICAL, names.STREAM_LEDGER)


async def counts(url: str) -> tuple[int, ...]:
    return tuple([await stream_count(url, stream) for stream in STREAMS])


async def send(port: int, payloads: list[bytes]) -> None:
    async with MllpTestClient(port) as client:
        for payload in payloads:
            assert msa(await client.exchange(payload))[0] == "AA"


def test_the_templates_are_ficus_events_and_one_ledger_delta() -> None:
    for kind, events in (("adt", 1), ("dft", 3)):
        stored, deltas = same_writes_items(kind)
        assert len(stored) == events and len(deltas) == 1
        assert all(item.subject.startswith("canonical.") for item in stored)
        assert deltas[0].subject.startswith("ledger.bench.")


async def test_ficus_and_the_ceiling_store_the_same_messages(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    adt = [Feed("adt", 7).get(0, i) for i in range(3)]
    dft = [Feed("dft", 8).get(0, i) for i in range(2)]  # another tag: other control ids
    cfg = make_config(nats_server.url, [{"name": "bench", "mapping": "hl7v2", "route": "modern"}])
    async with service_factory(cfg) as svc:
        await send(svc.interfaces["bench"].listener.port, adt + dft)
    ficus = await counts(nats_server.url)
    assert ficus == (5, 3 + 2 * 3, 5)

    other = EmbeddedNats(tmp_path / "nats-ceiling")
    url = await other.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs: list[asyncio.subprocess.Process] = []
    try:
        for kind, payloads in (("adt", adt), ("dft", dft)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.ceilings", "same-writes", str(port), url, "--kind", kind, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)})
            procs.append(proc)

            async def listening() -> bool:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    return False
                writer.close()
                return True

            await wait_for(listening, timeout=30)
            await send(port, payloads)
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)
        assert await counts(url) == ficus
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await other.stop()
