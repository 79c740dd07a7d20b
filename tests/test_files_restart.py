"""A crash (SIGKILL) in the middle of a 100,000-record file, then a restart: every record is
published exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import stream_count, wait_for
from tests.ficus_proc import csv_folder_interface, fast_ingest_state, free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
RECORDS = 100_000


def write_export(path: Path, count: int) -> None:
    with path.open("w", newline="") as fh:
        fh.write("TXN_ID,TXN_TYPE,SERVICE_DATE,POST_DATE,ACCOUNT,ENCOUNTER,CHARGE_CODE,CPT,QTY,AMOUNT,DEPT,FACILITY\n")
        for i in range(count):
            fh.write(f"T-{i:07d},CG,01/05/2024,01/06/2024,ACC-{i % 997},ENC-{i % 4999},99213,99213,1,"
                     f"{(i % 500) + 10}.25,CLINIC,NORTH\n")


def config(tmp: Path, nats_url: str, api_port: int = 0) -> Path:
    conf = tmp / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp / 'state'}"
log_level = "WARNING"
[nats]
url = "{nats_url}"
fast_ingest = true
[api]
listen = "127.0.0.1:{api_port}"
{csv_folder_interface("billing", tmp)}""")
    return conf


async def test_kill_mid_file_then_restart_publishes_each_record_once(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    staging = tmp_path / "big.csv.part"
    write_export(staging, RECORDS)
    api_port = free_port()
    conf = config(tmp_path, nats_server.url, api_port)
    cmd = [sys.executable, "-m", "router.cli", "run", "-c", str(conf)]
    first = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        staging.rename(tmp_path / "in" / "big.csv")  # renamed into place: complete
        await wait_for(lambda: _count(nats_server.url), timeout=60, interval=0.02)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    published = await stream_count(nats_server.url, names.STREAM_CANONICAL)
    assert 0 < published < RECORDS, f"killed mid-file ({published} events)"
    assert (tmp_path / "in" / "big.csv").exists(), "not archived before its events were stored"

    log = tmp_path / "second.log"
    with log.open("wb") as errfile:  # a file, not a pipe: a full pipe would block the service
        second = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=errfile)
        try:
            await wait_for(lambda: (tmp_path / "archive" / "big.csv").exists(), timeout=180, interval=0.2)
            # The rest of the file went as fast-ingest batches (nats-server 2.14+), not one by one.
            ingest, batches = await fast_ingest_state(api_port)
        finally:
            second.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await asyncio.wait_for(second.wait(), 60)
            finally:
                if second.returncode is None:  # never left running, whatever failed
                    second.kill()
                    await second.wait()
            stop_seconds = loop.time() - started
    err = log.read_bytes()
    assert second.returncode == 0, err.decode()[-2000:]
    print(f"shutdown took {stop_seconds:.1f}s")
    assert stop_seconds < 30, f"shutdown took {stop_seconds:.1f}s"
    assert ingest == "fast-ingest" and isinstance(batches, int) and batches > 1, (ingest, batches)
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == RECORDS
    assert await stream_count(nats_server.url, names.STREAM_DLQ) == 0
    ids = await _distinct_ids(nats_server.url)
    assert ids == RECORDS, err.decode()[-2000:]


async def _count(url: str) -> bool:
    return await stream_count(url, names.STREAM_CANONICAL) > 5_000


async def _distinct_ids(url: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().subscribe("canonical.>", ordered_consumer=True)
        seen: set[str] = set()
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except nats.errors.TimeoutError:
                break
            seen.add(json.loads(msg.data)["id"])
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return len(seen)
    finally:
        await nc.close()
