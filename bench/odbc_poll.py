"""Benchmark OdbcPoller.next_batch over a real database through ODBC.

Creates a uniquely named table, fills it server-side with ``--rows`` rows (default
1,000,000; PostgreSQL ``generate_series`` or MariaDB's ``seq_1_to_N``), then reads it
all from an empty checkpoint with ``next_batch`` and drops the table. Prints the fill
time, rows/s and batches/s of the read, and peak RSS (``resource.getrusage``; run one
configuration per process, since peak RSS never goes down).

    .venv/bin/python bench/odbc_poll.py --rows 200000
    .venv/bin/python bench/odbc_poll.py --rows 200000 --mode timestamp+key --db mariadb
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from typing import Any, Literal, cast

import pyodbc

from wrappers.odbc_poller import OdbcPoller, OdbcSettings
from wrappers.watermark import Checkpoint

CONNECTION_STRINGS = {
    "postgresql": "DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=5432;DATABASE=test;UID=postgres;",
    "mariadb": "DRIVER={MariaDB Unicode};SERVER=127.0.0.1;PORT=3306;DATABASE=test;UID=root;PWD=;",
}

CREATE = {
    "postgresql": "CREATE TABLE {t} (id BIGSERIAL PRIMARY KEY, item VARCHAR(40), qty NUMERIC(10, 2), "
    "price NUMERIC(12, 2), ward VARCHAR(20), ts TIMESTAMP(6) NOT NULL)",
    "mariadb": "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(40), qty NUMERIC(10, 2), "
    "price NUMERIC(12, 2), ward VARCHAR(20), ts DATETIME(6) NOT NULL)",
}

FILL = {
    "postgresql": "INSERT INTO {t} (item, qty, price, ward, ts) SELECT 'item-' || g, g % 7, g * 0.01, "
    "'W' || (g % 30), TIMESTAMP '2024-01-01' + g * INTERVAL '1 millisecond' FROM generate_series(1, {n}) g",
    "mariadb": "INSERT INTO {t} (item, qty, price, ward, ts) SELECT CONCAT('item-', seq), seq % 7, seq * 0.01, "
    "CONCAT('W', seq % 30), TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq * 1000 MICROSECOND FROM seq_1_to_{n}",
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def execute(connection_string: str, sql: str) -> None:
    with pyodbc.connect(connection_string, autocommit=True) as conn:
        conn.cursor().execute(sql)


async def read_all(settings: OdbcSettings) -> tuple[int, int, float]:
    """Rows and batches read from an empty checkpoint, and the seconds it took."""
    rows = batches = 0
    checkpoint = Checkpoint()
    async with OdbcPoller("bench", settings) as poller:
        started = time.perf_counter()
        while (batch := await poller.next_batch(checkpoint)) is not None:
            rows += len(batch.rows)
            batches += 1
            checkpoint = batch.checkpoint_after
        return rows, batches, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--db", choices=sorted(CONNECTION_STRINGS), default="postgresql")
    parser.add_argument("--mode", choices=["incrementing", "timestamp+key"], default="incrementing")
    parser.add_argument("--limit-clause", choices=["offset-fetch", "none"], default="offset-fetch")
    parser.add_argument("--connection-string", help="overrides --db's default (driver options, e.g. UseDeclareFetch=1)")
    args = parser.parse_args()

    connection_string = args.connection_string or CONNECTION_STRINGS[args.db]
    table = f"ficus_bench_{uuid.uuid4().hex[:10]}"
    execute(connection_string, CREATE[args.db].format(t=table))
    try:
        started = time.perf_counter()
        execute(connection_string, FILL[args.db].format(t=table, n=int(args.rows)))
        if args.mode == "timestamp+key":
            execute(connection_string, f"CREATE INDEX {table}_ts ON {table} (ts, id)")
        execute(connection_string, f"ANALYZE {'TABLE ' if args.db == 'mariadb' else ''}{table}")  # as in production
        fill_seconds = time.perf_counter() - started
        settings = OdbcSettings(
            connection_string=connection_string,
            query=f"SELECT id, item, qty, price, ward, ts FROM {table}",
            mode=cast(Literal["incrementing", "timestamp+key"], args.mode),
            key_column="id",
            timestamp_column="ts" if args.mode == "timestamp+key" else None,
            safety_lag_seconds=0,
            batch_size=args.batch,
            limit_clause=cast(Any, args.limit_clause),
        )
        rss_before = peak_rss_mib()
        rows, batches, seconds = asyncio.run(read_all(settings))
    finally:
        execute(connection_string, f"DROP TABLE {table}")
    print(
        f"{args.db} {args.mode} limit={args.limit_clause} batch={args.batch}: filled {args.rows:,} rows "
        f"in {fill_seconds:.1f}s; read {rows:,} rows in {batches:,} batches in {seconds:.2f}s = "
        f"{rows / seconds:,.0f} rows/s, {batches / seconds:,.0f} batches/s; "
        f"peak RSS {rss_before:.0f} MiB before reading, {peak_rss_mib():.0f} MiB after"
    )


if __name__ == "__main__":
    main()
