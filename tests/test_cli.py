"""The `ficus` command line as a user runs it: check, translate, run with SIGTERM, demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from router import simulate
from tests.conftest import wait_for
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
    # No --state-dir: the demo's own temporary directory (under TMPDIR, here the test's) is removed.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = ficus("demo", "--duration", "20", timeout=90, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert not list(tmp_path.glob("ficus-demo-*")), "the demo left its temporary directory behind"
    # The banner's commands work as printed: the ficus path exists from the directory it ran in.
    command = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("routes "))
    assert (REPO / command).is_file(), command
    assert "not on" in out and ".venv/bin" in out
    assert "dashboard" in out
    assert "shadow.canonical.patient.encounter" in out
    assert "canonical.revenue.charge.posted" in out
    assert "flipped his-charges shadow -> modern" in out
    live = [line for line in out.splitlines() if line.strip().startswith("event  canonical.revenue")]
    assert live, "live charge events after the flip"
    # The simulated ERP (the demo's sink) received charges and remittances over HTTP, every
    # request's Standard Webhooks signature verified (a bad one makes the demo exit 1).
    erp = [line for line in out.splitlines() if line.startswith("erp  <- ")]
    assert any(" org.ficus.revenue.charge." in line and " acct ACCT" in line for line in erp), erp[-5:]
    assert any(" org.ficus.claims.remittance.received." in line and " payer-835 " in line for line in erp), erp[-5:]
    summary = next(line for line in out.splitlines() if line.startswith("ficus demo: the ERP received"))
    assert summary.endswith(" 0 bad signatures)"), summary
    assert "bad signature" not in result.stderr


async def test_demo_ctrl_c_removes_its_temporary_directory(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = tmp_path / "demo.out"
    with out.open("wb") as stdout:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "router.cli", "demo", cwd=REPO, env=env,
                                                    stdout=stdout, stderr=asyncio.subprocess.DEVNULL)
        try:
            await wait_for(lambda: "event  " in out.read_text(errors="replace"), timeout=120)
            assert _demo_dirs(tmp_path), "the demo keeps its state under TMPDIR"
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 90)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, out.read_text(errors="replace")[-2000:]
    assert not _demo_dirs(tmp_path), "Ctrl-C left the demo's temporary directory behind"


def _demo_dirs(tmp: Path) -> list[Path]:
    return list(tmp.glob("ficus-demo-*"))


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


# --- issue 10, item 9: no open API on the network ------------------------------------------

def _api_config(tmp_path: Path, api: str, nats_url: str = "embedded") -> Path:
    conf = tmp_path / "ficus.toml"
    conf.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[nats]
url = "{nats_url}"
[api]
{api}
[[interfaces]]
name = "his-adt"
kind = "hl7-mllp"
listen = "127.0.0.1:0"
mapping = "hl7v2.adt"
route = "modern"
""")
    return conf


def test_check_refuses_an_api_on_the_network_without_tokens(tmp_path: Path) -> None:
    result = ficus("check", "-c", str(_api_config(tmp_path, 'listen = "0.0.0.0:8080"')))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "api" in line and "api.tokens" in line and "api.insecure" in line
    result = ficus("check", "-c", str(_api_config(tmp_path, 'listen = "0.0.0.0:8080"\ninsecure = true')))
    assert result.returncode == 0, result.stderr
    assert "api.insecure" in result.stderr and "WARNING" in result.stderr
    # Tokens alone are not enough on the network: they would cross it in clear text without api.tls.
    result = ficus("check", "-c", str(_api_config(tmp_path, 'listen = "0.0.0.0:8080"\ntokens = {viewer = "v"}')))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "api.tls" in line and "api.insecure" in line
    api = 'listen = "0.0.0.0:8080"\ntokens = {viewer = "v"}\ntls = { cert = "api.pem", key = "api.key" }'
    result = ficus("check", "-c", str(_api_config(tmp_path, api)))
    assert result.returncode == 0, result.stderr


def test_run_refuses_an_api_on_the_network_without_tokens(tmp_path: Path) -> None:
    # An external URL nobody listens on: `run` must stop at the config, before connecting.
    conf = _api_config(tmp_path, f'listen = "0.0.0.0:{_free_port()}"', nats_url=f"nats://127.0.0.1:{_free_port()}")
    result = ficus("run", "-c", str(conf), timeout=30)
    assert result.returncode == 2, "refused: a usage error (issue 11 item 8)"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{conf}: api") and "api.tokens" in line


# --- issue 10, item 11: config errors never print secrets -----------------------------------

@pytest.mark.parametrize("value", ["nats://u:s3cret@h:4333,bad", "nats://u:s3cret@h:4333 bad",
                                   "nats://u:s3cret@h:4333,nats://v:s3cret@ h:1"])
def test_check_never_prints_an_env_resolved_secret(tmp_path: Path, value: str) -> None:
    conf = tmp_path / "ficus.toml"
    conf.write_text("""
[nats]
url = "env:FICUS_TEST_NATS_URL"
[api]
listen = "env:FICUS_TEST_LISTEN"
""")
    import os

    env = {**os.environ, "FICUS_TEST_NATS_URL": value, "FICUS_TEST_LISTEN": "s3cret.example:notaport"}
    result = ficus("check", "-c", str(conf), env=env)
    assert result.returncode == 1
    assert "nats.url" in result.stderr and "api.listen" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout, result.stderr


# --- issue 10, item 15: the one-command rollback takes every facility back ----------------

async def test_routes_set_without_facility_takes_every_facility_back(tmp_path: Path) -> None:
    from legacy.simulated_engine import SimulatedEngine
    from router.embedded_nats import EmbeddedNats
    from router.service import Service
    from tests.conftest import make_config
    from tests.mllp_client import send_one

    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        async with SimulatedEngine() as engine:
            cfg = make_config(server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "legacy",
                                            "legacy": f"mllp://127.0.0.1:{engine.port}"}])
            async with Service(cfg) as svc:
                assert svc.api_url is not None
                api = svc.api_url
                port = svc.interfaces["his-charges"].listener.port
                canary = await asyncio.to_thread(ficus, "routes", "set", "his-charges", "modern", "--facility",
                                                 "CLINIC07", "--force", "--reason", "canary", "--api", api)
                assert canary.returncode == 0, canary.stderr
                assert msa(await send_one(port, simulate.dft(1, facility="CLINIC07")))[0] == "AA"
                assert engine.received == [], "CLINIC07 is on modern"

                rollback = await asyncio.to_thread(ficus, "routes", "set", "his-charges", "legacy",
                                                   "--reason", "rollback", "--api", api)
                assert rollback.returncode == 0, rollback.stderr
                payload = simulate.dft(2, facility="CLINIC07")
                assert msa(await send_one(port, payload))[0] == "AA"
                assert engine.received == [payload], "the rollback took CLINIC07 back to the legacy engine"

                history = await asyncio.to_thread(ficus, "routes", "history", "his-charges", "--api", api)
                assert history.returncode == 0
                last = history.stdout.strip().splitlines()[-1]
                assert "rollback" in last and "cleared facilities CLINIC07=modern" in last

                # Keeping the overrides needs saying so.
                canary = await asyncio.to_thread(ficus, "routes", "set", "his-charges", "modern", "--facility",
                                                 "CLINIC07", "--force", "--reason", "canary again", "--api", api)
                assert canary.returncode == 0, canary.stderr
                kept = await asyncio.to_thread(ficus, "routes", "set", "his-charges", "shadow", "--keep-facilities",
                                               "--reason", "keep the canary", "--api", api)
                assert kept.returncode == 0, kept.stderr
                assert "now shadow" in kept.stdout and "CLINIC07" in kept.stdout
    finally:
        await server.stop()
