"""Issue 11 item 11: `/readyz` reflects every interface, with the reason. A folder interface
whose drop folder is missing, an SFTP source that cannot be reached or whose host key is
rejected, an ODBC interface whose database refuses connections, an MLLP listener that is not
bound: each answers 503 with `<iface>: <reason>` after the first failed pass, and 200 again as
soon as a pass succeeds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.config import parse_config
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.sshd import SshServer, keygen, sshd_fixture  # noqa: F401
from tests.test_files_sftp import sftp_iface

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "router/examples/ficus.toml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def readyz(url: str | None) -> tuple[int, list[str]]:
    assert url is not None
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
        body = await resp.json()
        return resp.status, body["problems"]


async def not_ready_naming(url: str | None, iface: str, *words: str, timeout: float = 30) -> list[str]:
    """Waits for a 503 whose problems have one line `<iface>: ...` holding every word."""
    seen: list[str] = []

    async def check() -> bool:
        status, problems = await readyz(url)
        seen[:] = problems
        return status == 503 and any(p.startswith(f"{iface}: ") and all(w in p for w in words) for p in problems)

    try:
        await wait_for(check, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"no 503 naming {iface} with {words}; problems: {seen}") from None
    return seen


def example_config(tmp: Path, nats_url: str) -> Any:
    """router/examples/ficus.toml as a new user runs it, on free ports, with its drop folder missing."""
    data = tomllib.loads(EXAMPLE.read_text())
    data["state_dir"] = str(tmp / "state")
    data["nats"] = {"url": nats_url, "publish_timeout_seconds": 2}
    data["api"] = {"listen": "127.0.0.1:0"}
    for iface in data["interfaces"]:
        if iface["kind"] == "hl7-mllp":
            iface["listen"] = "127.0.0.1:0"
            iface["legacy"] = f"mllp://127.0.0.1:{free_port()}"
        else:
            for key in ("path", "archive_dir", "legacy"):
                iface[key] = str(tmp / iface[key].lstrip("/"))
            iface["poll_seconds"] = 0.2
            assert not Path(iface["path"]).exists()
    return parse_config(data, "example")


async def test_example_config_with_its_drop_folder_missing_is_not_ready_until_it_exists(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = example_config(tmp_path, nats_server.url)
    [folder] = [i for i in cfg.interfaces if i.kind == "folder"]
    drop = Path(folder.path)
    async with service_factory(cfg) as svc:
        problems = await not_ready_naming(svc.api_url, "billing-export", "cannot list", "FileNotFoundError")
        assert all(len(p) <= 400 for p in problems), problems
        assert not any(p.startswith(("his-adt", "his-charges")) for p in problems), "the MLLP interfaces are fine"
        # A load balancer checks an MLLP backend with its interface: the folder's problem does not
        # take the instance's MLLP listeners out of the pool (deploy/haproxy/ficus.cfg).
        async with aiohttp.ClientSession() as http:
            async def scoped(query: str) -> tuple[int, Any]:
                async with http.get(f"{svc.api_url}/readyz?{query}") as resp:
                    return resp.status, await resp.json()

            status, body = await scoped("interface=his-adt,his-charges")
            assert (status, body["ready"], body["problems"]) == (200, True, [])
            status, body = await scoped("interface=billing-export")
            assert status == 503 and [p.split(":")[0] for p in body["problems"]] == ["billing-export"]
            assert (await scoped("interface=no-such-interface"))[0] == 404
            assert (await scoped("interface=Not%20A%20Slug"))[0] == 400
        for directory in (drop, folder.archive_dir, folder.legacy):
            os.makedirs(str(directory), exist_ok=True)
        await wait_for(lambda: _is(readyz(svc.api_url), (200, [])), timeout=30, interval=0.1)


async def _is(pending: Any, expected: Any) -> bool:
    return bool(await pending == expected)


class Forwarder:
    """A TCP port that forwards to another (a database reachable again), real sockets both ways."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_odbc_database_refusing_connections_is_not_ready_until_it_answers(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    from tests.odbc_db import usage_table  # skips when PostgreSQL or its ODBC driver is absent

    with usage_table("postgresql") as db:
        port = free_port()  # nothing listens: connections are refused
        iface = db.interface("usage", connection_string=db.connection_string.replace("PORT=5432", f"PORT={port}"))
        cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
        fwd = Forwarder(port, 5432)
        try:
            async with service_factory(cfg) as svc:
                await not_ready_naming(svc.api_url, "usage", "database unavailable")
                db.insert(3)
                await fwd.start()  # the database is reachable again
                await wait_for(lambda: _is(readyz(svc.api_url), (200, [])), timeout=30, interval=0.1)
                await wait_for(lambda: svc.interfaces["usage"].stats.published == 3, timeout=30)
        finally:
            await fwd.close()


async def test_sftp_server_unreachable_or_host_key_rejected_is_not_ready(
    sshd: SshServer, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    unreachable = sftp_iface(sshd, name="payer-down")
    unreachable["sftp"] = {**unreachable["sftp"], "port": free_port()}
    other = tmp_path / "other_host_key"
    keygen(other)
    pub = other.with_suffix(".pub").read_text().split()
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    rejected = sftp_iface(sshd, name="payer-spoofed")
    rejected["sftp"] = {**rejected["sftp"], "known_hosts": str(wrong)}
    fine = sftp_iface(sshd, name="payer-835")
    cfg = make_config(nats_server.url, [unreachable, rejected, fine], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        await not_ready_naming(svc.api_url, "payer-down", "SourceUnavailable")
        problems = await not_ready_naming(svc.api_url, "payer-spoofed", "host key")
        assert not any(p.startswith("payer-835") for p in problems), problems


async def test_mllp_listener_not_bound_is_named(
    nats_server: EmbeddedNats, service_factory: ServiceFactory
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}])
    async with service_factory(cfg) as svc:
        assert await readyz(svc.api_url) == (200, [])
        listener = svc.interfaces["his-charges"].listener
        assert listener is not None
        await listener.close()
        status, problems = await readyz(svc.api_url)
        assert status == 503
        assert problems == ["his-charges: MLLP listener not bound (127.0.0.1:0)"], problems


def _inotify_instances() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += "inotify" in str(fd.readlink())
    return count


async def test_a_missing_folder_rescanned_does_not_leak_inotify_instances(tmp_path: Path) -> None:
    """Each pass over a missing drop folder used to leave one inotify instance open; the
    per-user limit (128 by default) then crashed every folder interface of the machine."""
    from wrappers.completeness import CompletenessRule
    from wrappers.file_source import SourceUnavailable
    from wrappers.folder_watcher import FolderWatcher

    watcher = FolderWatcher("billing", tmp_path / "missing", ["*.csv"], CompletenessRule(mode="rename"))
    before = _inotify_instances()
    try:
        for _ in range(20):
            with pytest.raises(SourceUnavailable):
                await watcher.scan()
        assert _inotify_instances() <= before + 1, "one observer at most"
        (tmp_path / "missing").mkdir()
        assert await watcher.scan() == []
        assert _inotify_instances() <= before + 1
    finally:
        await watcher.close()
    assert _inotify_instances() == before


def test_a_scoped_readiness_keeps_the_sibling_workers_problems_of_those_interfaces_and_their_own() -> None:
    from router.service import _concerns

    known = {"his-adt", "billing-export"}
    assert _concerns("worker ficus-w2: his-adt: listener not bound", {"his-adt"}, known)
    assert not _concerns("worker ficus-w2: billing-export: cannot list", {"his-adt"}, known)
    assert _concerns("worker ficus-w2: NATS not connected", {"his-adt"}, known)
    assert _concerns("worker ficus-w2: not ready", {"his-adt"}, known)
