"""Replay after a mapping change, for files: a folder interface with CSV (the flat mapping
changed in the config, Ficus restarted) and an SFTP interface with an 835 (a reference table
changed, picked up live). The dry run names the changed events and publishes nothing; the real
replay is counted on the ledger, and the ledger_balances fixture checks after each test that
the events stored are the ledger's published plus replayed events, money included."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.sshd import SshServer, sshd_fixture  # noqa: F401
from tests.test_files_service import BILLING, folder_iface, records
from tests.test_files_sftp import REMIT, sftp_iface
from tests.test_replay import cli
from tests.test_x12_enrichment import _payer_id

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_balances")]
REPO = Path(__file__).resolve().parent.parent


async def replay(http: aiohttp.ClientSession, api: str, iface: str, since: datetime, **extra: Any) -> Any:
    resp = await http.post(f"{api}/api/v1/replay/{iface}", json={"since": since.isoformat(), **extra})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def ledger_total(http: aiohttp.ClientSession, api: str, iface: str) -> dict[str, Any]:
    body = await (await http.get(f"{api}/api/v1/ledger/{iface}")).json()
    assert body["balanced"], body
    total: dict[str, Any] = body["days"][0]["total"]
    return total


async def test_folder_csv_replay_after_a_mapping_change(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface = folder_iface(tmp_path)
    state = str(tmp_path / "state")
    rows = records(BILLING)
    since = datetime.now(UTC) - timedelta(seconds=1)
    async with service_factory(make_config(nats_server.url, [iface], state_dir=state)) as svc:
        shutil.copy(BILLING, tmp_path / "in" / "billing.csv")
        await wait_for(lambda: svc.interfaces["billing"].stats.acked == 1, timeout=30)
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == rows

    # The fix: department now comes from another column. Ficus restarts with the new mapping.
    fixed = {**iface, "flat": {**iface["flat"], "mapping": {**iface["flat"]["mapping"], "fields": [
        {**f, "column": "CPT"} if f.get("field") == "department" else f
        for f in iface["flat"]["mapping"]["fields"]]}}}
    async with service_factory(make_config(nats_server.url, [fixed], state_dir=state)) as svc, \
            aiohttp.ClientSession() as http:
        api = svc.api_url or ""
        body = await replay(http, api, "billing", since, dry_run=True)
        diff = body["diff"]
        assert (body["units"], body["replayed"], body["failed"]) == (1, rows, 0)
        assert (diff["changed"], diff["added"], diff["removed"]) == (rows, 0, 0)
        assert diff["before"]["money"] == diff["after"]["money"] and diff["after"]["events"] == rows
        fields = diff["first"][0]["fields"]
        assert [f["field"] for f in fields] == ["data.department"]
        assert fields[0]["before"] == "CLINIC" and fields[0]["after"] == "99213"
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == rows, "a dry run publishes nothing"

        code, out, err = await asyncio.to_thread(cli, api, "replay", "billing", "--since", since.isoformat())
        assert code == 0, err
        assert f"billing: {rows} units replayed ({rows} events), 0 failed" in out
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 2 * rows
        total = await ledger_total(http, api, "billing")
        assert (total["received"], total["published"], total["events"]) == (rows, rows, rows)
        assert (total["replayed"], total["replayed_events"]) == (rows, rows)
        assert total["money"]["replayed"] == total["money"]["published"]

        again = await replay(http, api, "billing", since, dry_run=True)
        assert again["diff"]["changed"] == 0 and again["diff"]["unchanged"] == rows, "compared with the replayed"


async def test_sftp_835_replay_after_a_reference_table_change(
    sshd: SshServer, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    payer = await asyncio.to_thread(_payer_id)
    tables = tmp_path / "tables"
    shutil.copytree(REPO / "fixtures/reference", tables)
    payers = tables / "payers.csv"
    payers.write_text(f"payer_id,erp_customer_id,payer_group\n{payer},C-1,COMMERCIAL\n")
    cfg = make_config(nats_server.url, [sftp_iface(sshd)], state_dir=str(tmp_path / "state"),
                      reference={"payers": str(payers), "reload_seconds": 0.2})
    since = datetime.now(UTC) - timedelta(seconds=1)
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        stats = svc.interfaces["payer-835"].stats
        shutil.copy(REMIT, sshd.root / "in" / "remit.835")
        await wait_for(lambda: stats.acked == 1, timeout=30)
        events = await stream_count(nats_server.url, names.STREAM_SHADOW)
        assert events > 0 and events == stats.shadow_published
        api = svc.api_url or ""

        payers.write_text(f"payer_id,erp_customer_id,payer_group\n{payer},C-9,COMMERCIAL\n")
        await wait_for(lambda: svc.reference is not None
                       and "C-9" in str(svc.reference.data.tables["payers"].get(payer)), timeout=10)
        code, out, err = await asyncio.to_thread(cli, api, "replay", "payer-835", "--since", since.isoformat(),
                                                 "--dry-run")
        assert code == 0, err
        assert f"{events} changed, 0 added, 0 removed, 0 unchanged" in out
        assert 'data.erp_payer.erp_customer_id: "C-1" -> "C-9"' in out
        body = await replay(http, api, "payer-835", since, dry_run=True)
        assert body["diff"]["before"]["money"] == body["diff"]["after"]["money"]
        assert not body["diff"]["before"]["money"]["payments"].startswith("0"), "an 835 carries payments"
        assert await stream_count(nats_server.url, names.STREAM_SHADOW) == events

        body = await replay(http, api, "payer-835", since)
        assert (body["units"], body["events"], body["failed"]) == (1, events, 0)
        assert await stream_count(nats_server.url, names.STREAM_SHADOW) == 2 * events, "replayed in shadow"
        total = await ledger_total(http, api, "payer-835")
        assert total["replayed_events"] == total["events"] == events
        assert total["money"]["replayed"] == total["money"]["published"]


async def test_odbc_replay_after_a_mapping_change(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    from tests.odbc_db import usage_table
    from tests.test_odbc_replay import insert

    with usage_table("postgresql") as db:
        for _ in range(3):
            await asyncio.to_thread(insert, db, "NORTH", "2")
        iface = db.interface("usage")
        since = datetime.now(UTC) - timedelta(seconds=5)
        done = {"last_key": 3, "last_ts": None}
        async with service_factory(make_config(nats_server.url, [iface], state_dir=str(tmp_path))) as svc:
            await wait_for(lambda: svc.interfaces["usage"].details()["checkpoint"] == done, timeout=15)
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 3

        # The fix: the job's timestamps are UTC, not Chicago time. Ficus restarts with it.
        fixed = {**iface, "mapping": {**iface["mapping"], "timezone": "UTC"}}
        async with service_factory(make_config(nats_server.url, [fixed], state_dir=str(tmp_path))) as svc, \
                aiohttp.ClientSession() as http:
            api = svc.api_url or ""
            code, out, err = await asyncio.to_thread(cli, api, "replay", "usage", "--since", since.isoformat(),
                                                     "--dry-run")
            assert code == 0, err
            assert "usage: 3 units would be replayed (3 events), 0 failed" in out
            assert "3 changed, 0 added, 0 removed, 0 unchanged" in out
            assert "data.used_at:" in out and out.count("changed: ") == 3
            body = await replay(http, api, "usage", since, dry_run=True)
            (field,) = body["diff"]["first"][0]["fields"]
            assert field["field"] == "data.used_at" and field["before"] != field["after"]
            assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 3, "a dry run publishes nothing"

            body = await replay(http, api, "usage", since)
            assert (body["units"], body["replayed"], body["events"], body["failed"]) == (3, 3, 3, 0)
            assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 6
            total = await ledger_total(http, api, "usage")
            assert (total["received"], total["published"], total["replayed"], total["replayed_events"]) == (3, 3, 3, 3)
