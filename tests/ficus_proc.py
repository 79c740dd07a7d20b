"""`ficus run` as a real process with an embedded NATS, and the nats-servers found on a store.

Every process these helpers start is recorded so the test can kill it by PID in a finally;
servers are found in /proc by their command line (the config file of the store), so a test
sees orphans whether or not Ficus wrote a pid file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fast_ingest_state(api_port: int) -> tuple[object, object]:
    """What /readyz of a running `ficus run` says of fast-ingest batches: (path, batches committed)."""
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{api_port}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        body = await resp.json()
    return body.get("ingest"), body.get("ingest_batches")


def alive(pid: int) -> bool:
    """Exists and is not a zombie (orphans are reaped late, or never, in some containers)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def servers_on(store: Path) -> list[int]:
    """Live nats-server processes started with this store's config file."""
    conf = os.fsencode(store / "nats-server.conf")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(b"nats-server") and conf in argv and alive(int(entry)):
            found.append(int(entry))
    return sorted(found)


def store_url(store: Path) -> str:
    """The URL the store's server listens on, from the config Ficus wrote."""
    text = (store / "nats-server.conf").read_text()
    match = re.search(r'listen: "([^"]+)"', text)
    assert match, text
    return f"nats://{match.group(1)}"


def write_config(tmp: Path, state: Path, *, api_port: int, mllp_port: int, nats_port: int = 0) -> Path:
    conf = tmp / f"ficus-{api_port}.toml"
    conf.write_text(f"""
state_dir = "{state}"
log_level = "INFO"
[nats]
url = "embedded"
publish_timeout_seconds = 2
[nats.embedded]
port = {nats_port}
[api]
listen = "127.0.0.1:{api_port}"
[[interfaces]]
name = "his-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp_port}"
mapping = "hl7v2.dft_p03"
route = "modern"
""")
    return conf


class Ficus:
    """One `ficus run -c CONF` process, its stderr in a file (a pipe could fill and block it)."""

    def __init__(self, conf: Path, api_port: int, log: Path) -> None:
        self.conf, self.api_port, self.log = conf, api_port, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Ficus:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router.cli", "run", "-c", str(self.conf), cwd=REPO,
                stdout=asyncio.subprocess.DEVNULL, stderr=err)
        return self

    async def readyz(self) -> tuple[int, dict[str, object]] | None:
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{self.api_port}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_ready(self, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            assert self.proc is not None and self.proc.returncode is None, self.tail()
            got = await self.readyz()
            if got is not None and got[0] == 200:
                return
            assert loop.time() < deadline, f"not ready in {timeout}s: {got}\n{self.tail()}"
            await asyncio.sleep(0.1)

    async def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


async def terminate(proc: asyncio.subprocess.Process, timeout: float = 60) -> int:
    """SIGTERM, then the exit code within `timeout`; killed (and reaped) if still running then,
    whatever failed: never left behind."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def kill_servers(store: Path) -> None:
    """SIGKILL every nats-server on the store (test cleanup: they were started by this test)."""
    for pid in servers_on(store):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def wait_gone(pids: list[int], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(alive(p) for p in pids):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def csv_folder_interface(name: str, tmp: Path) -> str:
    """The TOML of a folder interface (`[[interfaces]]` onwards) taking the billing CSV export
    of fixtures/flat from `tmp/in`, archiving to `tmp/archive`, route modern, polled every 0.2 s."""
    flat = (REPO / "fixtures/flat/billing_export.toml").read_text()
    flat = flat.replace("[layout]", "[interfaces.flat.layout]").replace("[mapping]", "[interfaces.flat.mapping]")
    return f"""[[interfaces]]
name = "{name}"
kind = "folder"
path = "{tmp / 'in'}"
patterns = ["*.csv"]
poll_seconds = 0.2
complete = "rename"
format = "csv"
after = "archive"
archive_dir = "{tmp / 'archive'}"
route = "modern"
{flat}
"""
