"""Shared pieces of the benchmark suite: the machine, free ports, child processes, medians."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    here = VENV_BIN / "nats-server"
    return str(here) if here.exists() else (shutil.which("nats-server") or "nats-server")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    nats_version = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "nproc_cmd": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nats_server": nats_version.replace("nats-server: ", ""),
        "nats_py": _version("nats-py"),
        "uvloop": _version("uvloop"),
        "hl7": _version("hl7"),
        "pydantic": _version("pydantic"),
        "pyx12": _version("pyx12"),
        "load_at_start": os.getloadavg(),
        "calibration_s_at_start": calibration_seconds(),
    }


def calibration_seconds() -> float:
    """Seconds for a fixed pure-Python loop (10 M additions), best of 3: how fast this shared
    machine runs Python right now, so runs on different days can be put side by side."""
    code = "import time\nbest = 9e9\nfor _ in range(3):\n    t = time.perf_counter(); s = 0\n" \
           "    for i in range(10_000_000): s += i\n    best = min(best, time.perf_counter() - t)\nprint(best)"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout
    return round(float(out), 2)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak RSS) of a live process."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_json(args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs a bench helper in its own process; its last stdout line is JSON."""
    proc = subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


class Child:
    """A long-running child process (Ficus, a ceiling server), stopped with SIGTERM."""

    def __init__(self, argv: list[str], *, log: Path, ready_port: int | None = None, cwd: Path = REPO,
                 env: dict[str, str] | None = None) -> None:
        self.argv, self.log_path, self.ready_port, self.cwd = argv, log, ready_port, cwd
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Child:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=self._log, cwd=self.cwd, env=self.env,
                                     start_new_session=True)
        if self.ready_port:
            wait_port(self.ready_port, timeout, self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_rss_mib(self) -> float:
        return peak_rss_mib(self.pid)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"child exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextlib.contextmanager
def nats_server(sync_always: bool = False) -> Iterator[str]:
    """A fresh nats-server with JetStream on a free loopback port and a temp store."""
    store = Path(tempfile.mkdtemp(prefix="ficus-bench-nats-"))
    port = free_port()
    conf = store / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\nmax_payload: 8MB\njetstream {{\n  store_dir: "{store}/js"\n'
                    + ("  sync_interval: always\n" if sync_always else "") + "}\n")
    child = Child([nats_server_binary(), "-c", str(conf)], log=store / "nats.log", ready_port=port)
    try:
        with child:
            yield f"nats://127.0.0.1:{port}"
    finally:
        shutil.rmtree(store, ignore_errors=True)


def ficus_config(work: Path, *, route: str, mllp_port: int, api_port: int, nats_port: int,
                 sync_always: bool = False, legacy_port: int | None = None, mapping: str = "hl7v2") -> Path:
    """A one-interface (hl7-mllp) ficus.toml with an embedded nats-server."""
    lines = [
        f'state_dir = "{work / "state"}"',
        'log_level = "WARNING"',
        "[nats]",
        'url = "embedded"',
        "[nats.embedded]",
        f"port = {nats_port}",
    ]
    if sync_always:
        lines.append('sync_interval = "always"')
    lines += ["[api]", f'listen = "127.0.0.1:{api_port}"', "[[interfaces]]", 'name = "bench"', 'kind = "hl7-mllp"',
              f'listen = "127.0.0.1:{mllp_port}"', f'mapping = "{mapping}"', f'route = "{route}"']
    if legacy_port:
        lines.append(f'legacy = "mllp://127.0.0.1:{legacy_port}"')
    path = work / "ficus.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
