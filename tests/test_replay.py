"""Replay through the one stage: dry runs that say what would change, real replays the
ledger counts, for MLLP (here), and for files and database rows (test_replay_kinds.py);
progress on a terminal and silence on a pipe."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from router import names, simulate
from router.embedded_nats import EmbeddedNats
from tests import terminal
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.mllp_client import msa, send_one
from tests.test_enrichment import _with_code

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
IFACE = "his-charges"


def cli(api_url: str, *args: str, stderr_tty: bool = False, timeout: float = 120) -> tuple[int, str, str]:
    """`ficus ARGS --api URL`: (exit code, stdout, stderr), stderr on a real pty or a pipe."""
    cmd = [sys.executable, "-m", "router.cli", *args, "--api", api_url]
    code, out, err = terminal.run(cmd, stderr_tty=stderr_tty, timeout=timeout)
    return code, out.decode(), err.decode()


async def test_mllp_dry_run_names_the_changed_events_and_the_real_replay_is_counted(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    tables = tmp_path / "tables"
    shutil.copytree(REPO / "fixtures/reference", tables)
    cfg = make_config(
        nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}],
        reference={"charge_codes": str(tables / "charge_codes.csv"), "reload_seconds": 0.2},
    )
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        port = svc.interfaces[IFACE].listener.port
        for n in (1, 2):
            assert msa(await send_one(port, _with_code(simulate.dft(n, lines=2), "80053")))[0] == "AA"
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 4
        api = svc.api_url or ""

        # Nothing changed yet: a dry run finds every event unchanged.
        code, out, err = await asyncio.to_thread(cli, api, "replay", IFACE, "--since", "2000-01-01", "--dry-run")
        assert code == 0, err
        assert "2 units would be replayed (4 events), 0 failed" in out
        assert "0 changed, 0 added, 0 removed, 4 unchanged" in out

        # The mapping's table changes the GL account of 80053.
        text = (tables / "charge_codes.csv").read_text().replace("80053,0301,4100-310", "80053,0301,4100-311")
        assert text != (tables / "charge_codes.csv").read_text()
        (tables / "charge_codes.csv").write_text(text)
        await wait_for(lambda: svc.reference is not None and svc.reference.data.tables["charge_codes"]
                       .get("80053") is not None and "4100-311" in str(svc.reference.data.tables["charge_codes"]
                                                                        .get("80053")), timeout=10)
        resp = await http.post(f"{api}/api/v1/replay/{IFACE}", json={"since": "2000-01-01T00:00:00Z",
                                                                      "dry_run": True})
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        diff = body["diff"]
        assert (diff["changed"], diff["added"], diff["removed"], diff["unchanged"]) == (4, 0, 0, 0)
        assert diff["before"]["events"] == diff["after"]["events"] == 4
        assert diff["before"]["money"] == diff["after"]["money"], "the amounts did not change"
        first = diff["first"][0]
        assert first["change"] == "changed" and first["type"] == "org.ficus.revenue.charge.posted.v1"
        assert [(f["field"], f["before"], f["after"]) for f in first["fields"]] == [
            ("data.erp.gl_account", "4100-310", "4100-311")]
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 4, "a dry run publishes nothing"

        code, out, err = await asyncio.to_thread(cli, api, "replay", IFACE, "--since", "2000-01-01", "--dry-run")
        assert "4 changed, 0 added, 0 removed, 0 unchanged" in out
        assert "data.erp.gl_account: \"4100-310\" -> \"4100-311\"" in out

        code, out, err = await asyncio.to_thread(cli, api, "replay", IFACE, "--since", "2000-01-01")
        assert code == 0, err
        assert "2 units replayed (4 events), 0 failed" in out
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 8
        ledger = await (await http.get(f"{api}/api/v1/ledger/{IFACE}")).json()
        total = ledger["days"][0]["total"]
        assert (total["received"], total["published"], total["events"]) == (2, 2, 4)
        assert (total["replayed"], total["replayed_events"]) == (2, 4)
        # The ledger_balances fixture checks stored events = published + replayed after the test.

        # Now the dry run compares with the replayed (last) version of each event.
        code, out, err = await asyncio.to_thread(cli, api, "replay", IFACE, "--since", "2000-01-01", "--dry-run")
        assert "0 changed, 0 added, 0 removed, 4 unchanged" in out


async def test_replay_shows_progress_on_a_terminal_and_nothing_when_piped(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": IFACE, "mapping": "hl7v2.dft_p03", "route": "modern"}])
    async with service_factory(cfg) as svc:
        # Raw traffic as the listener archives it, written straight to the raw stream (fast).
        count = 3000
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            acks = [js.publish(names.raw_subject(IFACE), simulate.dft(n, lines=1), stream=names.STREAM_RAW)
                    for n in range(1, count + 1)]
            await asyncio.gather(*acks)
        finally:
            await nc.close()
        api = svc.api_url or ""
        code, out, err = await asyncio.to_thread(cli, api, "replay", IFACE, "--since", "2000-01-01",
                                                 "--dry-run", stderr_tty=True)
        assert code == 0, err
        assert f"{count} units would be replayed ({count} events)" in out
        # One line redrawn with \r: units of a known total, a rate, time left; erased at the end.
        drawn = rf"{IFACE}: [\d,]+ / {count:,} units \(\d+%\), [\d.,]+ units/s, \d+:\d\d left"
        assert re.search(drawn, err), repr(err[-500:])
        assert terminal.screen(err) == "", repr(err[-200:])

        code, out, err = await asyncio.to_thread(cli, api, "replay", IFACE, "--since", "2000-01-01", "--dry-run")
        assert code == 0 and err == "", err
        assert f"{count} units would be replayed ({count} events)" in out


def test_a_dry_runs_differences_without_values_name_fields_only() -> None:
    from router.replay import without_values

    diff = {"changed": 1, "first": [
        {"id": "e1", "type": "t", "change": "changed",
         "fields": [{"field": "data.erp.gl_account", "before": "4100-310", "after": "4100-311"}]},
        {"id": "e2", "type": "t", "change": "added"}]}
    shown = without_values(diff)
    assert shown["first"] == [
        {"id": "e1", "type": "t", "change": "changed", "fields": [{"field": "data.erp.gl_account"}]},
        {"id": "e2", "type": "t", "change": "added"}]
    assert shown["changed"] == 1 and diff["first"][0]["fields"][0]["before"] == "4100-310", "the input is left whole"
