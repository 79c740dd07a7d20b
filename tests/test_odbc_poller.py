"""ODBC poller against real PostgreSQL and MariaDB through their Debian ODBC drivers.

Each test creates its own uniquely named table and drops it. A database whose driver or
server is unavailable is skipped with the reason. Pure watermark logic is tested first,
without a database.
"""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from wrappers.odbc_poller import Batch, OdbcPoller, OdbcSettings, QueryError
from wrappers.watermark import Checkpoint, GapTracker, repeats_checkpoint

pyodbc = pytest.importorskip("pyodbc")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


# ---------------------------------------------------------------- pure logic


def test_checkpoint_json_round_trip() -> None:
    for cp in (Checkpoint(), Checkpoint(42, None), Checkpoint("A-7", "2024-05-01T10:00:00.123456")):
        assert Checkpoint.from_json(cp.to_json()) == cp
    with pytest.raises(ValueError):
        Checkpoint.from_json('{"last_key": true}')
    with pytest.raises(ValueError):
        Checkpoint.from_json('{"last_key": 1, "last_ts": "yesterday"}')


def test_gap_holds_rows_until_the_lag_then_accepts_it() -> None:
    gaps = GapTracker()
    assert gaps.admit([1, 2, 3], 0, now=100.0, lag=5) == 3  # contiguous: no wait
    assert gaps.admit([5, 6], 3, now=100.0, lag=5) == 0  # 4 missing: hold 5 and 6
    assert gaps.admit([4, 5, 6], 3, now=101.0, lag=5) == 3  # 4 committed late: all, in order
    assert gaps.admit([9, 10], 6, now=102.0, lag=5) == 0
    assert gaps.admit([9, 10], 6, now=107.0, lag=5) == 2  # hole older than the lag: accepted
    assert gaps.admit(["b", "c"], "a", now=0.0, lag=1) == 0  # strings are never adjacent
    assert gaps.admit(["b", "c"], "a", now=1.0, lag=1) == 2


def test_rows_at_or_before_the_checkpoint_are_recognised() -> None:
    cp = Checkpoint(7, "2024-05-01T10:00:00.250000")
    stamp = datetime(2024, 5, 1, 10, 0, 0, 250000)
    assert repeats_checkpoint(7, stamp, cp) and repeats_checkpoint(3, stamp, cp)
    assert repeats_checkpoint(9, stamp - timedelta(microseconds=1), cp)
    assert not repeats_checkpoint(8, stamp, cp) and not repeats_checkpoint(1, stamp + timedelta(seconds=1), cp)
    assert repeats_checkpoint(7, None, Checkpoint(7)) and not repeats_checkpoint(8, None, Checkpoint(7))


# ---------------------------------------------------------------- databases


@dataclass
class Database:
    kind: str
    connection_string: str
    table: str
    serial: str
    ts_type: str
    conn_id: str
    seq_select: str

    def connect(self, autocommit: bool = True) -> Any:
        return pyodbc.connect(self.connection_string, autocommit=autocommit, timeout=5)

    def execute(self, sql: str, *params: object) -> None:
        with self.connect() as conn:
            conn.cursor().execute(sql, *params)

    def insert(self, count: int, per_tx: int = 50, ts: datetime | None = None) -> None:
        """Insert ``count`` rows in transactions of ``per_tx`` (explicit ts if given).

        An explicit ts is sent as text: MariaDB's driver drops the fraction of datetime parameters.
        """
        stamp = ts.isoformat(sep=" ") if ts else None
        with self.connect(autocommit=False) as conn:
            cur = conn.cursor()
            for start in range(0, count, per_tx):
                n = min(per_tx, count - start)
                if ts is None:
                    cur.executemany(f"INSERT INTO {self.table} (item, qty) VALUES (?, ?)", [("x", 1)] * n)
                else:
                    cur.executemany(f"INSERT INTO {self.table} (item, qty, ts) VALUES (?, ?, ?)", [("x", 1, stamp)] * n)
                conn.commit()

    def kill(self, conn_id: int) -> None:
        if self.kind == "postgresql":
            self.execute("SELECT pg_terminate_backend(?)", conn_id)
        else:
            self.execute(f"KILL {int(conn_id)}")

    def settings(self, mode: str = "incrementing", **kw: Any) -> OdbcSettings:
        base = OdbcSettings(
            connection_string=self.connection_string,
            query=f"SELECT id, item, qty, ts, {self.conn_id} AS conn_id FROM {self.table}",
            mode="incrementing",
            key_column="id",
            timestamp_column="ts" if mode == "timestamp+key" else None,
            safety_lag_seconds=0.5,
            batch_size=500,
            poll_seconds=0.05,
            query_timeout=10,
            reconnect_max_backoff=1,
        )
        return replace(base, mode=mode, **kw)


DATABASES = {
    "postgresql": dict(
        connection_string="DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres;",
        serial="BIGSERIAL PRIMARY KEY",
        ts_type="TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP",
        conn_id="pg_backend_pid()",
        seq_select="SELECT 'x', 1 FROM generate_series(1, ?)",
    ),
    "mariadb": dict(
        connection_string="DRIVER={MariaDB Unicode};SERVER=127.0.0.1;PORT=3306;DATABASE=test;UID=root;PWD=;",
        serial="BIGINT AUTO_INCREMENT PRIMARY KEY",
        ts_type="DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        conn_id="CONNECTION_ID()",
        seq_select="SELECT 'x', 1 FROM seq_1_to_{n}",
    ),
}


@pytest.fixture(params=sorted(DATABASES))
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    kind: str = request.param
    spec = DATABASES[kind]
    database = Database(kind=kind, table=f"ficus_poll_{uuid.uuid4().hex[:12]}", **spec)
    try:
        database.execute("SELECT 1")
    except pyodbc.Error as exc:
        pytest.skip(f"{kind} unavailable through ODBC ({spec['connection_string'].split(';')[0]}): {exc.args}")
    database.execute(
        f"CREATE TABLE {database.table} (id {database.serial}, item VARCHAR(40), qty NUMERIC(10, 2), "
        f"ts {database.ts_type})"
    )
    try:
        yield database
    finally:
        database.execute(f"DROP TABLE {database.table}")


async def collect(
    poller: OdbcPoller, checkpoint: Checkpoint, want: int, timeout: float = 30
) -> tuple[list[Any], Checkpoint]:
    """Keys of batches read until ``want`` keys arrived, and the last checkpoint."""
    keys: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(keys) < want:
            batch = await poller.wait_batch(checkpoint)
            keys += batch.keys
            checkpoint = batch.checkpoint_after
    return keys, checkpoint


MODES = ["incrementing", "timestamp+key"]


async def all_ready(db: Database, mode: str, count: int, timeout: float = 60) -> None:
    """Wait until a poller sees all `count` rows past the safety lag (a condition, not a sleep)."""
    async with OdbcPoller("usage-probe", db.settings(mode, batch_size=count + 1)) as probe:
        async with asyncio.timeout(timeout):
            while True:
                batch = await probe.next_batch(Checkpoint())
                if batch is not None and len(batch.keys) == count:
                    return
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", MODES)
async def test_every_row_exactly_once_while_inserting(db: Database, mode: str) -> None:
    inserter = threading.Thread(target=db.insert, args=(5000, 50))
    async with OdbcPoller("usage", db.settings(mode)) as poller:
        inserter.start()
        try:
            keys, last = await collect(poller, Checkpoint(), 5000, timeout=60)
        finally:
            await asyncio.to_thread(inserter.join)
        assert keys == list(range(1, 5001))
        assert await poller.next_batch(last) is None


@pytest.mark.parametrize("mode", MODES)
async def test_late_commit_inside_the_lag_is_not_skipped(db: Database, mode: str) -> None:
    await asyncio.to_thread(db.insert, 1, 1)
    async with OdbcPoller("usage", db.settings(mode, safety_lag_seconds=3)) as poller:
        first = await poller.wait_batch(Checkpoint())
        assert first.keys == [1]
        slow = await asyncio.to_thread(db.connect, False)
        try:
            await asyncio.to_thread(slow.cursor().execute, f"INSERT INTO {db.table} (item, qty) VALUES ('late', 1)")
            await asyncio.to_thread(db.insert, 1, 1)  # key 3 commits while key 2 is still open
            for _ in range(5):
                early = await poller.next_batch(first.checkpoint_after)
                assert early is None or 3 not in early.keys, "key 3 emitted while key 2 was uncommitted"
                await asyncio.sleep(0.1)
            await asyncio.to_thread(slow.commit)
        finally:
            await asyncio.to_thread(slow.close)
        keys, _ = await collect(poller, first.checkpoint_after, 2)
        assert keys == [2, 3]


async def test_same_timestamp_across_batch_boundaries(db: Database) -> None:
    stamp = datetime.now().replace(microsecond=250000) - timedelta(minutes=5)
    await asyncio.to_thread(db.insert, 5, 5, stamp)
    async with OdbcPoller("usage", db.settings("timestamp+key", batch_size=2)) as poller:
        batches: list[Batch] = []
        checkpoint = Checkpoint()
        while (batch := await poller.next_batch(checkpoint)) is not None:
            batches.append(batch)
            checkpoint = batch.checkpoint_after
    assert [b.keys for b in batches] == [[1, 2], [3, 4], [5]]
    assert {b.checkpoint_after.last_ts for b in batches} == {stamp.isoformat()}


@pytest.mark.parametrize("mode", MODES)
async def test_restart_from_stored_checkpoint(db: Database, mode: str) -> None:
    await asyncio.to_thread(db.insert, 1000, 200)
    await all_ready(db, mode, 1000)  # past the lag, so every batch below is a full one
    settings = db.settings(mode, batch_size=100)
    async with OdbcPoller("usage", settings) as poller:
        first, checkpoint = await collect(poller, Checkpoint(), 300)
        unacknowledged = await poller.next_batch(checkpoint)  # read but never stored
        assert unacknowledged is not None
    stored = checkpoint.to_json()
    async with OdbcPoller("usage", settings) as poller:
        rest, _ = await collect(poller, Checkpoint.from_json(stored), 700)
    assert first + rest == list(range(1, 1001))


@pytest.mark.parametrize("mode", MODES)
async def test_reconnects_after_the_connection_is_killed(db: Database, mode: str) -> None:
    await asyncio.to_thread(db.insert, 10, 10)
    async with OdbcPoller("usage", db.settings(mode, batch_size=4)) as poller:
        first = await poller.wait_batch(Checkpoint())
        await asyncio.to_thread(db.kill, int(first.rows[0]["conn_id"]))  # type: ignore[call-overload]
        await asyncio.to_thread(db.insert, 10, 10)
        rest, _ = await collect(poller, first.checkpoint_after, 16)
        status = poller.status
    assert first.keys + rest == list(range(1, 21))
    assert status.reconnects >= 1 and status.connected
    assert status.last_poll_at is not None


async def test_unknown_column_gives_query_error_naming_it(db: Database) -> None:
    async with OdbcPoller("usage", db.settings(key_column="usage_id")) as poller:
        with pytest.raises(QueryError, match="usage_id"):
            await poller.next_batch(Checkpoint())
    bad_query = f"SELECT id, quantity FROM {db.table}"
    async with OdbcPoller("usage", db.settings(query=bad_query)) as poller:
        with pytest.raises(QueryError, match="quantity"):
            await poller.next_batch(Checkpoint())
        assert poller.status.last_error is not None and "quantity" in poller.status.last_error


async def test_mark_exported_updates_the_batch_keys(db: Database) -> None:
    db.execute(f"ALTER TABLE {db.table} ADD exported INT DEFAULT 0 NOT NULL")
    await asyncio.to_thread(db.insert, 6, 6)
    mark = f"UPDATE {db.table} SET exported = 1 WHERE id = ?"
    async with OdbcPoller("usage", db.settings(batch_size=4, safety_lag_seconds=0, mark_statement=mark)) as poller:
        batch = await poller.wait_batch(Checkpoint())
        await poller.mark_exported(batch)
    with db.connect() as conn:
        marked = [r[0] for r in conn.cursor().execute(f"SELECT id FROM {db.table} WHERE exported = 1 ORDER BY id")]
    assert marked == [1, 2, 3, 4]


@pytest.mark.timeout(120)
async def test_memory_flat_reading_200k_rows(db: Database) -> None:
    n = 200_000
    fill = DATABASES[db.kind]["seq_select"].format(n=n)
    if db.kind == "postgresql":
        db.execute(f"INSERT INTO {db.table} (item, qty) {fill}", n)
    else:
        db.execute(f"INSERT INTO {db.table} (item, qty) {fill}")
    settings = db.settings(batch_size=1000, safety_lag_seconds=0)
    async with OdbcPoller("usage", settings) as poller:
        checkpoint, count = Checkpoint(), 0
        await poller.next_batch(Checkpoint())  # connect outside the measurement
        tracemalloc.start()
        started = time.monotonic()
        try:
            while (batch := await poller.next_batch(checkpoint)) is not None:
                count += len(batch.rows)
                checkpoint = batch.checkpoint_after
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == n
    assert checkpoint.last_key == n
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB over {time.monotonic() - started:.1f}s"


async def test_lossy_timestamp_binding_is_refused_not_looped(db: Database) -> None:
    if db.kind != "mariadb":
        pytest.skip("only MariaDB's driver drops the fraction of datetime parameters")
    stamp = datetime.now().replace(microsecond=250000) - timedelta(minutes=5)
    await asyncio.to_thread(db.insert, 3, 3, stamp)
    settings = db.settings("timestamp+key", batch_size=2, timestamp_binding="datetime")
    async with OdbcPoller("usage", settings) as poller:
        first = await poller.wait_batch(Checkpoint())
        with pytest.raises(QueryError, match="lost precision"):
            await poller.next_batch(first.checkpoint_after)


async def test_query_timeout_drops_the_connection_and_retries(db: Database) -> None:
    await asyncio.to_thread(db.insert, 1, 1)
    sleep = "pg_sleep(5) IS NOT NULL" if db.kind == "postgresql" else "SLEEP(5) = 0"
    settings = db.settings(query=f"SELECT id, ts FROM {db.table} WHERE {sleep}", query_timeout=1, safety_lag_seconds=0)
    async with OdbcPoller("usage", settings) as poller:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(poller.next_batch(Checkpoint()), 2.5)
        assert poller.status.last_error == "no answer within 1s"
