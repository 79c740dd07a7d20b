"""Database-job (odbc) interfaces end to end: a real nats-server, and real PostgreSQL and
MariaDB servers through their Debian ODBC drivers (skipped with the reason when absent).

Exactly once while a writer inserts 100,000 rows; a late commit inside the safety lag;
SIGKILL mid-batch and restart; the database connection killed; a bad value dead-lettered
with table, key and field; modern mode's mark statement; legacy mode's raw-only copy.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.ficus_proc import fast_ingest_state, free_port, terminate
from tests.odbc_db import COLUMNS, GOOD, UsageTable, usage_mapping, usage_table
from tests.test_service_mllp import read_subject

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120), pytest.mark.usefixtures("ledger_balances")]
REPO = Path(__file__).resolve().parent.parent
USAGE = "canonical.supply.usage.recorded"


@pytest.fixture(params=["postgresql", "mariadb"])
def db(request: pytest.FixtureRequest) -> Iterator[UsageTable]:
    with usage_table(request.param) as table:
        yield table


async def canonical(url: str, subject: str = USAGE) -> int:
    return await stream_count(url, names.STREAM_CANONICAL if not subject.startswith("shadow.") else
                              names.STREAM_SHADOW, subject)


async def record_keys(url: str, stream: str = names.STREAM_CANONICAL) -> tuple[list[str], set[str]]:
    """The record_key of every stored event (in stream order) and the set of event ids."""
    keys: list[str] = []
    ids: set[str] = set()
    if await stream_count(url, stream) == 0:
        return keys, ids
    done = asyncio.Event()

    async def take(msg: Any) -> None:
        # A callback, not next_msg(): 100,000 messages are read in about a second.
        event = json.loads(msg.data)
        keys.append(event["data"]["record_key"])
        ids.add(event["id"])
        if msg.metadata.num_pending == 0:
            done.set()

    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().subscribe(">", stream=stream, ordered_consumer=True, cb=take,
                                             pending_msgs_limit=-1)
        await asyncio.wait_for(done.wait(), 30)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return keys, ids


def expected_keys(db: UsageTable, ids: range) -> list[str]:
    return [f"{db.table}:{i}" for i in ids]


async def test_100k_rows_inserted_while_polling_are_each_published_once(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    rows = 100_000
    cfg = make_config(nats_server.url, [db.interface("usage", batch_size=5000)], state_dir=str(tmp_path))
    async with service_factory(cfg) as svc:
        writer = threading.Thread(target=db.insert_many, args=(rows, 2500))
        writer.start()
        try:
            await wait_for(lambda: canonical(nats_server.url), timeout=20)  # polling while rows arrive
            assert writer.is_alive() or await canonical(nats_server.url) < rows
        finally:
            await asyncio.to_thread(writer.join)
        # A count, not a speed (bench/ measures that): the full suite beside benchmarks took over 60 s.
        await wait_for(lambda: _equals(canonical(nats_server.url), rows), timeout=180, interval=0.2)
        await asyncio.sleep(1.5)  # past the safety lag: nothing more comes
        stats = svc.interfaces["usage"].stats
        assert (stats.received, stats.published, stats.dead_lettered) == (rows, rows, 0)
        checkpoint = svc.interfaces["usage"].details()["checkpoint"]
        assert checkpoint == {"last_key": rows, "last_ts": None}
    keys, ids = await record_keys(nats_server.url)
    assert len(keys) == len(ids) == rows
    assert sorted(keys, key=lambda k: int(k.rsplit(":", 1)[1])) == expected_keys(db, range(1, rows + 1))


@pytest.mark.parametrize("watermark", ["incrementing", "timestamp+key"])
async def test_row_committed_late_within_the_safety_lag_is_not_skipped(
    db: UsageTable, watermark: str, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface = db.interface("usage", watermark=watermark, timestamp_column="ts", safety_lag_seconds=2)
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path))
    await asyncio.to_thread(db.insert, 1)
    async with service_factory(cfg):
        await wait_for(lambda: canonical(nats_server.url), timeout=10)
        slow = await asyncio.to_thread(db.connect, False)
        try:
            await asyncio.to_thread(slow.cursor().execute, f"INSERT INTO {db.table} ({COLUMNS}) VALUES ({GOOD})")
            await asyncio.to_thread(db.insert, 1)  # key 3 commits while key 2 is still open
            await asyncio.sleep(1.0)
            assert await canonical(nats_server.url) == 1, "key 3 published while key 2 was uncommitted"
            await asyncio.to_thread(slow.commit)
        finally:
            await asyncio.to_thread(slow.close)
        await wait_for(lambda: _equals(canonical(nats_server.url), 3), timeout=10)
    keys, _ = await record_keys(nats_server.url)
    assert keys == expected_keys(db, range(1, 4))


async def test_bad_value_is_dead_lettered_with_table_key_and_field(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    await asyncio.to_thread(db.insert, 2)
    await asyncio.to_thread(db.insert, 1, "12x")  # id 3
    await asyncio.to_thread(db.insert, 2)
    cfg = make_config(nats_server.url, [db.interface("usage", route="shadow")], state_dir=str(tmp_path))
    async with service_factory(cfg) as svc:
        await wait_for(lambda: _equals(canonical(nats_server.url, "shadow." + USAGE), 4), timeout=10)
        await wait_for(lambda: stream_count(nats_server.url, names.STREAM_DLQ), timeout=5)
        stats = svc.interfaces["usage"].stats
        assert (stats.received, stats.shadow_published, stats.dead_lettered, stats.published) == (5, 4, 1, 0)
        assert (stats.parity.samples, stats.parity.disagree) == (5, 1), "shadow evidence for the flip gate"
    (letter,) = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("usage"))
    assert letter["reason"].startswith(f"{db.table} row id=3: quantity: ")
    assert letter["unit"] == f"{db.table}:3" and letter["mode"] == "shadow"
    assert letter["facility"] == "NORTH" and letter["raw"].startswith("jetstream://FICUS_RAW/")
    assert "12x" not in json.dumps(letter), "dead letters carry no row values"
    keys, _ = await record_keys(nats_server.url, names.STREAM_SHADOW)
    assert keys == [f"{db.table}:{i}" for i in (1, 2, 4, 5)]
    assert await canonical(nats_server.url) == 0, "shadow publishes nothing live"
    assert await db_exported(db) == [], "shadow never marks"


async def db_exported(db: UsageTable) -> list[int]:
    rows = await asyncio.to_thread(db.execute, f"SELECT id FROM {db.table} WHERE exported = 1 ORDER BY id")
    return [int(row[0]) for row in rows]


async def test_modern_mark_statement_marks_exactly_the_published_rows(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    await asyncio.to_thread(db.insert, 3)
    await asyncio.to_thread(db.insert, 1, "abc")  # id 4: dead-lettered, left for the legacy job
    await asyncio.to_thread(db.insert, 3)
    mark = f"UPDATE {db.table} SET exported = 1 WHERE id = ?"
    cfg = make_config(nats_server.url, [db.interface("usage", mark_statement=mark, batch_size=4)],
                      state_dir=str(tmp_path))
    async with service_factory(cfg) as svc:
        await wait_for(lambda: _equals(canonical(nats_server.url), 6), timeout=10)
        await wait_for(lambda: svc.interfaces["usage"].details()["checkpoint"] == {"last_key": 7, "last_ts": None},
                       timeout=5)
    assert await db_exported(db) == [1, 2, 3, 5, 6, 7]


async def test_legacy_mode_archives_rows_raw_and_publishes_nothing(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    await asyncio.to_thread(db.insert, 5)
    mark = f"UPDATE {db.table} SET exported = 1 WHERE id = ?"
    cfg = make_config(nats_server.url, [db.interface("usage", route="legacy", mark_statement=mark)],
                      state_dir=str(tmp_path))
    async with service_factory(cfg) as svc:
        await wait_for(lambda: svc.interfaces["usage"].details()["checkpoint"] == {"last_key": 5, "last_ts": None},
                       timeout=10)
    (raw,) = await read_subject(nats_server.url, names.STREAM_RAW, names.raw_subject("usage"))
    assert (raw["table"], raw["first_key"], raw["last_key"]) == (db.table, 1, 5)
    assert [row["id"] for row in raw["rows"]] == [1, 2, 3, 4, 5]
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 0
    assert await stream_count(nats_server.url, names.STREAM_SHADOW) == 0
    assert await db_exported(db) == [], "the legacy job stays the only writer"


async def test_killed_database_connection_resumes_from_the_checkpoint(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    await asyncio.to_thread(db.insert, 10)
    cfg = make_config(nats_server.url, [db.interface("usage")], state_dir=str(tmp_path),
                      api={"tokens": {"viewer": "view-secret"}})
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        await wait_for(lambda: _equals(canonical(nats_server.url), 10), timeout=10)
        (raw,) = await read_subject(nats_server.url, names.STREAM_RAW, names.raw_subject("usage"))
        await asyncio.to_thread(db.kill, int(raw["rows"][0]["conn_id"]))
        await asyncio.to_thread(db.insert, 10)
        await wait_for(lambda: _equals(canonical(nats_server.url), 20), timeout=15)

        async def interface_view() -> dict[str, Any]:
            resp = await http.get(f"{svc.api_url}/api/v1/interfaces",
                                  headers={"Authorization": "Bearer view-secret"})
            (found,) = (await resp.json())["interfaces"]
            return dict(found)

        async def checkpointed() -> dict[str, Any] | None:
            # The checkpoint follows the events' acknowledgement (and the ledger deltas after them).
            found = await interface_view()
            return found if found["checkpoint"] == {"last_key": 20, "last_ts": None} else None

        view = await wait_for(checkpointed, timeout=10)
    assert view["poller"]["reconnects"] >= 1 and view["poller"]["connected"]
    assert view["poller"]["last_error"] and view["poller"]["last_poll_at"]
    assert view["checkpoint"] == {"last_key": 20, "last_ts": None}
    keys, ids = await record_keys(nats_server.url)
    assert keys == expected_keys(db, range(1, 21)) and len(ids) == 20


def run_config(tmp: Path, db: UsageTable, nats_url: str, api_port: int = 0) -> Path:
    iface = db.interface("usage", batch_size=5000)
    mapping = iface.pop("mapping")
    lines = [f"{k} = {json.dumps(v)}" for k, v in iface.items()]
    fields = ",\n".join(
        "  { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in spec.items()) + " }" for spec in mapping["fields"]
    )
    conf = tmp / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp / 'state'}"
log_level = "WARNING"
[nats]
url = "{nats_url}"
fast_ingest = true
[api]
listen = "127.0.0.1:{api_port}"
[[interfaces]]
{chr(10).join(lines)}
[interfaces.mapping]
target = "supply_usage"
facility_field = "facility"
fields = [
{fields}
]
""")
    return conf


async def test_kill_mid_batch_then_restart_publishes_each_row_once(
    db: UsageTable, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    rows = 40_000
    await asyncio.to_thread(db.insert_many, rows, 10_000)
    api_port = free_port()
    cmd = [sys.executable, "-m", "router.cli", "run", "-c", str(run_config(tmp_path, db, nats_server.url, api_port))]
    # Logs go to files, not unread pipes: a full pipe would block the service mid-run.
    with (tmp_path / "first.log").open("wb") as errfile:
        first = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=errfile)
        try:
            await wait_for(lambda: canonical(nats_server.url), timeout=120, interval=0.01)
            first.send_signal(signal.SIGKILL)
            await first.wait()
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
    published = await canonical(nats_server.url)
    assert 0 < published < rows, f"killed mid-run ({published} events)"

    log = tmp_path / "second.log"
    with log.open("wb") as errfile:
        second = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=errfile)
        try:
            await wait_for(lambda: _equals(canonical(nats_server.url), rows), timeout=180, interval=0.2)
            # The rows went as fast-ingest batches (nats-server 2.14+), not one message at a time.
            ingest, batches = await fast_ingest_state(api_port)
        finally:
            await terminate(second)
    err = log.read_bytes()
    keys, ids = await record_keys(nats_server.url)
    assert len(keys) == len(ids) == rows, err.decode()[-2000:]
    assert set(keys) == set(expected_keys(db, range(1, rows + 1)))
    assert await stream_count(nats_server.url, names.STREAM_DLQ) == 0
    assert ingest == "fast-ingest" and isinstance(batches, int) and batches > 1, (ingest, batches)


def test_check_reports_a_missing_mapping_field_of_an_odbc_interface(tmp_path: Path) -> None:
    mapping = usage_mapping()
    fields = ", ".join(
        "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in spec.items()) + " }"
        for spec in mapping["fields"] if spec["field"] != "unit_cost"
    )
    conf = tmp_path / "ficus.toml"
    conf.write_text(f"""
[[interfaces]]
name = "materials-usage"
kind = "odbc"
connection_string = "DRIVER={{PostgreSQL Unicode}};SERVER=db;DATABASE=mm"
query = "SELECT * FROM usage"
table = "usage"
key_column = "id"
[interfaces.mapping]
target = "supply_usage"
fields = [{fields}]
""")
    result = subprocess.run([sys.executable, "-m", "router.cli", "check", "-c", str(conf)], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert "interfaces[materials-usage].mapping" in result.stderr and "unit_cost" in result.stderr, result.stderr


async def _equals(count: Any, want: int) -> bool:
    return bool(await count == want)


async def test_next_batch_is_archived_and_translated_while_one_commits(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """Pipelined commits: batch N+1 is read, archived and translated while batch N is committed,
    and is committed only after N's checkpoint is stored (each commit starts from the one before)."""
    cfg = make_config(nats_server.url, [db.interface("usage", batch_size=1000)], state_dir=str(tmp_path))
    spans: list[tuple[str, float, float, Any]] = []
    started_from: list[tuple[Any, Any]] = []
    async with service_factory(cfg) as svc:
        pipeline = svc.interfaces["usage"].pipeline
        prepare_of, process_of = pipeline._prepare, pipeline.process

        async def prepare(batch: Any) -> Any:
            t = time.perf_counter()
            out = await prepare_of(batch)
            spans.append(("prepare", t, time.perf_counter(), batch.keys[0]))
            return out

        async def process(batch: Any, prepared: Any = None) -> Any:
            # What is stored when a batch's commit starts: the checkpoint after the batch before it.
            started_from.append((pipeline.checkpoint.last_key if pipeline.checkpoint else None, batch.keys[0]))
            t = time.perf_counter()
            stored = await process_of(batch, prepared)
            spans.append(("process", t, time.perf_counter(), batch.keys[0]))
            return stored

        pipeline._prepare, pipeline.process = prepare, process
        await asyncio.to_thread(db.insert_many, 4000, 1000)
        await wait_for(lambda: _equals(canonical(nats_server.url), 4000), timeout=60)
    keys, ids = await record_keys(nats_server.url)
    assert len(keys) == len(ids) == 4000
    assert all(before is None or before == first - 1 for before, first in started_from), started_from
    # A batch prepared while another one (the batch before it) was being committed.
    overlapped = [k for what, start, _, k in spans if what == "prepare" and any(
        w == "process" and other != k and s < start < end for w, s, end, other in spans)]
    assert overlapped, spans
