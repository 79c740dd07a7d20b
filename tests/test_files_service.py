"""File interfaces end to end on a real nats-server: drop folders (and SFTP in
test_files_sftp.py), exactly once, dead letters with file and line, legacy delivery."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.test_service_mllp import read_subject

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_balances")]
REPO = Path(__file__).resolve().parent.parent
BILLING = REPO / "fixtures/flat/billing_export.csv"


def billing_flat() -> dict[str, Any]:
    spec = tomllib.loads((REPO / "fixtures/flat/billing_export.toml").read_text())
    return {"layout": spec["layout"], "mapping": spec["mapping"]}


def folder_iface(tmp: Path, **extra: Any) -> dict[str, Any]:
    for d in ("in", "archive", "legacy"):
        (tmp / d).mkdir(exist_ok=True)
    return {
        "name": "billing", "kind": "folder", "path": str(tmp / "in"), "patterns": ["*.csv"],
        "poll_seconds": 0.2, "complete": "stable", "stable_seconds": 0.3, "format": "csv",
        "flat": billing_flat(), "after": "archive", "archive_dir": str(tmp / "archive"),
        "legacy": str(tmp / "legacy"), "route": "modern", **extra,
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def records(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines()[1:] if line.strip())


async def test_modern_folder_file_exactly_once_and_archived(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path)], state_dir=str(tmp_path / "state"))
    expected = records(BILLING)
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        shutil.copy(BILLING, tmp_path / "in" / "export1.csv")
        await wait_for(lambda: stats.acked == 1, timeout=20)
        assert (tmp_path / "archive" / "export1.csv").exists()
        assert not (tmp_path / "in" / "export1.csv").exists()
        assert not list((tmp_path / "legacy").iterdir()), "modern: no legacy delivery"
        count = await stream_count(nats_server.url, names.STREAM_CANONICAL)
        assert count == expected == stats.published

        # The same file again, and the same content under a new name: no new events.
        shutil.copy(BILLING, tmp_path / "in" / "export1.csv")
        shutil.copy(BILLING, tmp_path / "in" / "renamed.csv")
        await wait_for(lambda: not list((tmp_path / "in").glob("*.csv")), timeout=20)
        await asyncio.sleep(0.5)
        assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == expected
    raw = await stream_count(nats_server.url, "OBJ_" + names.OBJ_RAW_FILES)
    assert raw >= 2, "the original file is in the raw object store (chunks + meta)"


async def test_bad_record_is_dead_lettered_and_legacy_still_gets_the_file(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    lines = BILLING.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[9], "12x.50")  # AMOUNT of the record on line 4
    bad = tmp_path / "bad.csv"
    bad.write_text("\r\n".join(lines) + "\r\n")
    for route in ("legacy", "shadow"):
        base = tmp_path / route
        base.mkdir()
        cfg = make_config(nats_server.url, [folder_iface(base, route=route, name=f"billing-{route}")],
                          state_dir=str(base / "state"))
        async with service_factory(cfg) as svc:
            stats = svc.interfaces[f"billing-{route}"].stats
            shutil.copy(bad, base / "in" / "bad.csv")
            await wait_for(lambda: stats.acked == 1, timeout=20)  # noqa: B023 - awaited in the loop
            delivered = base / "legacy" / "bad.csv"
            assert sha(delivered) == sha(bad), "legacy delivery is byte-identical"
            assert not [p for p in (base / "legacy").iterdir() if p.name != "bad.csv"], "no temp files left"
            if route == "shadow":
                letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("billing-shadow"))
                assert len(letters) == 1
                assert "bad.csv" in letters[0]["reason"] and "line 4" in letters[0]["reason"]
                assert "amount" in letters[0]["reason"]
                shadow = await stream_count(nats_server.url, names.STREAM_SHADOW)
                assert shadow == records(bad) - 1
                # Parity evidence per record: the legacy side took the file, Ficus all but one line.
                assert stats.parity.samples == records(bad) and stats.parity.disagree == 1
                assert "line 4" in stats.parity.recent[0]["unit"]
            else:
                assert stats.shadow_published == 0 and stats.published == 0


async def test_file_written_slowly_is_not_read_before_complete(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, stable_seconds=1.0)], state_dir=str(tmp_path / "s"))
    data = BILLING.read_bytes()
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        target = tmp_path / "in" / "slow.csv"
        with target.open("wb") as fh:
            for i in range(0, len(data), 64):
                fh.write(data[i:i + 64])
                fh.flush()
                await asyncio.sleep(0.1)
                assert stats.received == 0, "not read while still being written"
        await wait_for(lambda: stats.acked == 1, timeout=20)
        assert stats.dead_lettered == 0
        assert stats.published == records(BILLING)


async def test_dead_letter_reason_names_file_and_line_once(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    lines = BILLING.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:3])  # the record on line 4 lost its other columns
    lines[5] = lines[5].replace(lines[5].split(",")[9], "12x.50")  # a bad AMOUNT on line 6
    (tmp_path / "x.csv").write_text("\r\n".join(lines) + "\r\n")
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, route="modern", legacy=None)],
                      state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        (tmp_path / "x.csv").rename(tmp_path / "in" / "x.csv")
        await wait_for(lambda: stats.acked == 1, timeout=20)
    letters = await read_subject(nats_server.url, names.STREAM_DLQ, names.dlq_subject("billing"))
    by_unit = {letter["unit"]: letter for letter in letters}
    assert set(by_unit) == {"x.csv line 4", "x.csv line 6"}
    assert by_unit["x.csv line 4"]["reason"] == "x.csv line 4: 3 columns, expected 12"
    assert by_unit["x.csv line 4"]["locator"] == "x.csv line 4"
    amount = by_unit["x.csv line 6"]
    assert amount["reason"].startswith("x.csv line 6: ") and amount["reason"].count("x.csv") == 1
    assert amount["reason"].count("line 6") == 1
