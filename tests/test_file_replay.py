"""FilePipeline.replay_chunks on a real nats-server: the records of files read since a time,
translated again from the raw object store, as the live path built them (keys, locators,
facilities, raw references, CloudEvent ids), in chunks of at most 500 records."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from router.file_pipeline import FilePipeline
from router.stage import ReplayChunk
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.test_files_service import BILLING, folder_iface, sha
from tests.test_service_mllp import read_subject

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_balances")]
REPO = Path(__file__).resolve().parent.parent
REMIT = REPO / "fixtures/x12/balanced_2claims_plb.835"
RECORDS = 1201


def big_csv(path: Path) -> None:
    """RECORDS charges of two facilities, the one on line 4 with a bad amount (a dead letter)."""
    header, first = BILLING.read_text().splitlines()[:2]
    cols = first.split(",")
    lines = [header]
    for i in range(RECORDS):
        row = [f"T-{i:06d}", *cols[1:11], "NORTH" if i % 3 else "SOUTH"]
        if i == 2:
            row[9] = "12x.50"
        lines.append(",".join(row))
    path.write_text("\r\n".join(lines) + "\r\n")


async def replayed(pipeline: FilePipeline, since: datetime) -> list[ReplayChunk]:
    return [chunk async for chunk in pipeline.replay_chunks(since)]


async def test_replay_gives_the_live_records_again(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    csv_dir, remit_dir = tmp_path / "csv", tmp_path / "835"
    csv_dir.mkdir()
    remit_dir.mkdir()
    ifaces = [folder_iface(csv_dir, legacy=None),
              folder_iface(remit_dir, name="remit", patterns=["*.835"], format="x12-835", flat=None, legacy=None)]
    cfg = make_config(nats_server.url, ifaces, state_dir=str(tmp_path / "state"))
    big_csv(tmp_path / "big.csv")
    digest = sha(tmp_path / "big.csv")
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with service_factory(cfg) as svc:
        billing, remit = svc.interfaces["billing"], svc.interfaces["remit"]
        assert isinstance(billing.pipeline, FilePipeline) and isinstance(remit.pipeline, FilePipeline)
        shutil.copy(tmp_path / "big.csv", csv_dir / "in" / "big.csv")
        shutil.copy(REMIT, remit_dir / "in" / "remit.835")
        await wait_for(lambda: billing.stats.acked == 1 and remit.stats.acked == 1, timeout=30)

        chunks = await replayed(billing.pipeline, before)
        remit_chunks = await replayed(remit.pipeline, before)
        assert await replayed(billing.pipeline, datetime.now(UTC) + timedelta(seconds=1)) == []
        spool = billing.pipeline.spool_dir / ".replay"
        assert not spool.exists() or not list(spool.iterdir()), "the replay copy is deleted"
        live = await read_subject(nats_server.url, names.STREAM_CANONICAL, "canonical.>")

        # Through router/replay.py and the stage: counted on the ledger's replayed line (the
        # ledger_balances fixture checks stored events = published + replayed after the test).
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{svc.api_url}/api/v1/replay/billing", json={"since": before.isoformat()})
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            assert (body["units"], body["replayed"], body["failed"]) == (1, RECORDS - 1, 1)
            assert body["events"] == RECORDS - 1


    letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("billing"))

    # The CSV: 500 + 500 + 201 records, the file finished with the last chunk.
    assert [len(c.records) for c in chunks] == [500, 500, 201]
    assert [c.units for c in chunks] == [0, 0, 1]
    assert [c.remaining for c in chunks] == [1, 1, 0], "files still to come, this one included until done"
    assert [c.batch for c in chunks] == [f"file|{digest}|0|499", f"file|{digest}|500|999",
                                         f"file|{digest}|1000|1200"]
    assert {c.label for c in chunks} == {"big.csv"}
    records = [r for c in chunks for r in c.records]
    assert [r.key for r in records] == [f"file|{digest}|{i}" for i in range(RECORDS)]
    raw = f"objectstore://{names.OBJ_RAW_FILES}/billing/{digest}"
    assert {r.raw for r in records} == {raw}
    (bad,) = [r for r in records if r.error is not None]
    assert (bad.locator, bad.letter_id) == ("big.csv line 4", f"{digest}:2")
    assert [letter["unit"] for letter in letters] == [bad.locator]
    assert bad.facility == letters[0].get("facility")
    billing_live = [e for e in live if e["ficusraw"] == raw]
    assert [e.id for r in records for e in r.events] == [e["id"] for e in billing_live]
    assert [r.routed_facility for r in records if r.error is None] == [e["ficusfacility"] for e in billing_live]

    # The 835: its transactions, same event ids as published live.
    assert remit_chunks and remit_chunks[-1].units == 1 and sum(c.units for c in remit_chunks) == 1
    remit_ids = [e.id for c in remit_chunks for r in c.records for e in r.events]
    assert remit_ids and remit_ids == [e["id"] for e in live if e["ficusraw"] != raw]
