"""The facility canary on a folder interface, end to end on a real nats-server: each record of
a file routed by its facility (live, shadow or only counted), the legacy consumer still given
the whole file byte for byte, the ledger balanced (conftest's ledger_balances)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.test_files_service import BILLING, folder_iface, sha
from tests.test_service_mllp import read_subject

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_balances")]
BY_FACILITY = Counter(line.rsplit(",", 1)[1] for line in BILLING.read_text().splitlines()[1:] if line.strip())


@pytest.mark.parametrize(("base", "facility", "override"), [
    ("shadow", "NORTH", "modern"),  # the canary: one facility live while the rest is in shadow
    ("legacy", "SOUTH", "modern"),  # straight from legacy: the others only counted
    ("modern", "NORTH", "legacy"),  # one facility rolled back: the legacy consumer must get its records
])
async def test_records_follow_their_facility_and_legacy_gets_the_whole_file(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path, base: str, facility: str,
    override: str,
) -> None:
    assert set(BY_FACILITY) == {"NORTH", "SOUTH"}, "the fixture has records of two facilities"
    other = ({"NORTH", "SOUTH"} - {facility}).pop()
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, route=base)], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        flip = {"mode": override, "reason": f"canary {facility}", "facility": facility, "force": True}
        assert (await http.put(f"{svc.api_url}/api/v1/routes/billing", json=flip)).status == 200
        stats = svc.interfaces["billing"].stats
        shutil.copy(BILLING, tmp_path / "in" / "mixed.csv")
        await wait_for(lambda: stats.acked == 1, timeout=20)
        ledger = await (await http.get(f"{svc.api_url}/api/v1/ledger/billing")).json()

    live = await read_subject(nats_server.url, names.STREAM_CANONICAL, "canonical.>")
    shadow = await read_subject(nats_server.url, names.STREAM_SHADOW, "shadow.>")
    modes = {facility: override, other: base}
    want_live = {f for f, m in modes.items() if m == "modern"}
    want_shadow = {f for f, m in modes.items() if m == "shadow"}
    assert Counter(e["ficusfacility"] for e in live) == {f: BY_FACILITY[f] for f in want_live}
    assert Counter(e["ficusfacility"] for e in shadow) == {f: BY_FACILITY[f] for f in want_shadow}
    assert {e["ficusmode"] for e in live} <= {"live"} and {e["ficusmode"] for e in shadow} <= {"shadow"}
    assert stats.published == len(live) and stats.shadow_published == len(shadow)
    assert stats.parity.samples == sum(BY_FACILITY[f] for f in want_shadow), "parity samples shadow records only"

    # Every mode here routes some records legacy or shadow: the legacy consumer takes the file whole.
    assert sha(tmp_path / "legacy" / "mixed.csv") == sha(BILLING)
    assert stats.legacy_forwarded == 1

    rows = {row["facility"]: row for row in ledger["days"][0]["facilities"]}
    for fac, mode in modes.items():
        outcome = "legacy" if mode == "legacy" else "published"
        assert rows[fac]["received"] == rows[fac][outcome] == BY_FACILITY[fac], (fac, rows[fac])


async def test_a_route_that_translates_nothing_counts_the_file_as_one_legacy_unit(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, route="legacy")], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        flip = {"mode": "legacy", "reason": "hold NORTH", "facility": "NORTH", "force": True}
        assert (await http.put(f"{svc.api_url}/api/v1/routes/billing", json=flip)).status == 200
        stats = svc.interfaces["billing"].stats
        shutil.copy(BILLING, tmp_path / "in" / "held.csv")
        await wait_for(lambda: stats.acked == 1, timeout=20)
        ledger = await (await http.get(f"{svc.api_url}/api/v1/ledger/billing")).json()
    assert sha(tmp_path / "legacy" / "held.csv") == sha(BILLING)
    assert stats.published == stats.shadow_published == stats.parity.samples == 0
    total = ledger["days"][0]["total"]
    assert total["received"] == total["legacy"] == 1, "not read: one unit"
