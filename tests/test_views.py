"""Status lookups kept as views (router/views.py) on a real nats-server and service: the
corpus 835s and the reversal fixture through a folder interface, then each claim and
remittance lookup equals what the stored events say (computed here, independently);
a reversal shows reversed with the money netted; an account's charges from a CSV with
from/to; a rebuild (`ficus views rebuild`) after the buckets are deleted gives the same answers; applying an
event twice changes nothing; an entry too big for a KV value stops growing."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import shutil
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.js.errors
import pytest

from router import names, views
from router.embedded_nats import EmbeddedNats
from router.store import StoredMsg
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.test_files_service import BILLING, folder_iface

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
REVERSAL = REPO / "fixtures/x12/reversal_pair.835"
CORPUS = Path(os.environ.get("FICUS_CORPUS", "/work/shared/corpus"))


def corpus_835s() -> list[Path]:
    """Every 835 the corpus index lists (Ficus translates the balanced ones, dead-letters the rest)."""
    index = CORPUS / "INDEX.tsv"
    if not index.is_file():
        return []
    with index.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [CORPUS / r["relative_path"] for r in rows
            if r["kind"] == "x12" and r["message_type_or_transaction"].startswith("835")]


async def stored_events(url: str) -> list[tuple[int, dict[str, Any]]]:
    """Every live canonical event with its stream sequence, read straight from the stream."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(names.STREAM_CANONICAL)).state.last_seq
        out = []
        for seq in range(1, last + 1):
            msg = await js.get_msg(names.STREAM_CANONICAL, seq)
            out.append((seq, json.loads(msg.data or b"{}")))
        return out
    finally:
        await nc.close()


def dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def expected_claims(events: list[tuple[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per payer claim control number: the sums, reversals and adjustments the events carry."""
    out: dict[str, dict[str, Any]] = {}
    for _, ev in events:
        data, etype = ev["data"], ev["type"]
        claim = data.get("payer_claim_control_number") if isinstance(data, dict) else None
        if not claim or ".claims." not in etype:
            continue
        c = out.setdefault(claim, {"paid": Decimal(0), "charge": Decimal(0), "pr": Decimal(0), "reversals": 0,
                                   "adjustments": defaultdict(Decimal), "remittances": 0, "status": None})
        if ".claim.adjudicated" in etype:
            c["paid"] += dec(data["paid"])
            c["charge"] += dec(data["charge"])
            c["pr"] += dec(data.get("patient_responsibility"))
            c["remittances"] += 1
            if data["reversal"]:
                c["reversals"] += 1
            else:
                c["status"] = data["status_code"]
        elif ".adjustment.recorded" in etype:
            c["adjustments"][(data["group_code"], data["reason_code"])] += dec(data["amount"])
    return out


def expected_remittances(events: list[tuple[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for _, ev in events:
        data, etype = ev["data"], ev["type"]
        if not data.get("trace_number") or not (".remittance.received" in etype or ".claim.adjudicated" in etype):
            continue
        r = out.setdefault(data["trace_number"], {"amount": Decimal(0), "claims": 0, "transactions": 0,
                                                  "paid": Decimal(0)})
        if ".remittance.received" in etype:
            r["amount"] += dec(data["amount"])
            r["transactions"] += 1
        elif ".claim.adjudicated" in etype:
            r["claims"] += 1
            r["paid"] += dec(data["paid"])
    return out


async def lookup(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


def claim_matches(got: dict[str, Any], want: dict[str, Any]) -> bool:
    adjustments = {(g, r): Decimal(a) for g, rs in got["adjustments"].items() for r, a in rs.items()}
    return (Decimal(got["paid"]) == want["paid"] and Decimal(got["charge"]) == want["charge"]
            and Decimal(got["patient_responsibility"]) == want["pr"]
            and got["reversals_applied"] == want["reversals"] and got["reversed"] == (want["reversals"] > 0)
            and len(got["remittances"]) == want["remittances"]
            and adjustments == {k: v for k, v in want["adjustments"].items()}
            and (want["status"] is None or got["status_code"] == want["status"]))


async def all_match(http: aiohttp.ClientSession, api: str, claims: dict[str, dict[str, Any]],
                    remits: dict[str, dict[str, Any]]) -> bool:
    for claim, want in claims.items():
        status, got = await lookup(http, f"{api}/api/v1/claims/{claim}")
        if status != 200 or not claim_matches(got, want):
            return False
    for trace, want_r in remits.items():
        status, got = await lookup(http, f"{api}/api/v1/remittances/{trace}")
        if status != 200 or len(got["claims"]) != want_r["claims"] or len(got["transactions"]) != want_r[
                "transactions"] or Decimal(got["amount"]) != want_r["amount"]:
            return False
        if sum((Decimal(c["paid"]) for c in got["claims"]), Decimal(0)) != want_r["paid"]:
            return False
    return True


async def delete_view_buckets(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for bucket in views.BUCKETS.values():
            with contextlib.suppress(nats.js.errors.NotFoundError):  # a view nothing was written to
                await js.delete_key_value(bucket)
    finally:
        await nc.close()


async def test_claim_and_remittance_lookups_equal_the_events(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    files = [p for p in corpus_835s() if p.is_file()]
    if not files:
        pytest.skip(f"no X12 corpus under {CORPUS} (set FICUS_CORPUS): only the reversal fixture is ingested")
    iface = folder_iface(tmp_path, name="remit", patterns=["*.835"], format="x12-835", flat=None, legacy=None)
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"), views={"enabled": True})
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        stats = svc.interfaces["remit"].stats
        for n, path in enumerate([*files, REVERSAL]):
            shutil.copy(path, tmp_path / "in" / f"{n:03d}-{path.stem}.835")
        await wait_for(lambda: stats.acked == len(files) + 1, timeout=60)
        events = await stored_events(nats_server.url)
        claims, remits = expected_claims(events), expected_remittances(events)
        assert len(claims) >= 10 and len(remits) >= 3, (len(claims), len(remits))  # balanced files + fixture
        api = svc.api_url

        async def matching() -> bool:
            return await all_match(http, api, claims, remits)

        await wait_for(matching, timeout=60, interval=0.5)

        # The reversal: ICN0003 carried only by its CLP02 = 22, reversed and netted.
        status, rev = await lookup(http, f"{api}/api/v1/claims/ICN0003")
        assert status == 200
        assert rev["reversed"] is True and rev["reversals_applied"] == 1
        assert Decimal(rev["paid"]) == Decimal("-250.00") and Decimal(rev["charge"]) == Decimal("-300.00")
        assert rev["adjustments"] == {"CO": {"45": "-50.00"}}
        status, fixed = await lookup(http, f"{api}/api/v1/claims/ICN0004")
        assert fixed["reversed"] is False and Decimal(fixed["paid"]) == Decimal("240.00")
        status, remit = await lookup(http, f"{api}/api/v1/remittances/EFT0002")
        assert status == 200 and remit["balanced"] is True and Decimal(remit["amount"]) == Decimal("90.00")
        assert [c["payer_claim_control_number"] for c in remit["claims"]] == ["ICN0003", "ICN0004", "ICN0005"]
        assert (await lookup(http, f"{api}/api/v1/claims/NO-SUCH"))[0] == 404

        # Applying an event again changes nothing (same id, same or older sequence).
        view = views.views_of(svc.store)
        bucket = await view.bucket("claims")
        before = await bucket.get(views.key_of("ICN0003"))
        for seq, ev in events:
            if ev["data"].get("payer_claim_control_number") == "ICN0003":
                assert await view.apply(StoredMsg(seq, "x", json.dumps(ev).encode(), {})) == 0
        after = await bucket.get(views.key_of("ICN0003"))
        assert before is not None and after is not None and after.revision == before.revision

        # Rebuild from the stream after the buckets are gone: the same answers.
        await delete_view_buckets(nats_server.url)
        assert (await lookup(http, f"{api}/api/v1/claims/ICN0003"))[0] in (404, 503)
        # `ficus views rebuild` calls POST /api/v1/views/rebuild on the running service.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "views", "rebuild", "--api", api, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == f"views rebuilt from {len(events)} live events"
        assert await all_match(http, api, claims, remits)
        assert (await lookup(http, f"{api}/api/v1/claims/ICN0003"))[1] == rev

        # An entry that would outgrow a KV value stops growing and says so; the consumer is not blocked.
        small = views.Views(svc.store, max_entry=1500)
        base = next(ev for _, ev in events if ".claim.adjudicated" in ev["type"])
        for n in range(20):
            data = {**base["data"], "trace_number": "BIG-TRACE", "payer_claim_control_number": f"BIG-{n}"}
            await small.apply(StoredMsg(10_000 + n, "x", json.dumps({**base, "id": f"big-{n}", "data": data}).encode(),
                                        {}))
        status, big = await lookup(http, f"{api}/api/v1/remittances/BIG-TRACE")
        assert status == 200 and big["truncated"] is True and 0 < len(big["claims"]) < 20
        assert rev["truncated"] is False


async def test_account_charges_from_a_billing_csv(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, legacy=None)], state_dir=str(tmp_path / "state"),
                      views={"enabled": True})
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        stats = svc.interfaces["billing"].stats
        shutil.copy(BILLING, tmp_path / "in" / "export.csv")
        await wait_for(lambda: stats.acked == 1, timeout=20)
        events = await stored_events(nats_server.url)
        by_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, ev in events:
            if ".charge." in ev["type"] and ev["data"].get("account_number"):
                by_account[ev["data"]["account_number"]].append(ev)
        assert by_account
        api = svc.api_url

        def day(ev: dict[str, Any]) -> str:
            return str(ev["data"].get("service_date") or ev["data"].get("posting_date"))[:10]

        for account, evs in by_account.items():
            async def complete(account: str = account, n: int = len(evs)) -> bool:
                status, got = await lookup(http, f"{api}/api/v1/accounts/{account}/charges")
                return status == 200 and len(got["charges"]) == n

            await wait_for(complete, timeout=20, interval=0.2)
            status, got = await lookup(http, f"{api}/api/v1/accounts/{account}/charges")
            assert [c["event_id"] for c in got["charges"]] == [e["id"] for e in evs]
            assert Decimal(got["net_amount"]) == sum((dec(e["data"]["net_amount"]) for e in evs), Decimal(0))
            # from/to: only the charges of the first day seen.
            first = min(day(e) for e in evs)
            status, one = await lookup(http, f"{api}/api/v1/accounts/{account}/charges?from={first}&to={first}")
            assert status == 200
            assert [c["event_id"] for c in one["charges"]] == [e["id"] for e in evs if day(e) == first]
            assert (await lookup(http, f"{api}/api/v1/accounts/{account}/charges?from={first}z"))[0] == 400
        assert (await lookup(http, f"{api}/api/v1/accounts/NO-SUCH/charges"))[0] == 404


async def test_a_big_entry_is_paged_and_reads_the_same(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """An entry past `page_bytes` keeps its newest facts in its head and seals the older ones
    into pages (each write costs the head, not the entry): the lookup reads them together; a
    fact applied again changes nothing wherever it is kept; a replayed event replaces its fact
    even in a sealed page."""
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, legacy=None)], state_dir=str(tmp_path / "state"),
                      views={"enabled": True})

    def adjudicated(n: int, seq: int, paid: str = "10.00") -> StoredMsg:
        data = {"trace_number": "PAGED-TRACE", "st_control": "0001", "interchange_control": "000000001",
                "payer_claim_control_number": f"PAGED-{n}", "patient_control_number": f"P{n}", "status_code": "1",
                "reversal": False, "denied": False, "claim_index": n, "charge": "12.00", "paid": paid,
                "patient_responsibility": "2.00"}
        event = {"id": f"paged-{n}", "type": "org.ficus.claims.claim.adjudicated.v1", "data": data}
        return StoredMsg(seq, "x", json.dumps(event).encode(), {})

    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        api = svc.api_url
        paged = views.Views(svc.store, page_bytes=1000)
        msgs = [adjudicated(n, 20_000 + n) for n in range(40)]
        for start in range(0, 28, 7):  # batches, then one event at a time
            assert await paged.apply_batch(msgs[start:start + 7]) == 8  # 7 claim entries and the remittance
        for msg in msgs[28:]:
            assert await paged.apply(msg) == 2
        bucket = await paged.bucket("remittances")
        before = await bucket.get(views.key_of("PAGED-TRACE"))
        assert before is not None and len(json.loads(before.value)["pages"]) >= 3

        status, got = await lookup(http, f"{api}/api/v1/remittances/PAGED-TRACE")
        assert status == 200 and got["truncated"] is False
        assert [c["payer_claim_control_number"] for c in got["claims"]] == [f"PAGED-{n}" for n in range(40)]
        assert sum((Decimal(c["paid"]) for c in got["claims"]), Decimal(0)) == Decimal("400.00")

        # Applied again, by this instance or another (no remembered heads): nothing is written.
        assert await paged.apply_batch(msgs) == 0
        assert await views.Views(svc.store, page_bytes=1000).apply_batch(msgs) == 0
        after = await bucket.get(views.key_of("PAGED-TRACE"))
        assert after is not None and after.revision == before.revision

        # A replayed event (same id, later sequence) replaces its fact, kept in the first sealed page.
        assert await paged.apply(adjudicated(0, 30_000, paid="5.00")) == 2
        status, got = await lookup(http, f"{api}/api/v1/remittances/PAGED-TRACE")
        assert sorted(c["payer_claim_control_number"] for c in got["claims"]) == sorted(f"PAGED-{n}" for n in range(40))
        assert sum((Decimal(c["paid"]) for c in got["claims"]), Decimal(0)) == Decimal("395.00")
        status, claim = await lookup(http, f"{api}/api/v1/claims/PAGED-0")
        assert status == 200 and claim["paid"] == "5.00" and len(claim["remittances"]) == 1
