"""An odbc interface on the stage (router/stage.py), against a real nats-server and a real
PostgreSQL through its ODBC driver (skipped with the reason when absent): the facility canary
per row, and replay -- the raw chunks read back into the records the live path made (same
ledger keys, Msg-Ids, event ids and raw references), translated with the mapping and
reference tables of now, and published again by router/replay.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from router import ledger, names
from router.embedded_nats import EmbeddedNats
from router.odbc_pipeline import OdbcPipeline
from router.odbc_raw import raw_chunks, read_chunk
from router.replay import replay_since
from router.stage import Record
from router.stats import InterfaceStats
from tests.conftest import ServiceFactory, _read_all, make_config, stream_count, wait_for
from tests.odbc_db import COLUMNS, GOOD, UsageTable, usage_table
from tests.test_odbc_service import canonical, db_exported, record_keys
from tests.test_service_mllp import read_subject

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120), pytest.mark.usefixtures("ledger_balances")]
MSG_ID = "Nats-Msg-Id"


@pytest.fixture
def db() -> Iterator[UsageTable]:
    with usage_table("postgresql") as table:
        yield table


def insert(db: UsageTable, facility: str = "NORTH", qty: str = "2", extra: str = "") -> None:
    values = GOOD.replace("'2'", f"'{qty}'").replace("'NORTH'", f"'{facility}'")
    columns = COLUMNS + (", ext" if extra else "")
    db.execute(f"INSERT INTO {db.table} ({columns}) VALUES ({values}{', ' + extra if extra else ''})")


def stored_by_msg_id(messages: list[tuple[bytes, dict[str, str]]]) -> dict[str, dict[str, Any]]:
    return {headers[MSG_ID]: json.loads(data) for data, headers in messages}


async def replayed(pipeline: OdbcPipeline, since: datetime) -> tuple[list[Record], list[str], int]:
    """Every record replay_chunks yields, the chunks' labels and their units."""
    records: list[Record] = []
    labels: list[str] = []
    units = 0
    async for chunk in pipeline.replay_chunks(since):
        records += chunk.records
        labels.append(chunk.label)
        units += chunk.units
        assert chunk.batch == "" and len(chunk.records) <= 500
    return records, labels, units


def events_by_msg_id(records: list[Record]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        assert record.msg_ids is not None or not record.events
        for ev, msg_id in zip(record.events, record.msg_ids or [], strict=True):
            out[msg_id] = json.loads(ev.to_json())
    return out


async def test_facility_canary_routes_each_row_by_its_facility_column(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    mark = f"UPDATE {db.table} SET exported = 1 WHERE id = ?"
    cfg = make_config(nats_server.url, [db.interface("usage", route="shadow", mark_statement=mark)],
                      state_dir=str(tmp_path))
    async with service_factory(cfg) as svc:
        await svc.routes.set("usage", "modern", facility="NORTH", reason="canary", actor="test")
        await svc.routes.set("usage", "legacy", facility="SOUTH", reason="hold", actor="test")
        for facility in ("NORTH", "NORTH", "SOUTH", "SOUTH", "EAST"):
            await asyncio.to_thread(insert, db, facility)
        await asyncio.to_thread(insert, db, "NORTH", "12x")  # id 6: dead-lettered in modern
        await wait_for(lambda: svc.interfaces["usage"].details()["checkpoint"] == {"last_key": 6, "last_ts": None},
                       timeout=10)
        stats = svc.interfaces["usage"].stats
        assert (stats.received, stats.published, stats.shadow_published, stats.dead_lettered) == (6, 2, 1, 1)
        assert stats.parity.samples == 1, "only the row in shadow is parity evidence"
    keys, _ = await record_keys(nats_server.url)
    assert keys == [f"{db.table}:1", f"{db.table}:2"]
    keys, _ = await record_keys(nats_server.url, names.STREAM_SHADOW)
    assert keys == [f"{db.table}:5"]
    (letter,) = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("usage"))
    assert (letter["unit"], letter["mode"], letter["facility"]) == (f"{db.table}:6", "modern", "NORTH")
    assert await db_exported(db) == [1, 2], "only the canary facility's published rows are marked"

    # Ledger deltas keep the ids they had before the stage: one per row, from table and key.
    want: dict[int, tuple[str, str, ledger.Outcome]] = {
        1: ("modern", "NORTH", "published"), 2: ("modern", "NORTH", "published"),
        3: ("legacy", "SOUTH", "legacy"), 4: ("legacy", "SOUTH", "legacy"),
        5: ("shadow", "EAST", "published"), 6: ("modern", "NORTH", "dead_lettered")}
    deltas = stored_by_msg_id(await _read_all(nats_server.url, names.STREAM_LEDGER))
    expected = {ledger.unit_delta("usage", mode, f"odbc|{db.table}|{key}", facility, outcome).msg_id:
                (mode, facility, outcome) for key, (mode, facility, outcome) in want.items()}
    assert set(deltas) == set(expected)
    for msg_id, (mode, facility, outcome) in expected.items():
        (entry,) = deltas[msg_id]["u"]
        assert (deltas[msg_id]["m"], entry["f"], entry["o"]) == (mode, facility, outcome)


async def test_replay_gives_the_live_records_and_translates_with_the_tables_of_now(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    facilities = tmp_path / "facilities.csv"
    facilities.write_text("alias,facility\nNORTH,NORTH-CAMPUS\nSOUTH,SOUTH-CLINIC\n")
    # NUMERIC(12,8) 0.0000001 comes as Decimal('1.0E-7') and a timestamp feeds a string field:
    # both read back from the raw chunk as the driver gave them (router/odbc_raw.py).
    await asyncio.to_thread(db.execute, f"ALTER TABLE {db.table} ADD COLUMN ext NUMERIC(12, 8)")
    iface = db.interface("usage")
    iface["mapping"]["fields"] += [{"field": "extended_cost", "column": "ext"},
                                   {"field": "encounter_number", "column": "ts"}]
    for facility, qty in [("NORTH", "2"), ("NORTH", "2"), ("NORTH", "2"), ("NORTH", "12x"), ("SOUTH", "2"),
                          ("SOUTH", "3")]:
        await asyncio.to_thread(insert, db, facility, qty, "0.0000001")
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path),
                      reference={"facilities": str(facilities), "reload_seconds": 60})
    async with service_factory(cfg) as svc:
        await wait_for(lambda: svc.interfaces["usage"].details()["checkpoint"] == {"last_key": 6, "last_ts": None},
                       timeout=10)
        assert await canonical(nats_server.url) == 5
        pipeline = svc.interfaces["usage"].pipeline
        assert isinstance(pipeline, OdbcPipeline)
        live = stored_by_msg_id(await _read_all(nats_server.url, names.STREAM_CANONICAL))
        ((letter_data, letter_headers),) = await _read_all(nats_server.url, names.STREAM_DLQ)
        letter = json.loads(letter_data)

        records, labels, units = await replayed(pipeline, since)
        assert [r.key for r in records] == [f"odbc|{db.table}|{i}" for i in range(1, 7)]
        assert [r.locator for r in records] == [f"{db.table}:{i}" for i in range(1, 7)]
        assert [r.facility for r in records] == ["NORTH"] * 4 + ["SOUTH"] * 2
        assert labels == [f"{db.table} 1..6"] and units == 6
        assert all(r.mode is None for r in records), "replay routes them"
        bad = records[3]
        assert bad.error is not None and not bad.events and bad.error.reason.startswith(f"{db.table} row id=4: ")
        assert (bad.error.reason, bad.raw) == (letter["reason"], letter["raw"])
        dedupe = f"{bad.letter_id}|modern|untranslatable|{letter['reason']}"  # router/dlq.py
        assert letter_headers[MSG_ID] == "dlq-" + hashlib.sha256(dedupe.encode()).hexdigest()[:32]

        again = events_by_msg_id(records)
        assert set(again) == set(live), "the same Msg-Ids"
        for msg_id, event in again.items():
            before = live[msg_id]
            assert (event["id"], event["ficusraw"], event["data"]) == (before["id"], before["ficusraw"], before["data"])
            assert event["ficusfacility"] == before["ficusfacility"] in ("NORTH-CAMPUS", "SOUTH-CLINIC")
        assert {e["data"]["extended_cost"] for e in again.values()} == {"1.0E-7"}

        # The batch read again after a crash, archived again in other chunks: its rows replay once,
        # with the raw reference their events carry.
        ((raw, _),) = await _read_all(nats_server.url, names.STREAM_RAW)
        stored = read_chunk(raw)
        _, items = raw_chunks("usage", stored.table, stored.key_column, stored.rows[:2], stored.keys[:2], 1 << 20)
        await pipeline.stage.archive_many(items)
        assert len(await _read_all(nats_server.url, names.STREAM_RAW)) == 2
        twice, labels, units = await replayed(pipeline, since)
        assert [(r.key, r.raw) for r in twice] == [(r.key, r.raw) for r in records]
        assert labels == [f"{db.table} 1..6"] and units == 6

        # The reference table changes: the same records and ids, with the facility of now.
        facilities.write_text("alias,facility\nNORTH,NORTH-HOSPITAL\nSOUTH,SOUTH-CLINIC\n")
        assert svc.reference is not None and svc.reference.maybe_reload() == []
        changed = events_by_msg_id((await replayed(pipeline, since))[0])
        assert {m: e["id"] for m, e in changed.items()} == {m: e["id"] for m, e in live.items()}
        assert sorted(e["ficusfacility"] for e in changed.values()) == ["NORTH-HOSPITAL"] * 3 + ["SOUTH-CLINIC"] * 2
        assert [e["data"] for e in changed.values()] == [live[m]["data"] for m in changed]

        # The mapping changes (its time zone): the same ids, other used_at values.
        cfg_now = pipeline.cfg.model_copy(update={"mapping": pipeline.cfg.mapping.model_copy(
            update={"timezone": "UTC"})})
        remapped = OdbcPipeline(cfg_now, svc.store, svc.routes, pipeline.poller, InterfaceStats(),
                                pipeline.checkpoints, reference=svc.reference)
        moved = events_by_msg_id((await replayed(remapped, since))[0])
        assert {m: e["id"] for m, e in moved.items()} == {m: e["id"] for m, e in live.items()}
        for msg_id, event in moved.items():
            assert event["data"]["used_at"] != live[msg_id]["data"]["used_at"]
            assert {**event["data"], "used_at": None} == {**live[msg_id]["data"], "used_at": None}


async def test_replay_since_publishes_the_rows_again_under_their_event_ids(
    db: UsageTable, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    for qty in ("2", "2", "12x", "2"):
        await asyncio.to_thread(insert, db, "NORTH", qty)
    cfg = make_config(nats_server.url, [db.interface("usage")], state_dir=str(tmp_path))
    async with service_factory(cfg) as svc:
        await wait_for(lambda: svc.interfaces["usage"].details()["checkpoint"] == {"last_key": 4, "last_ts": None},
                       timeout=10)
        live = stored_by_msg_id(await _read_all(nats_server.url, names.STREAM_CANONICAL))
        dry = await replay_since(svc.running, "usage", since, dry_run=True)
        assert (dry.units, dry.replayed, dry.failed, dry.events) == (4, 3, 1, 3)
        assert dry.diff is not None and (dry.diff["unchanged"], dry.diff["changed"]) == (3, 0)
        assert dry.reasons == [f"{db.table}:3: {db.table} row id=3: quantity: not a plain decimal number"]
        assert await canonical(nats_server.url) == 3, "a dry run publishes nothing"
        done = await replay_since(svc.running, "usage", since)
        assert (done.units, done.replayed, done.failed, done.events) == (4, 3, 1, 3)
    stored = await _read_all(nats_server.url, names.STREAM_CANONICAL)
    again = {headers[MSG_ID]: json.loads(data)["id"] for data, headers in stored if headers[MSG_ID] not in live}
    assert sorted(again.values()) == sorted(e["id"] for e in live.values()), "the same CloudEvents ids"
    assert {m.rsplit(".r", 1)[0] for m in again} == set(live), "Msg-Ids of the live path, with the run's token"
    assert await stream_count(nats_server.url, names.STREAM_DLQ) == 1, "a replay dead-letters nothing again"
