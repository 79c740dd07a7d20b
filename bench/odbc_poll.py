"""Benchmark OdbcPoller.next_batch over a real database through ODBC.

Creates a uniquely named table, fills it server-side with ``--rows`` rows (default
1,000,000; PostgreSQL ``generate_series`` or MariaDB's ``seq_1_to_N``), then reads it
all from an empty checkpoint with ``next_batch`` and drops the table. Prints the fill
time, rows/s and batches/s of the read, and peak RSS (``resource.getrusage``; run one
configuration per process, since peak RSS never goes down).

    .venv/bin/python bench/odbc_poll.py --rows 200000
    .venv/bin/python bench/odbc_poll.py --rows 200000 --mode timestamp+key --db mariadb

JSON mode (bench.run's odbc-ratio section, issue 19's "ODBC end to end >= 70 % of poll plus
map"): ``--table T --fill --rows N``, then ``--measure map`` (the ceiling: the poller reading,
each row mapped and serialised, dropped) and ``--measure ficus --nats URL`` (the odbc interface
of a Service end to end), then ``--drop``.
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


SUPPLY_MAPPING = {
    "target": "supply_usage", "key": ["item_id"], "facility_field": "facility", "timezone": "UTC",
    "fields": [
        {"field": "item_id", "column": "item"}, {"field": "quantity", "column": "qty"},
        {"field": "unit_of_measure", "default": "EA"}, {"field": "unit_cost", "column": "price"},
        {"field": "department", "column": "ward"}, {"field": "facility", "default": "NORTH"},
        {"field": "used_at", "column": "ts", "type": "datetime"},
    ],
}


async def read_to_jetstream(settings: OdbcSettings, url: str, table: str) -> tuple[int, int, float]:
    """End to end without the router: poll, map each row (canonical.records.map_record, supply
    usage), publish every event with its Nats-Msg-Id (through the store's FastPublisher, in the
    pipeline's chunks), await the batch's PubAcks,
    then advance the checkpoint - what an odbc interface in modern mode does per batch, including
    reading the next batch while this one is mapped and acknowledged."""
    from datetime import UTC, datetime

    import nats

    from canonical.context import TranslationContext
    from canonical.records import RecordMapping, map_record
    from router.odbc_pipeline import PUBLISH_CHUNK
    from router.publisher import FastPublisher
    from router.store import Outgoing

    mapping = RecordMapping.model_validate(SUPPLY_MAPPING)
    columns = [(spec.field, (spec.column or "").lower()) for spec in mapping.fields]
    ctx = TranslationContext("bench-odbc", "live", f"odbc:{table}", datetime.now(UTC))
    nc = await nats.connect(url, pending_size=8 * 1024 * 1024)
    js = nc.jetstream(publish_async_max_pending=4096)
    stream = f"ODBC{uuid.uuid4().hex[:8].upper()}"
    from nats.js.api import StreamConfig

    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"], duplicate_window=600))
    events = 0
    checkpoint = Checkpoint()
    fp = FastPublisher(nc)
    prefix = stream.lower()
    try:
        async with OdbcPoller("bench", settings) as poller:
            started = time.perf_counter()
            ahead = asyncio.ensure_future(poller.next_batch(checkpoint))
            while (batch := await ahead) is not None:
                # As OdbcPipeline.run: the read overlaps this batch's mapping and PubAcks; its rows
                # are published only after them.
                ahead = asyncio.ensure_future(poller.next_batch(batch.checkpoint_after))
                items: list[Outgoing] = []
                for n, row in enumerate(batch.rows):
                    values = {f: row.get(c) if c else None for f, c in columns}
                    for event in map_record(values, mapping, ctx, unit=table, index=events + n,
                                            locator=f"row id={batch.keys[n]}"):
                        items.append(Outgoing(f"{prefix}.{event.nats_subject()}", event.to_json(), event.id,
                                              {"Ficus-Interface": "bench-odbc", "Ficus-Event-Type": event.type}))
                for start in range(0, len(items), PUBLISH_CHUNK):
                    await fp.publish(items[start:start + PUBLISH_CHUNK], 10.0)
                events += len(items)
                checkpoint = batch.checkpoint_after
            elapsed = time.perf_counter() - started
        stored = (await js.stream_info(stream)).state.messages
        assert stored == events, (stored, events)
    finally:
        await fp.stop()
        await js.delete_stream(stream)
        await nc.close()
    return events, 0, elapsed


async def poll_and_map(settings: OdbcSettings, table: str) -> dict[str, Any]:
    """The ceiling of the odbc interface: the same poller reading the same rows (the next batch
    read while one is mapped, as OdbcPipeline.run does), each row mapped as the pipeline maps it
    (``row_values`` + ``map_record``, the SUPPLY_MAPPING the interface uses), every event
    serialised with ``to_json``, then dropped: no archive, ledger, checkpoint nor publish."""
    from datetime import UTC, datetime

    from canonical.context import TranslationContext
    from canonical.records import RecordMapping, map_record, row_values

    mapping = RecordMapping.model_validate(SUPPLY_MAPPING)
    ctx = TranslationContext("bench-odbc", "live", f"odbc:{table}", datetime.now(UTC))
    rows = events = size = 0
    async with OdbcPoller("bench", settings) as poller:
        started = time.perf_counter()
        cpu = time.process_time()
        ahead = asyncio.ensure_future(poller.next_batch(Checkpoint()))
        first: tuple[float, int] | None = None
        while (batch := await ahead) is not None:
            if first is None:
                first = (time.perf_counter(), len(batch.rows))
            ahead = asyncio.ensure_future(poller.next_batch(batch.checkpoint_after))
            for row, key in zip(batch.rows, batch.keys, strict=True):
                for event in map_record(row_values(row, mapping.fields), mapping, ctx, unit=table,
                                        index=key if isinstance(key, int) else 0, locator=f"{table} row id={key}"):
                    size += len(event.to_json())
                    events += 1
            rows += len(batch.rows)
        ended = time.perf_counter()
        cpu = time.process_time() - cpu
    return _timed(rows, events, started, first, ended, cpu)


def _timed(rows: int, events: int, started: float, first: tuple[float, int] | None, ended: float,
           cpu: float) -> dict[str, Any]:
    """Whole-run and steady rates: ``steady_rows_per_s`` counts from the first batch in hand
    (its rows left out), so a start-up (connecting, a service's streams) weighs on neither side."""
    seconds = ended - started
    out: dict[str, Any] = {"rows": rows, "events": events, "seconds": round(seconds, 2),
                           "rows_per_s": round(rows / seconds) if seconds else 0,
                           "process_cpu_s": round(cpu, 2)}
    if first is not None and ended > first[0]:
        out["steady_rows_per_s"] = round((rows - first[1]) / (ended - first[0]))
    return out


async def through_ficus(args: argparse.Namespace, connection_string: str, table: str) -> dict[str, Any]:
    """End to end through Ficus's own path: a Service (in this process, as bench/file_pipeline.py)
    with one odbc interface in modern mode on the table, on the nats-server at ``--nats``
    (fast-ingest per ``--fast-ingest``): poll, archive raw chunks, map, publish events and ledger
    deltas, PubAcks, checkpoint. Done when the stored checkpoint is the table's last key."""
    import tempfile

    from router.config import parse_config
    from router.odbc_pipeline import OdbcPipeline
    from router.service import Service

    with pyodbc.connect(connection_string, autocommit=True) as conn:
        last = int(conn.cursor().execute(f"SELECT MAX(id) FROM {table}").fetchone()[0])
    iface = {
        "name": "bench-odbc", "kind": "odbc", "connection_string": connection_string,
        "query": f"SELECT id, item, qty, price, ward, ts FROM {table}", "table": table, "key_column": "id",
        "safety_lag_seconds": 0, "batch_size": args.batch, "poll_seconds": 0.05, "limit_clause": args.limit_clause,
        "route": "modern", "mapping": SUPPLY_MAPPING,
    }
    with tempfile.TemporaryDirectory(prefix="ficus-bench-odbc-") as state:
        cfg = parse_config({"state_dir": state, "log_level": "WARNING", "api": {"listen": "127.0.0.1:0"},
                            "nats": {"url": args.nats, "fast_ingest": args.fast_ingest == "on"},
                            "interfaces": [iface]}, "bench")
        started = time.perf_counter()
        cpu = time.process_time()
        async with Service(cfg) as svc:
            pipeline = svc.interfaces["bench-odbc"].pipeline
            assert isinstance(pipeline, OdbcPipeline)
            stats = pipeline.stats
            first: tuple[float, int] | None = None
            # Polled every 2 ms: the service's own counters and checkpoint, no extra NATS traffic.
            while pipeline.checkpoint is None or pipeline.checkpoint.last_key != last:
                if first is None and stats.received:
                    first = (time.perf_counter(), stats.received)
                await asyncio.sleep(0.002)
            ended = time.perf_counter()
            cpu = time.process_time() - cpu
            out = _timed(stats.received, stats.published, started, first, ended, cpu)
            out["ingest"] = svc.store.ingest_mode
            out["batches"] = pipeline.batches
    return out


def fetch_only(connection_string: str, table: str, batch: int) -> tuple[int, float]:
    """The driver's ceiling: one SELECT ordered by key, fetchmany until done."""
    started = time.perf_counter()
    rows = 0
    with pyodbc.connect(connection_string) as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, item, qty, price, ward, ts FROM {table} ORDER BY id")
        while chunk := cur.fetchmany(batch):
            rows += len(chunk)
    return rows, time.perf_counter() - started


def json_mode(args: argparse.Namespace) -> None:
    """bench.run's entry: --fill / --drop a named table, or one measurement (--measure)."""
    import json

    connection_string = args.connection_string or CONNECTION_STRINGS[args.db]
    table = args.table
    if args.fill:
        execute(connection_string, CREATE[args.db].format(t=table))
        started = time.perf_counter()
        execute(connection_string, FILL[args.db].format(t=table, n=int(args.rows)))
        execute(connection_string, f"ANALYZE {'TABLE ' if args.db == 'mariadb' else ''}{table}")
        print(json.dumps({"filled": args.rows, "seconds": round(time.perf_counter() - started, 1)}))
        return
    if args.drop:
        execute(connection_string, f"DROP TABLE IF EXISTS {table}")
        print(json.dumps({"dropped": table}))
        return
    settings = OdbcSettings(
        connection_string=connection_string, query=f"SELECT id, item, qty, price, ward, ts FROM {table}",
        mode="incrementing", key_column="id", timestamp_column=None, safety_lag_seconds=0,
        batch_size=args.batch, limit_clause=cast(Any, args.limit_clause),
    )
    if args.measure in ("map", "ficus"):
        work = poll_and_map(settings, table) if args.measure == "map" else through_ficus(args, connection_string, table)
        try:  # the event loop `ficus run` uses
            import uvloop

            result = uvloop.run(work)
        except ImportError:
            result = asyncio.run(work)
        print(json.dumps({"mode": args.measure, **result, "peak_rss_mib": round(peak_rss_mib(), 1)}))
        return
    if args.measure == "fetch":
        rows, seconds = fetch_only(connection_string, table, args.batch)
    elif args.measure == "poll":
        rows, _, seconds = asyncio.run(read_all(settings))
    else:
        rows, _, seconds = asyncio.run(read_to_jetstream(settings, args.nats, table))
    print(json.dumps({"mode": args.measure, "rows": rows, "seconds": round(seconds, 2),
                      "rows_per_s": round(rows / seconds), "peak_rss_mib": round(peak_rss_mib(), 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--db", choices=sorted(CONNECTION_STRINGS), default="postgresql")
    parser.add_argument("--mode", choices=["incrementing", "timestamp+key"], default="incrementing")
    parser.add_argument("--limit-clause", choices=["offset-fetch", "none"], default="offset-fetch")
    parser.add_argument("--connection-string", help="overrides --db's default (driver options, e.g. UseDeclareFetch=1)")
    parser.add_argument("--table", help="JSON mode (bench.run): an existing table name")
    parser.add_argument("--fill", action="store_true")
    parser.add_argument("--drop", action="store_true")
    parser.add_argument("--measure", choices=["fetch", "poll", "map", "jetstream", "ficus"],
                        help="map: poll + map + to_json, dropped (the ceiling of ficus); ficus: the odbc "
                        "interface of a Service end to end; jetstream: the older script path")
    parser.add_argument("--nats", help="NATS URL for --measure jetstream|ficus")
    parser.add_argument("--fast-ingest", choices=["on", "off"], default="on", help="--measure ficus: nats.fast_ingest")
    args = parser.parse_args()
    if args.table:
        json_mode(args)
        return
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
