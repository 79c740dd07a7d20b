"""Parity over time (issue 16 item 4): each unit translated in shadow is a parity sample kept in
its ledger entry (router/ledger.py: ``parity_agree`` / ``parity_disagree`` per UTC day and
facility), so the history outlives the window, a restart, and is the same on every instance;
GET /api/v1/ledger/{iface}, ``ficus ledger`` and the console's interface page show it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from legacy.simulated_engine import SimulatedEngine
from router import ledger, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, assert_ledger_balances, make_config, wait_for
from tests.mllp_client import MllpTestClient
from tests.test_service_mllp import _break_amount

REPO = Path(__file__).resolve().parent.parent
IFACE = "his-charges"

# -- the fold (pure) -------------------------------------------------------------------------------


def test_samples_fold_per_day_and_facility_and_old_deltas_read_as_none() -> None:
    agreed = ledger.Entry("NORTH", "published", 1, 2, agree=1)
    refused = ledger.Entry("NORTH", "dead_lettered", disagree=1)
    old = b'{"v":1,"i":"a","d":"2026-01-02","m":"shadow","u":[{"f":"SOUTH","o":"published","n":1,"e":1}]}'
    days = ledger.fold([ledger.delta("a", "shadow", [agreed], "u1").payload,
                        ledger.delta("a", "shadow", [refused], "u2").payload,
                        ledger.unit_delta("a", "modern", "u3", "NORTH", "published", 1).payload, old])
    north = days[ledger.day_of()]["NORTH"]
    assert (north.parity_agree, north.parity_disagree, north.shadow, north.received) == (1, 1, 2, 3)
    south = days["2026-01-02"]["SOUTH"].as_json()
    assert (south["parity_agree"], south["parity_disagree"], south["shadow"]) == (0, 0, 1)
    assert ledger.day_view(ledger.day_of(), days[ledger.day_of()])["balanced"]


def test_a_batch_merges_the_samples_of_its_units() -> None:
    batch = ledger.Batch()
    batch.add(0, "NORTH", "published", 1, agree=1)
    batch.add(1, "NORTH", "published", 1, disagree=1)
    batch.add(2, "NORTH", "published", 1, agree=1)
    (entry,) = batch.entries
    assert (entry.units, entry.agree, entry.disagree) == (3, 2, 1)
    (rows,) = ledger.fold([ledger.delta("f", "shadow", batch.entries, "file:x:0-2").payload]).values()
    assert (rows["NORTH"].parity_agree, rows["NORTH"].parity_disagree) == (2, 1)
    assert "pa" not in ledger.Entry("NORTH", "published").as_json(), "no sample, no field"


# -- with real traffic -----------------------------------------------------------------------------


class _Tables(HTMLParser):
    """The page's tables by caption: rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._caption: str | None = None
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._rows = []
        elif tag == "caption":
            self._caption = ""
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._rows:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._rows is not None:
            self.tables[self._caption or ""] = self._rows
            self._rows, self._caption = None, None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._caption is not None and self._rows is not None and not self._rows:
            self._caption += data


def tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


async def ledger_view(http: aiohttp.ClientSession, api: str | None) -> dict[str, Any]:
    async with http.get(f"{api}/api/v1/ledger/{IFACE}") as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


def samples_by_facility(view: dict[str, Any]) -> dict[str | None, tuple[int, int]]:
    """(agree, disagree) per facility over every day (a run across midnight stays one figure)."""
    out: dict[str | None, tuple[int, int]] = {}
    for day in view["days"]:
        for f in day["facilities"]:
            a, d = out.get(f["facility"], (0, 0))
            out[f["facility"]] = (a + f["parity_agree"], d + f["parity_disagree"])
    return {k: v for k, v in out.items() if v != (0, 0)}


# (facility, message, the legacy engine's answer): whether the two paths agree is in the comment
TRAFFIC: list[tuple[str, bytes, str]] = [
    ("NORTH", simulate.dft(101, facility="NORTH"), "AA"),  # agree
    ("NORTH", simulate.dft(102, facility="NORTH"), "AA"),  # agree
    ("NORTH", simulate.dft(103, facility="NORTH"), "AA"),  # agree
    ("NORTH", simulate.dft(104, facility="NORTH"), "AE"),  # legacy refuses what Ficus takes
    ("NORTH", _break_amount(simulate.dft(105, facility="NORTH")), "AA"),  # Ficus refuses what legacy takes
    ("SOUTH", simulate.dft(106, facility="SOUTH"), "AA"),  # agree
    ("SOUTH", simulate.dft(107, facility="SOUTH"), "AA"),  # agree
    ("SOUTH", _break_amount(simulate.dft(108, facility="SOUTH")), "AE"),  # both refuse: agree
    ("SOUTH", simulate.dft(109, facility="SOUTH"), "AE"),  # legacy refuses
]
WANT = {"NORTH": (3, 2), "SOUTH": (3, 1)}


@pytest.mark.integration
async def test_parity_by_day_and_facility_is_kept_in_the_ledger(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "shadow",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}])
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            parity = svc.interfaces[IFACE].stats.parity
            async with MllpTestClient(svc.interfaces[IFACE].listener.port) as client:
                for _, message, answer in TRAFFIC:
                    engine.ack_code = answer
                    await client.exchange(message)
                engine.ack_code = "AA"
                await client.exchange(TRAFFIC[0][1])  # a re-send: a sample of the window, not of the ledger
            await wait_for(lambda: parity.samples == len(TRAFFIC) + 1, timeout=20)

            async def counted() -> bool:
                return samples_by_facility(await ledger_view(http, svc.api_url)) == WANT

            await wait_for(counted, timeout=20)
            view = await ledger_view(http, svc.api_url)
            # The window saw every sample, the re-send too; the ledger counts each unit once.
            assert (parity.agree, parity.disagree) == (7, 3)
            total = {"agree": 0, "disagree": 0, "shadow": 0, "duplicates": 0}
            for day in view["days"]:
                for key in total:
                    total[key] += day["total"]["parity_" + key if key in ("agree", "disagree") else key]
            assert total == {"agree": 6, "disagree": 3, "shadow": 9, "duplicates": 1}, total

            code, out, err = await ficus_cli(svc.api_url)
            assert code == 0, err
            head, *rows = out.splitlines()
            at = head.index("parity agree")  # columns are padded: a row's cells start where its head's do
            assert head[at:].split()[:4] == ["parity", "agree", "parity", "disagree"]
            cells = {r.split()[1]: r[at:].split()[:2] for r in rows if r.startswith(ledger.day_of())}
            assert (cells["NORTH"], cells["SOUTH"], cells["total"]) == (["3", "2"], ["3", "1"], ["6", "3"]), out

        # A restart keeps them: they are the ledger stream, not this process's memory.
        async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
            assert samples_by_facility(await ledger_view(http, svc.api_url)) == WANT
            async with http.get(f"{svc.api_url}/console/interfaces/{IFACE}") as resp:
                assert resp.status == 200
                page = await resp.text()
    (caption,) = [c for c in tables(page) if c.startswith("Parity by day and facility")]
    thead, *trows = tables(page)[caption]
    assert thead == ["Day (UTC)", "Facility", "Samples", "Agree", "Disagree", "Parity", "Against the gate"]
    assert '<th scope="col">Samples</th>' in page and 'id="h-parity-days"' in page
    shown = {r[1]: r[2:] for r in trows if r[0] == ledger.day_of()}
    assert shown == {"NORTH": ["5", "3", "2", "0.6000", "below 0.99"],
                     "SOUTH": ["4", "3", "1", "0.7500", "below 0.99"]}, trows
    assert "the gate needs 0.99 over 20 samples" in page
    folded = await assert_ledger_balances(nats_server.url)
    assert sum(r.parity_agree + r.parity_disagree for d in folded[IFACE].values() for r in d.values()) == 9


async def ficus_cli(api: str | None) -> tuple[int, str, str]:
    assert api is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli", "ledger", IFACE, "--api", api, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
