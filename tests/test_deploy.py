"""What deploy/ ships: the systemd unit and the three-node example (deploy/cluster/).

The unit is checked by `systemd-analyze verify` (no warning) and for the settings the install
guide promises; its MemoryDenyWriteExecute is tried for real: `ficus run` with an embedded
nats-server under the kernel's equivalent (PR_SET_MDWE) takes a message. The example's three
nats-server configs are started as they are, ports and paths moved to free ones on loopback,
and form a JetStream cluster; Ficus's three configs pass `ficus check`, and ficus-a.toml runs
on that cluster with `nats.replicas = 3`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import nats
import pytest

from router import simulate
from router.cli import main as ficus_main
from router.embedded_nats import find_nats_server
from tests.ficus_proc import REPO, Ficus, free_port, kill_servers, write_config
from tests.mllp_client import MllpTestClient
from tests.nats_cluster import _js_ready
from tests.tls_certs import Pki

UNIT = REPO / "deploy" / "systemd" / "ficus.service"
CLUSTER = REPO / "deploy" / "cluster"
NODES = ("a", "b", "c")
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (a key may repeat); comments and blanks skipped."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_has_the_promised_settings() -> None:
    unit = unit_settings(UNIT.read_text())
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert svc["Type"] in ("exec", "simple")
    assert svc["ExecStart"] == "/opt/ficus/.venv/bin/ficus run -c /etc/ficus/ficus.toml"
    assert (svc["Restart"], svc["KillSignal"], svc["KillMode"]) == ("on-failure", "SIGTERM", "mixed")
    assert svc["User"] == "ficus" and svc["StateDirectory"] == "ficus" and svc["LogsDirectory"] == "ficus"
    assert float(svc["RestartSec"].rstrip("s")) > 0
    # Longer than Ficus's own bound: shutdown_timeout_seconds (30) + a drain + closing (15).
    assert float(svc["TimeoutStopSec"]) > 30 + 15 + 10
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "LockPersonality",
                "MemoryDenyWriteExecute"):
        assert svc[key] == "yes", key
    assert svc["ProtectSystem"] == "strict"
    assert svc["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert svc["CapabilityBoundingSet"] == "" and svc["AmbientCapabilities"] == ""
    assert "ReadWritePaths" in svc
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    # The unit as installed, its program where this checkout has it (verify checks it is executable).
    ficus = Path(sys.executable).with_name("ficus")
    assert ficus.exists(), ficus
    unit = tmp_path / "ficus.service"
    unit.write_text(UNIT.read_text().replace("/opt/ficus/.venv/bin/ficus", str(ficus)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stderr
    # The check can fail: a misspelt key is reported.
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    done = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "ProtectHomes" in done.stderr


def _deny_write_execute() -> None:
    """In the child before exec: no memory may become writable and executable (inherited across exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _mdwe_supported() -> bool:
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_deny_write_execute,
                           capture_output=True, timeout=30)
    return probe.returncode == 0


W_X = ("import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); "
       "print('mapped')")


async def test_ficus_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes: `ficus run` (and its embedded nats-server) under PR_SET_MDWE,
    the kernel's own form of that rule, starts and takes a message."""
    try:
        supported = await asyncio.to_thread(_mdwe_supported)
    except (OSError, subprocess.SubprocessError):
        supported = False
    if not supported:
        pytest.skip("this kernel has no PR_SET_MDWE")
    # The rule is in force in such a child: a writable and executable mapping is refused.
    probe = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", W_X], preexec_fn=_deny_write_execute,
                                    capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "mapped" not in probe.stdout, probe
    api_port, mllp_port = free_port(), free_port()
    conf = write_config(tmp_path, tmp_path / "state", api_port=api_port, mllp_port=mllp_port)
    ficus = Ficus(conf, api_port, tmp_path / "ficus.log")
    with (tmp_path / "ficus.log").open("ab") as err:
        ficus.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "run", "-c", str(conf), cwd=REPO, stdout=asyncio.subprocess.DEVNULL,
            stderr=err, preexec_fn=_deny_write_execute)
    try:
        await ficus.wait_ready()
        async with MllpTestClient(mllp_port) as client:
            ack = await client.exchange(simulate.dft(1))
        assert b"MSA|AA|" in ack, ack
        assert await ficus.terminate() == 0, ficus.tail()
    finally:
        ficus.kill_if_running()
        if ficus.proc is not None:
            await ficus.proc.wait()
        kill_servers(tmp_path / "state" / "nats")


# -- the three-node example --------------------------------------------------------------------


def _example_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"FICUS_NATS_PASSWORD": secrets.token_urlsafe(24), "FICUS_OPERATOR_TOKEN": secrets.token_urlsafe(32),
           "FICUS_PROMETHEUS_TOKEN": secrets.token_urlsafe(32)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _ficus_copy(name: str, tmp: Path, edit: Callable[[str], str] = lambda text: text) -> Path:
    """deploy/cluster/<name> with the paths it names under `tmp`, created (TLS files issued)."""
    text = CLUSTER.joinpath(name).read_text()
    pki = Pki(tmp / "tls")
    pki.issue("api", "127.0.0.1", "localhost")
    text = text.replace("/etc/ficus/tls/", f"{tmp / 'tls'}/").replace("/var/lib/ficus", str(tmp / "state"))
    text = text.replace("/srv/ficus/", f"{tmp / 'srv'}/")
    for path in re.findall(r'"(' + re.escape(str(tmp / "srv")) + r'[^"]*)"', text):
        Path(path).mkdir(parents=True, exist_ok=True)
    copy = tmp / name
    copy.write_text(edit(text))
    return copy


@pytest.mark.parametrize("node", NODES)
def test_each_ficus_example_passes_ficus_check(node: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _example_env(monkeypatch)
    copy = _ficus_copy(f"ficus-{node}.toml", tmp_path)
    assert ficus_main(["check", "-c", str(copy)]) == 0, capsys.readouterr().err
    assert ": ok (2 interfaces" in capsys.readouterr().out


def test_the_three_ficus_examples_differ_only_in_the_instance() -> None:
    texts = {n: CLUSTER.joinpath(f"ficus-{n}.toml").read_text() for n in NODES}
    for node, text in texts.items():
        assert f'instance = "ficus-{node}"' in text and "replicas = 3" in text
        assert re.search(r'^url = "nats://nats-a[^"]*,nats://nats-b[^"]*,nats://nats-c[^"]*"$', text, re.M), node
        assert text.replace(f"ficus-{node}", "ficus-X").replace(f"instance {node} of", "instance X of") == \
            texts["a"].replace("ficus-a", "ficus-X").replace("instance a of", "instance X of")


class ExampleCluster:
    """deploy/cluster/nats-{a,b,c}.conf on loopback: hosts, ports and the store moved, else as shipped."""

    def __init__(self, tmp: Path) -> None:
        self.client = {n: free_port() for n in NODES}
        self.route = {n: free_port() for n in NODES}
        self.confs: dict[str, Path] = {}
        for node in NODES:
            text = CLUSTER.joinpath(f"nats-{node}.conf").read_text()
            for other in NODES:
                text = text.replace(f"nats-{other}.example.internal:6222", f"127.0.0.1:{self.route[other]}")
            text = text.replace('listen: "0.0.0.0:4222"', f'listen: "127.0.0.1:{self.client[node]}"')
            text = text.replace('listen: "0.0.0.0:6222"', f'listen: "127.0.0.1:{self.route[node]}"')
            text = text.replace('http: "127.0.0.1:8222"', f'http: "127.0.0.1:{free_port()}"')
            text = text.replace("/var/lib/nats/jetstream", str(tmp / f"nats-{node}" / "js"))
            assert "example.internal" not in text and "0.0.0.0" not in text
            (tmp / f"nats-{node}").mkdir(parents=True, exist_ok=True)
            self.confs[node] = tmp / f"nats-{node}" / "nats.conf"
            self.confs[node].write_text(text)
        self.procs: list[asyncio.subprocess.Process] = []

    def url(self, user: str = "", password: str = "") -> str:
        auth = f"{user}:{password}@" if user else ""
        return ",".join(f"nats://{auth}127.0.0.1:{self.client[n]}" for n in NODES)

    async def start(self, env: dict[str, str]) -> None:
        for node in NODES:
            log = self.confs[node].with_suffix(".log").open("ab")
            with log:
                self.procs.append(await asyncio.create_subprocess_exec(
                    find_nats_server(), "-c", str(self.confs[node]), stdout=log, stderr=log,
                    env={**os.environ, **env}, start_new_session=True))

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def test_the_example_cluster_forms_and_runs_ficus_with_three_replicas(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _example_env(monkeypatch)
    cluster = ExampleCluster(tmp_path / "nats")
    api_port = free_port()
    ficus: Ficus | None = None
    try:
        await cluster.start({"FICUS_NATS_PASSWORD": env["FICUS_NATS_PASSWORD"]})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        for node in NODES:
            url = f"nats://ficus:{env['FICUS_NATS_PASSWORD']}@127.0.0.1:{cluster.client[node]}"
            while not await _js_ready(url):
                assert loop.time() < deadline, f"nats-{node} not ready: {cluster.confs[node].with_suffix('.log')}"
                await asyncio.sleep(0.2)
        # The password is required: a connection without it is refused.
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(f"nats://127.0.0.1:{cluster.client['a']}", allow_reconnect=False,
                               max_reconnect_attempts=0, connect_timeout=2)

        def on_loopback(text: str) -> str:
            for node in NODES:
                text = text.replace(f"nats-{node}.example.internal:4222", f"127.0.0.1:{cluster.client[node]}")
            text = text.replace('listen = "0.0.0.0:8080"', f'listen = "127.0.0.1:{api_port}"')
            text = text.replace('listen = "0.0.0.0:2576"', 'listen = "127.0.0.1:0"')
            return text.replace("engine.example.internal:6661", f"127.0.0.1:{free_port()}")

        conf = _ficus_copy("ficus-a.toml", tmp_path / "ficus", on_loopback)
        ficus = Ficus(conf, api_port, tmp_path / "ficus.log")
        await ficus.start()
        tls = ssl.create_default_context(cafile=str(tmp_path / "ficus" / "tls" / "ca.pem"))
        token = env["FICUS_PROMETHEUS_TOKEN"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async def instances() -> list[dict[str, object]] | None:
                assert ficus is not None and ficus.proc is not None and ficus.proc.returncode is None, ficus.tail()
                try:
                    async with http.get(f"https://127.0.0.1:{api_port}/api/v1/instances", ssl=tls,
                                        headers={"Authorization": f"Bearer {token}"}) as resp:
                        if resp.status != 200:
                            return None
                        found: list[dict[str, object]] = (await resp.json())["instances"]
                        return found if found and found[0]["health"] == "ready" else None
                except (aiohttp.ClientError, TimeoutError):
                    return None

            from tests.conftest import wait_for

            found = await wait_for(instances, timeout=90, interval=0.3)
            assert [i["instance"] for i in found] == ["ficus-a"]
        # Every stream and bucket Ficus made is on all three nodes.
        nc = await nats.connect(servers=cluster.url("ficus", env["FICUS_NATS_PASSWORD"]).split(","),
                                connect_timeout=5, max_reconnect_attempts=3)
        try:
            js = nc.jetstream()
            replicas = {s.config.name: s.config.num_replicas for s in await js.streams_info()}
            assert replicas["KV_ficus-instances"] == 3 and replicas["FICUS_CANONICAL"] == 3, replicas
        finally:
            await nc.close()
        assert await ficus.terminate() == 0, ficus.tail()
    finally:
        if ficus is not None:
            ficus.kill_if_running()
            if ficus.proc is not None:
                await ficus.proc.wait()
        await cluster.stop()
