"""The message browser against a real service (issue 16 item 2): DFTs over MLLP in modern mode,
an 835 with claims and a trace from a folder, a bad message and an unmapped code dead-lettered,
a sink delivering to a local receiver, a dead letter replayed after a fix. Each unit is found
by its business keys and its chain followed raw -> events -> dead letter -> replay -> delivery;
a second instance on the same NATS finds the same; no value is in a subject, a KV key or an
audit record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import nats
import pytest
from aiohttp import web

from router import names, simulate
from router.embedded_nats import EmbeddedNats
from router.service import Service
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.mllp_client import msa, send_one
from tests.test_cli import ficus
from tests.test_enrichment import _with_code
from tests.test_files_service import folder_iface

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
REVERSAL = REPO / "fixtures/x12/reversal_pair.835"
BAD_AMOUNT = REPO / "fixtures/hl7/dft_p03_bad_amount.hl7"
ADMIN = "browser-test-admin-token-0123456789"
CONTENT = "browser-test-erp-token-0123456789ab"
VIEWER = "browser-test-viewer-token-0123456789"
IFACE = "his-charges"
FACILITY = "NORTH"
VALUES = ("DFT00000001", "DFT00000003", "DFT0002", "ACCT000000001", "ACCT000000003", "V000000001", "ICN0003",
          "ICN0004", "PCN003", "PCN004", "EFT0002")
"""Business key values of the test traffic: none may show in a subject, a KV key or an audit record."""


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _headers(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Receiver:
    """A real local HTTP receiver for the sink: takes every event (204)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.ids.append(request.headers.get("Idempotency-Key", ""))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    out = Receiver()
    app = web.Application()
    app.router.add_post("/events", out.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    out.url = f"http://127.0.0.1:{port}/events"
    try:
        yield out
    finally:
        await runner.cleanup()


async def _get(http: aiohttp.ClientSession, url: str, token: str = ADMIN, **params: str) -> tuple[int, Any]:
    async with http.get(url, headers=_headers(token), params=params or None) as resp:
        return resp.status, await resp.json()


async def _search(http: aiohttp.ClientSession, api: str, **params: str) -> list[dict[str, Any]]:
    status, body = await _get(http, f"{api}/api/v1/messages", **params)
    assert status == 200, body
    return list(body["messages"])


async def _chain(http: aiohttp.ClientSession, api: str, correlation: str) -> dict[str, Any]:
    status, body = await _get(http, f"{api}/api/v1/messages/{quote(correlation, safe='')}")
    assert status == 200, body
    return dict(body)


async def _subjects(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(names.STREAM_KEYS, subjects_filter=">")
        return list((info.state.subjects or {}).keys())
    finally:
        await nc.close()


async def _kv_keys(url: str, bucket: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        return list(await (await nc.jetstream().key_value(bucket)).keys())
    finally:
        await nc.close()


async def _audit(url: str) -> list[dict[str, Any]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(names.SUBJECTS_AUDIT, stream=names.STREAM_AUDIT, ordered_consumer=True)
        out = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                break
            out.append(json.loads(msg.data))
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def test_find_units_by_key_and_follow_their_chain(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, receiver: Receiver, tmp_path: Path
) -> None:
    tables = tmp_path / "tables"
    shutil.copytree(REPO / "fixtures/reference", tables)
    remit = folder_iface(tmp_path, name="remit", patterns=["*.835"], format="x12-835", flat=None, legacy=None)
    clients = [{"name": "ops", "role": "admin", "token_sha256": _sha(ADMIN)},
               {"name": "erp", "role": "viewer", "content": True, "token_sha256": _sha(CONTENT)},
               {"name": "watcher", "role": "viewer", "token_sha256": _sha(VIEWER)}]
    cfg = make_config(
        nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}, remit],
        state_dir=str(tmp_path / "state"), nats={"key_index": True},
        reference={"charge_codes": str(tables / "charge_codes.csv"), "reload_seconds": 0.2},
        api={"clients": clients},
        sinks=[{"name": "erp", "url": receiver.url, "filter": {"types": ["org.ficus.revenue"]},
                "retry": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.2}}])
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        api, port = svc.api_url or "", svc.interfaces[IFACE].listener.port
        for n in (1, 2):
            assert msa(await send_one(port, simulate.dft(n, lines=2, facility=FACILITY)))[0] == "AA"
        # An unmapped charge code (dead-lettered, replayable after the table is fixed) and a bad amount.
        unmapped = _with_code(simulate.dft(3, lines=2, facility=FACILITY), "55555")
        assert msa(await send_one(port, unmapped))[0] == "AE"
        assert msa(await send_one(port, BAD_AMOUNT.read_bytes()))[0] in ("CA", "AE")
        shutil.copy(REVERSAL, tmp_path / "in" / "reversal.835")
        await wait_for(lambda: svc.interfaces["remit"].stats.acked == 1, timeout=30)

        # By MSH-10: the unit, its events and its keys (hashes).
        (first,) = await _search(http, api, control_id="DFT00000001")
        assert first["interface"] == IFACE and first["control_id"] == "DFT00000001"
        assert len(first["events"]) == 2 and first["dead_letters"] == []
        assert set(first["keys"]) >= {"control", "account", "encounter"}
        assert all(len(h) == 32 for h in first["keys"].values())
        assert first["correlation"] == f"HIS^{FACILITY}:DFT00000001"
        # By account and encounter: the same unit; with another key that does not match: nothing.
        (by_account,) = await _search(http, api, account="ACCT000000001")
        assert by_account["correlation"] == first["correlation"] and len(by_account["events"]) == 2
        (by_encounter,) = await _search(http, api, encounter="V000000001", interface=IFACE)
        assert by_encounter["correlation"] == first["correlation"]
        assert await _search(http, api, account="ACCT000000001", control_id="DFT00000002") == []
        assert await _search(http, api, account="ACCT000000001", interface="remit") == []

        # The bad message: found by its MSH-10, with its dead letter and no event.
        (bad,) = await _search(http, api, control_id="DFT0002")
        assert bad["events"] == [] and len(bad["dead_letters"]) == 1

        # The 835: by claim number (CLP07 and CLP01) and by trace.
        (claim,) = await _search(http, api, claim="ICN0003")
        assert claim["interface"] == "remit" and claim["events"], claim
        by_pcn = await _search(http, api, claim="PCN004")
        assert [m["correlation"] for m in by_pcn] == [claim["correlation"]]
        (trace,) = await _search(http, api, trace="EFT0002")
        assert trace["correlation"] == claim["correlation"] and "trace" in trace["keys"]
        whole = await _chain(http, api, claim["correlation"])
        assert len(trace["events"]) == len(whole["events"]), "every event of the transaction carries TRN02"
        assert 0 < len(claim["events"]) < len(whole["events"]), "a claim's record lists its own events"
        assert {e["event"]["data"].get("payer_claim_control_number") for e in whole["events"]
                if e["id"] in claim["events"]} == {"ICN0003"}

        # By interface and time, without a key: every unit of the interface, pages by cursor.
        listed = await _search(http, api, interface=IFACE, **{"from": "2000-01-01T00:00:00Z"})
        assert {m["control_id"] for m in listed} == {"DFT00000001", "DFT00000002", "DFT00000003", "DFT0002"}
        status, page = await _get(http, f"{api}/api/v1/messages", interface=IFACE, limit="2",
                                  **{"from": "2000-01-01T00:00:00Z"})
        assert status == 200 and len(page["messages"]) == 2 and page["cursor"]
        status, rest = await _get(http, f"{api}/api/v1/messages", interface=IFACE, limit="10",
                                  cursor=page["cursor"], **{"from": "2000-01-01T00:00:00Z"})
        assert status == 200 and len(rest["messages"]) == 2 and rest["cursor"] is None
        assert await _search(http, api, interface=IFACE, to="2000-01-01T00:00:00Z") == []

        # The chain of the first DFT: raw (ref and size), events read back, each delivered by the sink.
        chain = await _chain(http, api, first["correlation"])
        assert chain["raw"]["ref"].startswith("jetstream://FICUS_RAW/") and chain["raw"]["size"] > 100
        assert [e["id"] for e in chain["events"]] == first["events"]
        assert all(e["event"]["ficuscorrelation"] == first["correlation"] for e in chain["events"])

        async def delivered(correlation: str, count: int) -> list[dict[str, Any]]:
            found = (await _chain(http, api, correlation))["deliveries"]
            return found if len(found) >= count else []

        deliveries = await wait_for(lambda: delivered(first["correlation"], 2), timeout=30, interval=0.2)
        assert {(d["sink"], d["status"], d["attempts"]) for d in deliveries} == {("erp", 204, 1)}
        assert {d["event_id"] for d in deliveries} == set(first["events"])

        # The unmapped code: dead letter -> the table fixed -> replayed -> events -> delivered.
        (stuck,) = await _search(http, api, control_id="DFT00000003")
        assert stuck["events"] == [] and len(stuck["dead_letters"]) == 1
        letter = stuck["dead_letters"][0]
        with (tables / "charge_codes.csv").open("a") as fh:
            fh.write("55555,0555,4100-555,CC-MISC,OTHER\n")
        await wait_for(lambda: svc.reference is not None
                       and svc.reference.data.tables["charge_codes"].get("55555") is not None, timeout=10)
        async with http.post(f"{api}/api/v1/dlq/{letter}/replay", json={}, headers=_headers()) as resp:
            assert resp.status == 200, await resp.text()
        chain = await _chain(http, api, stuck["correlation"])
        assert [d["id"] for d in chain["dead_letters"]] == [letter]
        assert [r["letter"] for r in chain["replays"]] == [letter]
        assert len(chain["events"]) == 2 and all(e["event"] for e in chain["events"])
        replayed = await wait_for(lambda: delivered(stuck["correlation"], 2), timeout=30, interval=0.2)
        assert {d["status"] for d in replayed} == {204}
        # The search by MSH-10 now shows both commits: the dead letter's and the replay's events.
        both = await _search(http, api, control_id="DFT00000003")
        assert sorted(len(m["events"]) for m in both) == [0, 2] and any(m.get("replay") for m in both)

        # The CLI: a table by key, and a chain.
        done = await asyncio.to_thread(ficus, "messages", "--claim", "ICN0003", "--api", api, "--token", ADMIN)
        assert done.returncode == 0, done.stderr
        assert "CORRELATION" in done.stdout and claim["correlation"] in done.stdout
        done = await asyncio.to_thread(ficus, "messages", "show", stuck["correlation"], "--api", api,
                                       "--token", ADMIN)
        assert done.returncode == 0, done.stderr
        assert f"dead letter  {letter}" in done.stdout and "replay       " in done.stdout
        assert "delivery     erp" in done.stdout and "status 204" in done.stdout

        # Content: a viewer without content access is refused; a content client is served.
        status, body = await _get(http, f"{api}/api/v1/messages", VIEWER, control_id="DFT00000001")
        assert status == 403 and "content" in body["error"]
        status, body = await _get(http, f"{api}/api/v1/messages/{quote(first['correlation'], safe='')}", VIEWER)
        assert status == 403
        status, body = await _get(http, f"{api}/api/v1/messages", CONTENT, trace="EFT0002")
        assert status == 200 and len(body["messages"]) == 1
        status, body = await _get(http, f"{api}/api/v1/messages/{quote('HIS^X:nope', safe='')}")
        assert status == 404
        status, body = await _get(http, f"{api}/api/v1/messages")
        assert status == 400

        # A second instance on the same NATS (API only) finds the same units: one secret, one index.
        other_cfg = make_config(nats_server.url, [], state_dir=str(tmp_path / "state2"),
                                nats={"key_index": True}, api={"clients": clients})
        async with Service(other_cfg) as other:
            other_api = other.api_url or ""
            assert other_api != api
            (again,) = await _search(http, other_api, claim="ICN0003")
            assert again == claim
            (again,) = await _search(http, other_api, control_id="DFT00000001")
            assert again["correlation"] == first["correlation"]
            other_chain = await _chain(http, other_api, stuck["correlation"])
            assert [r["letter"] for r in other_chain["replays"]] == [letter]

    # No value in a subject of the index, a KV key, or an audit record.
    subjects = await _subjects(nats_server.url)
    assert any(s.startswith("keys.claim.") for s in subjects) and any(s.startswith("keys.dlv.") for s in subjects)
    leaked = [s for s in subjects for v in VALUES if v in s]
    assert leaked == [], leaked
    assert await _kv_keys(nats_server.url, names.KV_KEYS) == ["hmac-secret"]
    records = await _audit(nats_server.url)
    searches = [r for r in records if r["action"] == "message_search"]
    reads = [r for r in records if r["action"] == "message_read"]
    assert searches and reads
    assert {r["actor"] for r in searches} >= {"ops", "erp", "watcher"}
    assert any(r["result"] == "refused" and r["actor"] == "watcher" for r in searches)
    text = json.dumps(records)
    assert [v for v in VALUES if v in text] == []
    keyed = [r for r in searches if r["result"] == "ok" and r["target"].get("keys")]
    assert all(len(h) == 32 for r in keyed for h in r["target"]["keys"].values())


async def test_without_the_key_index_the_browser_says_how_to_enable_it(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}],
                      state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        assert msa(await send_one(svc.interfaces[IFACE].listener.port, simulate.dft(1)))[0] == "AA"
        async with http.get(f"{svc.api_url}/api/v1/messages", params={"control_id": "DFT00000001"}) as resp:
            assert resp.status == 409 and "nats.key_index" in (await resp.json())["error"]
    assert await _subjects(nats_server.url) == []


async def test_file_records_are_found_by_account_and_by_file_and_line(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """A folder's CSV: each record a unit, found by its account and by its file name and line; a
    record dead-lettered is found too, and its chain names its dead letter."""
    from tests.test_files_service import BILLING

    cfg = make_config(nats_server.url, [folder_iface(tmp_path)], state_dir=str(tmp_path / "state"),
                      nats={"key_index": True})
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url or ""
        # One row more whose amount is not a number: dead-lettered.
        bad_row = "T-199999,CG,01/05/2024,01/06/2024,ACC-5999,ENC-9999,99213,99213,1,abc,CLINIC,NORTH"
        text = BILLING.read_text().rstrip("\n") + "\n" + bad_row + "\n"
        (tmp_path / "billing.csv").write_text(text)
        shutil.move(tmp_path / "billing.csv", tmp_path / "in" / "billing.csv")
        await wait_for(lambda: svc.interfaces["billing"].stats.acked == 1, timeout=30)
        status, body = await _get(http, f"{api}/api/v1/messages", interface="billing", limit="200",
                                  **{"from": "2000-01-01T00:00:00Z"})
        assert status == 200, body
        units = body["messages"]
        rows = sum(1 for line in text.splitlines()[1:] if line.strip())
        assert len(units) == rows and all(u["unit"] and u["control_id"] is None for u in units)
        by_account = await _search(http, api, account="ACC-5001")
        assert len(by_account) == 2 and all(len(u["events"]) == 1 for u in by_account)
        (one,) = await _search(http, api, unit=by_account[0]["unit"])
        assert one["correlation"] == by_account[0]["correlation"] and "billing.csv" in one["unit"]
        letters = [u for u in units if u["dead_letters"]]
        assert len(letters) == 1 and letters[0]["events"] == []
        (found,) = await _search(http, api, unit=letters[0]["unit"])
        chain = await _chain(http, api, found["correlation"])
        assert [d["id"] for d in chain["dead_letters"]] == found["dead_letters"] and chain["events"] == []
        assert chain["raw"]["ref"].startswith("objectstore://")
    leaked = [s for s in await _subjects(nats_server.url) for v in ("ACC-5001", "ENC-9001", "billing.csv", "T-1000")
              if v in s]
    assert leaked == [], leaked


async def test_database_rows_are_found_by_table_and_key(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """An odbc interface (PostgreSQL through its ODBC driver; skipped when absent): each row a
    unit found by ``<table>:<key>``, a row with a bad quantity with its dead letter."""
    from tests.odbc_db import usage_table

    with usage_table("postgresql") as db:
        cfg = make_config(nats_server.url, [db.interface("usage")], state_dir=str(tmp_path / "state"),
                          nats={"key_index": True})
        await asyncio.to_thread(db.insert, 2)
        await asyncio.to_thread(db.insert, 1, "x")
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            api = svc.api_url or ""

            async def units() -> list[dict[str, Any]]:
                found = await _search(http, api, interface="usage", **{"from": "2000-01-01T00:00:00Z"})
                return found if len(found) == 3 else []

            listed = await wait_for(units, timeout=30, interval=0.2)
            assert sorted(u["unit"] for u in listed) == [f"{db.table}:{i}" for i in (1, 2, 3)]
            (good,) = await _search(http, api, unit=f"{db.table}:1")
            assert len(good["events"]) == 1 and good["dead_letters"] == []
            (bad,) = await _search(http, api, unit=f"{db.table}:3")
            assert bad["events"] == [] and len(bad["dead_letters"]) == 1
            chain = await _chain(http, api, good["correlation"])
            assert chain["events"][0]["event"]["data"]["record_key"] == f"{db.table}:1"
            assert chain["raw"]["ref"].startswith("jetstream://FICUS_RAW/")
    assert [s for s in await _subjects(nats_server.url) if db.table in s] == []
