"""The `ficus` command line as a user runs it: check, translate, run with SIGTERM, demo."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from router import simulate
from tests.mllp_client import MllpTestClient, msa

REPO = Path(__file__).resolve().parent.parent


def ficus(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kw)  # type: ignore[call-overload]


def test_check_lists_every_problem_with_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[api]
listen = "nowhere"
tokens = { operator = "env:FICUS_TEST_UNSET_TOKEN" }

[[interfaces]]
name = "his-charges"
kind = "hl7-mllp"
listen = "0.0.0.0:2575"
mapping = "hl7v2.nope"
route = "shadow"

[[interfaces]]
name = "Bad Name"
kind = "carrier-pigeon"
""")
    result = ficus("check", "-c", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(f"{bad}: ") for line in lines), lines
    text = result.stderr
    assert "api.tokens.operator: environment variable FICUS_TEST_UNSET_TOKEN is not set" in text
    assert "api.listen" in text
    assert "interfaces[his-charges].mapping" in text
    assert "interfaces[his-charges]" in text and "legacy destination" in text
    assert "interfaces[Bad Name]" in text and "carrier-pigeon" in text


def test_check_accepts_the_example(tmp_path: Path) -> None:
    result = ficus("check", "-c", str(REPO / "router/examples/ficus.toml"))
    assert result.returncode == 0, result.stderr
    assert "his-charges" in result.stdout


def test_translate_prints_events_and_dead_letters(tmp_path: Path) -> None:
    good = tmp_path / "good.hl7"
    good.write_bytes(simulate.dft(1, lines=3) + simulate.adt(2).replace(b"\r", b"\n"))
    result = ficus("translate", str(good))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in events] == ["org.ficus.revenue.charge.posted.v1"] * 2 + [
        "org.ficus.revenue.charge.credited.v1", "org.ficus.patient.encounter.admitted.v1"]
    broken = tmp_path / "broken.hl7"
    broken.write_bytes(b"this is not HL7\n")
    result = ficus("translate", str(good), str(broken))
    assert result.returncode == 1
    letters = [json.loads(line) for line in result.stderr.splitlines()]
    assert letters and letters[0]["file"] == str(broken) and letters[0]["reason"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sigterm_finishes_messages_in_flight(tmp_path: Path) -> None:
    from legacy.simulated_engine import SimulatedEngine

    async with SimulatedEngine(delay=1.5) as engine:
        port, api = _free_port(), _free_port()
        conf = tmp_path / "ficus.toml"
        conf.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[api]
listen = "127.0.0.1:{api}"
[[interfaces]]
name = "his-adt"
kind = "hl7-mllp"
listen = "127.0.0.1:{port}"
mapping = "hl7v2.adt"
legacy = "mllp://127.0.0.1:{engine.port}"
route = "legacy"
""")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "run", "-c", str(conf), cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    assert proc.returncode is None and loop.time() < deadline, "ficus run did not start"
                    await asyncio.sleep(0.1)
            payload = simulate.adt(77)
            async with MllpTestClient(port) as client:
                await client.send_raw(b"\x0b" + payload + b"\x1c\r")
                await asyncio.sleep(0.5)  # the message is now waiting on the slow legacy engine
                proc.send_signal(signal.SIGTERM)
                reply = await client.reply(timeout=10)
            assert msa(reply)[0] == "AA", "the message in flight was finished and acknowledged"
            assert engine.received == [payload]
            _, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err.decode()[-2000:]
            assert "stopped" in err.decode()
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_demo_shows_canonical_events(tmp_path: Path) -> None:
    result = ficus("demo", "--duration", "20", "--state-dir", str(tmp_path / "demo"), timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "dashboard" in out
    assert "shadow.canonical.patient.encounter" in out
    assert "canonical.revenue.charge.posted" in out
    assert "flipped his-charges shadow -> modern" in out
    live = [line for line in out.splitlines() if line.strip().startswith("event  canonical.revenue")]
    assert live, "live charge events after the flip"


def test_translate_x12_835_detects_the_format_and_reports_dead_letters(tmp_path: Path) -> None:
    fixtures = sorted((REPO / "fixtures/x12").glob("*"))
    assert fixtures, "synthetic 835 fixtures"
    result = ficus("translate", *map(str, fixtures))
    events = [json.loads(line) for line in result.stdout.splitlines()]
    types = {e["type"] for e in events}
    assert "org.ficus.claims.remittance.received.v1" in types
    assert "org.ficus.claims.claim.adjudicated.v1" in types
    letters = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.returncode == (1 if letters else 0)
    for letter in letters:
        assert letter["st_control"] is None or letter["reason"].startswith("ST ")
