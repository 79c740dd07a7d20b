"""HL7 v2 on file interfaces (issue 17 item 4): HL7 files and FHS/BHS batches dropped in a folder
or on SFTP, each message a unit with its own dead letter, an optional batch ACK file next to the
legacy delivery; exactly once across a kill -9.

Real components: a real Service (or `ficus run` as a process) on a real nats-server, a real
folder, a real OpenSSH sshd for the SFTP case."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canonical.context import TranslationContext
from canonical.errors import TranslationError
from canonical.hl7v2.ack import ack_code
from router import names
from router.config import ConfigError
from router.embedded_nats import EmbeddedNats
from router.file_units import Hl7Spec, file_units
from router.hl7_files import AckFile
from tests.conftest import ServiceFactory, _read_all, assert_ledger_balances, make_config, stream_count, wait_for
from tests.ficus_proc import terminate
from tests.sshd import SshServer, sshd_fixture  # noqa: F401  (the sshd fixture)
from tests.test_files_sftp import sftp_iface

pytestmark = pytest.mark.usefixtures("ledger_balances")  # after each test on a nats-server

REPO = Path(__file__).resolve().parent.parent
GOOD = (REPO / "fixtures/hl7/dft_p03_charge_and_credit.hl7").read_bytes()
BAD = (REPO / "fixtures/hl7/dft_p03_bad_amount.hl7").read_bytes()


def message(n: int, *, bad: bool = False, facility: str = "NORTHCLINIC") -> bytes:
    """A DFT^P03 (two FT1: 2 events) under control id DFT<n>; ``bad``: FT1[2]-11 is not a number."""
    raw = (BAD if bad else GOOD).replace(b"|DFT0002|", b"|DFT0001|")
    raw = raw.replace(b"|DFT0001|", b"|DFT%06d|" % n, 1)
    return raw.replace(b"|NORTHCLINIC|FICUS|", b"|%s|FICUS|" % facility.encode(), 1)


def batch(messages: list[bytes], *, end: bytes = b"\r\n") -> bytes:
    """An FHS/BHS batch file of ``messages``, segments ended by ``end``, as legacy engines write them."""
    head = [b"FHS|^~\\&|SYNTH_HIS|NORTHCLINIC|FICUS|ERP|20240305150000||charges.hl7||FILE-77",
            b"BHS|^~\\&|SYNTH_HIS|NORTHCLINIC|FICUS|ERP|20240305150000||||BATCH-77"]
    body = [seg for m in messages for seg in m.rstrip(b"\r").split(b"\r")]
    tail = [b"BTS|%d" % len(messages), b"FTS|1"]
    return end.join([*head, *body, *tail]) + end


def ack_lines(data: bytes) -> list[str]:
    return data.decode("latin-1").rstrip("\r").split("\r")


def acks_of(data: bytes) -> list[tuple[str, str]]:
    """(MSA-1, MSA-2) of each ACK in a batch ACK file."""
    found = []
    for chunk in data.split(b"\rMSH")[1:]:
        found.append(ack_code(b"MSH" + chunk.split(b"\rBTS")[0]))
    return found


# -- units, pure ------------------------------------------------------------------------------


def test_each_message_of_a_batch_is_a_unit_and_a_bad_one_fails_alone() -> None:
    data = batch([message(1), message(2), message(3, bad=True), message(4), message(5)])
    ctx = TranslationContext("charges", "live", "objectstore://x", datetime(2024, 3, 5, tzinfo=UTC))
    ack = AckFile("ab" * 32, 1709650800.0)
    units = list(ack.collect(file_units(io.BytesIO(data), "hl7v2", None, ctx, name="charges.hl7", sha256="x",
                                        reference=None, hl7=Hl7Spec())))
    assert [u.index for u in units] == [0, 1, 2, 3, 4]
    assert [len(u.events) for u in units] == [2, 2, 0, 2, 2]
    assert [u.error is None for u in units] == [True, True, False, True, True]
    bad = units[2]
    assert isinstance(bad.error, TranslationError) and bad.error.locator == "FT1[2]-11"
    assert bad.error.reason.startswith("charges.hl7 message 3: ")
    assert bad.locator == "charges.hl7 message 3 (line 23)"  # FHS, BHS, then 10 segments a message
    assert {u.facility for u in units} == {"NORTHCLINIC"} and units[0].message_type == "DFT^P03"
    content = ack.content(data[:65536], "charges.hl7")
    lines = ack_lines(content)
    assert lines[0] == ("FHS|^~\\&|FICUS|ERP|SYNTH_HIS|NORTHCLINIC|20240305150000||charges.hl7||"
                        "ABABABABABABABABABA|FILE-77")
    assert lines[1].startswith("BHS|^~\\&|FICUS|ERP|SYNTH_HIS|NORTHCLINIC|") and lines[1].endswith("|BATCH-77")
    assert lines[-2:] == ["BTS|5", "FTS|1"]
    assert acks_of(content) == [("AA", "DFT000001"), ("AA", "DFT000002"), ("AE", "DFT000003"),
                                ("AA", "DFT000004"), ("AA", "DFT000005")]
    err = next(line for line in lines if line.startswith("ERR"))
    assert "|FT1^2^11|102^" in err and "charges.hl7 message 3" in err and "45,00" not in err


def test_a_control_id_repeated_in_the_file_is_refused_and_the_file_read_in_small_chunks_is_the_same() -> None:
    data = batch([message(1), message(2), message(1)], end=b"\n")
    ctx = TranslationContext("charges", "live", "objectstore://x", datetime(2024, 3, 5, tzinfo=UTC))
    units = list(file_units(io.BytesIO(data), "hl7v2", None, ctx, name="f.hl7", sha256="x", reference=None))
    assert [u.error is None for u in units] == [True, True, False]
    error = units[2].error
    assert error is not None and "repeats message 1" in error.reason and error.hl7_code == "205"
    not_hl7 = list(file_units(io.BytesIO(b"hello\nworld\n"), "hl7v2", None, ctx, name="g.hl7", sha256="y",
                              reference=None))
    assert len(not_hl7) == 1 and not_hl7[0].error is not None
    assert not_hl7[0].error.reason == "g.hl7 message 1: message does not start with an MSH segment"
    ack = AckFile("cd" * 32, 0.0)
    list(ack.collect(iter(not_hl7)))
    assert acks_of(ack.content(b"hello", "g.hl7")) == [("AR", "")]




def test_an_empty_batch_has_no_unit_and_its_ack_counts_none() -> None:
    data = batch([])
    ctx = TranslationContext("charges", "live", "objectstore://x", datetime(2024, 3, 5, tzinfo=UTC))
    ack = AckFile("ef" * 32, 0.0)
    assert list(ack.collect(file_units(io.BytesIO(data), "hl7v2", None, ctx, name="none.hl7", sha256="z",
                                       reference=None))) == []
    lines = ack_lines(ack.content(data, "none.hl7"))
    assert [line[:3] for line in lines] == ["FHS", "BHS", "BTS", "FTS"] and lines[2] == "BTS|0"


@pytest.mark.parametrize(("extra", "problem"), [
    ({"format": "x12-835"}, "ack_file is for format 'hl7v2' only"),
    ({"legacy": None, "route": "modern"}, "ack_file needs ack_dir"),
    ({"legacy": "in-place", "after": "leave", "route": "shadow"}, "ack_file needs ack_dir"),
    ({"ack_suffix": "/x"}, "ack_suffix must be"),
    ({"mapping": "hl7v2.nope"}, "unknown HL7 v2 mapping 'hl7v2.nope'"),
    ({"encoding": "klingon-8"}, "unknown encoding 'klingon-8'"),
])
def test_the_config_refuses_an_ack_file_it_cannot_write_and_an_unknown_mapping(
    tmp_path: Path, extra: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        make_config("nats://127.0.0.1:4222", [folder_iface(tmp_path, **extra)])
    make_config("nats://127.0.0.1:4222", [folder_iface(tmp_path, legacy=None, route="modern",
                                                       ack_dir=str(tmp_path / "acks"))])


# -- a real service on a real nats-server ---------------------------------------------------------


def folder_iface(tmp: Path, **extra: Any) -> dict[str, Any]:
    for d in ("in", "archive", "legacy"):
        (tmp / d).mkdir(exist_ok=True)
    return {
        "name": "charges", "kind": "folder", "path": str(tmp / "in"), "patterns": ["*.hl7"],
        "poll_seconds": 0.2, "complete": "rename", "format": "hl7v2", "after": "archive",
        "archive_dir": str(tmp / "archive"), "legacy": str(tmp / "legacy"), "route": "shadow",
        "ack_file": True, **extra,
    }


def drop(tmp: Path, name: str, data: bytes) -> None:
    part = tmp / f"{name}.part"
    part.write_bytes(data)
    part.rename(tmp / "in" / name)  # complete = "rename": whole when it appears


async def events_and_letters(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Live and shadow events, and dead letters, as stored."""
    events = [json.loads(data) for stream in (names.STREAM_CANONICAL, names.STREAM_SHADOW)
              for data, _ in await _read_all(url, stream)]
    letters = [json.loads(data) for data, _ in await _read_all(url, names.STREAM_DLQ)]
    return events, letters


@pytest.mark.integration
async def test_batch_in_a_drop_folder_one_unit_per_message_bad_one_dead_lettered_alone_ack_next_to_legacy(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path)], state_dir=str(tmp_path / "state"))
    data = batch([message(1), message(2), message(3, bad=True), message(4), message(5, facility="SOUTHCLINIC")])
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["charges"].stats
        drop(tmp_path, "charges.hl7", data)
        await wait_for(lambda: (tmp_path / "archive" / "charges.hl7").exists(), timeout=30)
        assert stats.acked == 1 and stats.dead_lettered == 1 and stats.shadow_published == 8
        drop(tmp_path, "empty.hl7", batch([]))  # a sender with nothing to send: no unit, no dead letter
        await wait_for(lambda: (tmp_path / "archive" / "empty.hl7").exists(), timeout=30)
        assert stats.acked == 2 and stats.dead_lettered == 1
    assert ack_lines((tmp_path / "legacy" / "empty.hl7.ack").read_bytes())[2:] == ["BTS|0", "FTS|1"]
    assert (tmp_path / "legacy" / "charges.hl7").read_bytes() == data  # the legacy consumer's file, unchanged
    content = (tmp_path / "legacy" / "charges.hl7.ack").read_bytes()
    assert [code for code, _ in acks_of(content)] == ["AA", "AA", "AE", "AA", "AA"]
    assert ack_lines(content)[-2:] == ["BTS|5", "FTS|1"]
    events, letters = await events_and_letters(nats_server.url)
    assert len(events) == 8 and {e["ficusmode"] for e in events} == {"shadow"}
    assert {e["ficusfacility"] for e in events} == {"NORTHCLINIC", "SOUTHCLINIC"}
    (letter,) = letters
    assert letter["interface"] == "charges" and letter["unit"] == "charges.hl7 message 3 (line 23)"
    assert letter["reason"].startswith("charges.hl7 message 3: ") and letter["locator"] == "FT1[2]-11"
    assert letter["sender"] == "SYNTH_HIS^NORTHCLINIC" and letter["message_type"] == "DFT^P03"
    assert letter["facility"] == "NORTHCLINIC" and letter["raw"].startswith("objectstore://")


@pytest.mark.integration
async def test_a_facility_canary_routes_each_message_of_one_file_by_its_msh4(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface = folder_iface(tmp_path, ack_file=False)
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        flip = {"mode": "modern", "reason": "canary SOUTHCLINIC", "facility": "SOUTHCLINIC", "force": True}
        assert (await http.put(f"{svc.api_url}/api/v1/routes/charges", json=flip)).status == 200
        drop(tmp_path, "mixed.hl7", batch([message(1), message(2, facility="SOUTHCLINIC"), message(3)]))
        await wait_for(lambda: (tmp_path / "archive" / "mixed.hl7").exists(), timeout=30)
    events, letters = await events_and_letters(nats_server.url)
    modes = {(e["ficusfacility"], e["ficusmode"]) for e in events}
    assert modes == {("NORTHCLINIC", "shadow"), ("SOUTHCLINIC", "live")} and not letters
    assert not (tmp_path / "legacy" / "mixed.hl7.ack").exists()  # ack_file off: none



@pytest.mark.integration
async def test_batch_on_sftp_each_message_a_unit_and_the_ack_next_to_the_sftp_legacy_delivery(
    sshd: SshServer, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface = sftp_iface(sshd, name="charges", patterns=["*.hl7"], format="hl7v2", ack_file=True,
                       stable_seconds=0.5)
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    data = batch([message(1), message(2, bad=True), message(3)], end=b"\r")
    (sshd.root / "in" / "remote.hl7").write_bytes(data)
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["charges"].stats
        await wait_for(lambda: (sshd.root / "archive" / "remote.hl7").exists(), timeout=30)
        assert stats.acked == 1 and stats.shadow_published == 4 and stats.dead_lettered == 1
    assert (sshd.root / "legacy" / "remote.hl7").read_bytes() == data
    content = (sshd.root / "legacy" / "remote.hl7.ack").read_bytes()
    assert acks_of(content) == [("AA", "DFT000001"), ("AE", "DFT000002"), ("AA", "DFT000003")]
    _, letters = await events_and_letters(nats_server.url)
    assert [x["unit"] for x in letters] == ["remote.hl7 message 2 (line 13)"]



@pytest.mark.integration
async def test_replay_of_an_hl7_file_interface_translates_its_messages_again(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [folder_iface(tmp_path, route="modern", ack_file=False)],
                      state_dir=str(tmp_path / "state"))
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        drop(tmp_path, "day.hl7", batch([message(1), message(2, bad=True), message(3)]))
        await wait_for(lambda: svc.interfaces["charges"].stats.acked == 1, timeout=30)
        resp = await http.post(f"{svc.api_url}/api/v1/replay/charges", json={"since": before.isoformat()})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert (body["units"], body["replayed"], body["failed"], body["events"]) == (1, 2, 1, 4)
    events, letters = await events_and_letters(nats_server.url)
    assert len({e["id"] for e in events}) == 4 and len(letters) == 1  # same ids again; no second letter



@pytest.mark.integration
async def test_a_site_map_applies_to_each_message_of_an_hl7_file_and_not_to_another_interface(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    site_dir, plain_dir = tmp_path / "north", tmp_path / "plain"
    site_dir.mkdir()
    plain_dir.mkdir()
    north = (REPO / "fixtures/mappings/dft_north_site.hl7").read_bytes()
    ifaces = [folder_iface(site_dir, name="north", route="modern", ack_file=False,
                           field_map=str(REPO / "fixtures/mappings/north_dft.toml")),
              folder_iface(plain_dir, name="plain", route="modern", ack_file=False)]
    cfg = make_config(nats_server.url, ifaces, state_dir=str(tmp_path / "state"))
    data = batch([north.replace(b"|DFTZ001|", b"|DFTZ%03d|" % n) for n in (1, 2)])
    async with service_factory(cfg):
        drop(site_dir, "site.hl7", data)
        drop(plain_dir, "site.hl7", data)
        await wait_for(lambda: all((d / "archive" / "site.hl7").exists() for d in (site_dir, plain_dir)), timeout=30)
    events, letters = await events_and_letters(nats_server.url)
    assert not letters
    by = {name: [e["data"] for e in events if e["ficusinterface"] == name] for name in ("north", "plain")}
    assert len(by["north"]) == len(by["plain"]) == 4
    assert {(d["account_number"], d["department"]) for d in by["north"]} == {("NA-77001", "CARDIOLOGY")}
    assert [d["extensions"]["cost_center"] for d in by["north"]] == ["CC-4410", "CC-5120"] * 2
    assert {d["account_number"] for d in by["plain"]} == {"ACCT000456"}  # PID-18: the built-in mapping
    assert all("extensions" not in d for d in by["plain"])


# -- exactly once across a kill -9 -----------------------------------------------------------------

MESSAGES = 12_000
BAD_EVERY = 1_000  # messages 1000, 2000, ...: a bad one in the middle of every chunk or so


def run_config(tmp: Path, nats_url: str) -> Path:
    for d in ("in", "archive", "acks"):
        (tmp / d).mkdir(exist_ok=True)
    conf = tmp / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp / 'state'}"
log_level = "WARNING"
[nats]
url = "{nats_url}"
[api]
listen = "127.0.0.1:0"
[[interfaces]]
name = "charges"
kind = "folder"
path = "{tmp / 'in'}"
patterns = ["*.hl7"]
poll_seconds = 0.2
complete = "rename"
format = "hl7v2"
mapping = "hl7v2.dft_p03"
after = "archive"
archive_dir = "{tmp / 'archive'}"
route = "modern"
ack_file = true
ack_dir = "{tmp / 'acks'}"
""")
    return conf


@pytest.mark.integration
async def test_kill_9_mid_batch_then_restart_each_message_exactly_once(nats_server: EmbeddedNats,
                                                                       tmp_path: Path) -> None:
    bad = {n for n in range(1, MESSAGES + 1) if n % BAD_EVERY == 0}
    data = batch([message(n, bad=n in bad) for n in range(1, MESSAGES + 1)])
    conf = run_config(tmp_path, nats_server.url)
    cmd = [sys.executable, "-m", "router.cli", "run", "-c", str(conf)]
    want_events = 2 * (MESSAGES - len(bad))
    first = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        drop(tmp_path, "night.hl7", data)
        await wait_for(lambda: _more_than(nats_server.url, 3_000), timeout=90, interval=0.02)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    published = await stream_count(nats_server.url, names.STREAM_CANONICAL)
    assert 0 < published < want_events, f"killed mid-file ({published} events)"
    assert (tmp_path / "in" / "night.hl7").exists() and not (tmp_path / "acks" / "night.hl7.ack").exists()

    log = tmp_path / "second.log"
    with log.open("wb") as errfile:  # a file, not a pipe: a full pipe would block the service
        second = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stderr=errfile)
        try:
            await wait_for(lambda: (tmp_path / "archive" / "night.hl7").exists(), timeout=180, interval=0.2)
        finally:
            await terminate(second)
    assert second.returncode == 0, log.read_text()[-2000:]
    events, letters = await events_and_letters(nats_server.url)
    assert len(events) == len({e["id"] for e in events}) == want_events, f"{published} before the kill"
    assert len(letters) == len(bad)
    assert sorted(int(x["unit"].split()[2]) for x in letters) == sorted(bad)  # "night.hl7 message N (line L)"
    content = (tmp_path / "acks" / "night.hl7.ack").read_bytes()
    acks = acks_of(content)
    assert len(acks) == MESSAGES and ack_lines(content)[-2] == f"BTS|{MESSAGES}"
    assert [n for n, (code, _) in enumerate(acks, 1) if code == "AE"] == sorted(bad)
    assert acks[0] == ("AA", "DFT000001") and acks[-1] == ("AE", f"DFT{MESSAGES:06d}")
    # The ledger counts each message once too: received = published + dead-lettered, no duplicates.
    rows = [row for days in (await assert_ledger_balances(nats_server.url))["charges"].values()
            for row in days.values()]
    assert sum(r.received for r in rows) == MESSAGES and sum(r.dead_lettered for r in rows) == len(bad)
    assert sum(r.events for r in rows) == want_events and sum(r.duplicates for r in rows) == 0
    print(f"killed after {published} of {want_events} events; after the restart {len(events)} events, "
          f"{len(letters)} dead letters, ledger {MESSAGES} received")


async def _more_than(url: str, count: int) -> bool:
    return await stream_count(url, names.STREAM_CANONICAL) > count
