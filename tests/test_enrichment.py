"""Reference-data enrichment on a running service: ERP coding on charges, unmapped values
dead-lettered with context, and a changed table picked up without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from router import names, simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.mllp_client import msa, send_one
from tests.test_service_mllp import read_subject

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def _with_code(payload: bytes, code: str) -> bytes:
    segments = payload.split(b"\r")
    out = []
    for seg in segments:
        if seg.startswith(b"FT1"):
            fields = seg.split(b"|")
            fields[7] = code.encode() + b"^TEST^CPT"
            seg = b"|".join(fields)
        out.append(seg)
    return b"\r".join(out)


def _with_department(payload: bytes, department: str) -> bytes:
    out = []
    for seg in payload.split(b"\r"):
        if seg.startswith(b"FT1"):
            fields = seg.split(b"|")
            fields[13] = department.encode()
            seg = b"|".join(fields)
        out.append(seg)
    return b"\r".join(out)


async def test_charges_carry_erp_coding_and_unmapped_codes_are_dead_lettered(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    tables = tmp_path / "tables"
    shutil.copytree(REPO / "fixtures/reference", tables)
    cfg = make_config(
        nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}],
        reference={"charge_codes": str(tables / "charge_codes.csv"), "departments": str(tables / "departments.csv"),
                   "facilities": str(tables / "facilities.csv"), "reload_seconds": 0.2},
    )
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-charges"].listener.port
        good = _with_code(simulate.dft(1, lines=2), "80053")
        assert msa(await send_one(port, good))[0] == "AA"
        events = await read_subject(nats_server.url, names.STREAM_CANONICAL, "canonical.revenue.charge.posted")
        assert len(events) == 2
        for event in events:
            erp = event["data"]["erp"]
            assert erp["revenue_code"] == "0301" and erp["gl_account"] == "4100-310"
            assert erp["service_line"] == "LABORATORY" and erp["cost_center"].startswith("CC-")

        unmapped = _with_code(simulate.dft(2, lines=2), "99999")
        reply = await send_one(port, unmapped)
        assert msa(reply)[0] == "AE"
        letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("his-charges"))
        assert letters[-1]["reason"] == "unmapped charge code: not in reference table charge_codes"
        assert letters[-1]["facility"] == "NORTH" and letters[-1]["amount"]
        assert letters[-1]["unit"] == "DFT00000002"

        xray = _with_department(_with_code(simulate.dft(3, lines=1), "71046"), "XRAY")
        assert msa(await send_one(port, xray))[0] == "AE"
        letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("his-charges"))
        assert letters[-1]["reason"] == "unmapped department: not in reference table departments"
        assert letters[-1]["unit"] == "DFT00000003"
        assert letters[-1]["facility"] == "NORTH" and letters[-1]["amount"]

        # The table gains the code; the same message now goes through, without a restart.
        with (tables / "charge_codes.csv").open("a") as fh:
            fh.write("99999,0999,4100-999,CC-MISC,OTHER\n")
        await wait_for(lambda: svc.reference is not None
                       and svc.reference.data.tables["charge_codes"].get("99999") is not None, timeout=10)
        assert msa(await send_one(port, unmapped))[0] == "AA"


def test_check_reports_table_problems(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "charge_codes.csv"
    bad.write_text("charge_code,revenue_code\n99213,0510\n")
    dupes = tmp_path / "departments.csv"
    dupes.write_text("department,cost_center\nLAB,CC-LAB\nLAB,CC-LAB2\n")
    conf = tmp_path / "ficus.toml"
    conf.write_text(f'[reference]\ncharge_codes = "{bad.name}"\ndepartments = "{dupes.name}"\n')
    result = subprocess.run([sys.executable, "-m", "router.cli", "check", "-c", str(conf)], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert "gl_account" in result.stderr and "duplicate" in result.stderr.lower()


async def test_dead_letter_replayed_after_the_table_is_fixed(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    import asyncio
    import subprocess
    import sys

    tables = tmp_path / "tables"
    shutil.copytree(REPO / "fixtures/reference", tables)
    cfg = make_config(
        nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}],
        reference={"charge_codes": str(tables / "charge_codes.csv"), "reload_seconds": 0.2},
    )
    async with service_factory(cfg) as svc:
        port = svc.interfaces["his-charges"].listener.port
        assert msa(await send_one(port, _with_code(simulate.dft(7, lines=2), "55555")))[0] == "AE"
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 0

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "router.cli", *args, "--api", svc.api_url or ""],
                                  capture_output=True, text=True, timeout=60, cwd=REPO)

        listing = await asyncio.to_thread(cli, "dlq", "list")
        _header, line = listing.stdout.splitlines()
        letter_id = line.split()[0]
        still = await asyncio.to_thread(cli, "dlq", "replay", letter_id)
        assert still.returncode == 1 and "unmapped charge code: not in reference table charge_codes" in still.stderr

        with (tables / "charge_codes.csv").open("a") as fh:
            fh.write("55555,0555,4100-555,CC-MISC,OTHER\n")
        await wait_for(lambda: svc.reference is not None
                       and svc.reference.data.tables["charge_codes"].get("55555") is not None, timeout=10)
        done = await asyncio.to_thread(cli, "dlq", "replay", letter_id)
        assert done.returncode == 0, done.stderr
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 2
        listing = await asyncio.to_thread(cli, "dlq", "list")
        assert "[replayed]" in listing.stdout

        # Replaying all traffic since a time re-publishes corrected events under new Msg-Ids.
        since = await asyncio.to_thread(cli, "replay", "his-charges", "--since", "2000-01-01T00:00:00Z")
        assert since.returncode == 0, since.stderr
        assert "1 units replayed (2 events)" in since.stdout
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 4
