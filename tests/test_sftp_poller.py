"""SFTP source against a real OpenSSH server: completeness, byte-identical fetch, host key
pinning, a server that stops answering mid-download, archive/delete/leave."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from protocols.backoff import Backoff
from tests.sshd import SshServer, eventually, keygen, names, sshd_fixture  # noqa: F401
from wrappers.completeness import CompletenessRule
from wrappers.file_source import HostKeyRejected, SourceUnavailable
from wrappers.sftp_poller import SftpPoller, SftpSettings, open_sftp

pytestmark = pytest.mark.integration


def settings_for(sshd: SshServer, remote_dir: Path, **overrides: object) -> SftpSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": sshd.port,
        "username": sshd.username,
        "password": None,
        "private_key_path": str(sshd.user_key_path),
        "private_key_passphrase": None,
        "known_hosts_path": str(sshd.known_hosts),
        "remote_dir": str(remote_dir),
        "patterns": ("*.hl7", "*.dat"),
        "connect_timeout": 5,
        "operation_timeout": 5,
        **overrides,
    }
    return SftpSettings(**values)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inbox(sshd: SshServer) -> Path:
    path = sshd.root / "in"
    path.mkdir()
    return path


async def test_scan_and_fetch_byte_identical(sshd: SshServer, inbox: Path, tmp_path: Path) -> None:
    (inbox / "a.hl7").write_bytes(os.urandom(300_000) + b"\r\n\x00end")
    (inbox / "ignored.csv").write_bytes(b"x")
    (inbox / ".a.hl7.part").write_bytes(b"partial")
    poller = SftpPoller("in", settings_for(sshd, inbox), CompletenessRule(mode="rename"))
    try:
        refs = await poller.scan()
        assert [r.name for r in refs] == ["a.hl7"]
        assert refs[0].size == 300_006
        path = await poller.fetch(refs[0], tmp_path)
        assert path == tmp_path / "a.hl7"
        assert sha256(path) == sha256(inbox / "a.hl7")
        assert names(tmp_path) == ["a.hl7"]  # no temp left
    finally:
        await poller.close()


async def test_slow_sftp_upload_is_not_returned_before_complete(sshd: SshServer, inbox: Path) -> None:
    chunks = [os.urandom(20_000) for _ in range(10)]
    done = threading.Event()

    def upload() -> None:
        transport, sftp = open_sftp(settings_for(sshd, inbox))
        try:
            with sftp.open(str(inbox / "slow.dat"), "wb") as remote:
                for chunk in chunks:
                    remote.write(chunk)
                    remote.flush()
                    time.sleep(0.3)
        finally:
            done.set()
            transport.close()

    poller = SftpPoller(
        "in", settings_for(sshd, inbox), CompletenessRule(mode="stable", stable_seconds=1.5), poll_seconds=0.2
    )
    uploader = asyncio.create_task(asyncio.to_thread(upload))
    try:
        async with asyncio.timeout(20):
            while not done.is_set():
                assert await poller.scan() == []
                await asyncio.sleep(0.1)
            while not (refs := await poller.scan()):
                await poller.wait()  # until the settling file may be stable
        assert refs[0].size == 200_000
    finally:
        await uploader
        await poller.close()


async def test_unknown_and_changed_host_keys_are_rejected(sshd: SshServer, inbox: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    await asyncio.to_thread(keygen, other)
    changed = tmp_path / "known_hosts_changed"
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    changed.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    for known_hosts, known in ((changed, True), (empty, False)):
        poller = SftpPoller("in", settings_for(sshd, inbox, known_hosts_path=str(known_hosts)), CompletenessRule())
        with pytest.raises(HostKeyRejected) as caught:
            await poller.scan()
        assert caught.value.known is known
        assert "127.0.0.1" in str(caught.value) and "SHA256:" in caught.value.fingerprint
        assert not caught.value.retryable
        await poller.close()


async def test_paused_server_mid_download_then_resume(sshd: SshServer, inbox: Path, tmp_path: Path) -> None:
    (inbox / "big.dat").write_bytes(os.urandom(24 * 1024 * 1024))
    settings = settings_for(sshd, inbox, operation_timeout=2, max_prefetch_requests=1)
    poller = SftpPoller("in", settings, CompletenessRule(mode="rename"))
    spool = tmp_path / "spool"
    spool.mkdir()
    temp = spool / ".big.dat.ficus-tmp"
    try:
        [ref] = await poller.scan()
        fetch = asyncio.create_task(poller.fetch(ref, spool))
        await eventually(lambda: temp.exists() and temp.stat().st_size > 0, 10)
        sshd.pause()
        started = time.monotonic()
        try:
            with pytest.raises(SourceUnavailable):
                await asyncio.wait_for(fetch, 10)
            assert time.monotonic() - started < 2 + 1.5
        finally:
            sshd.resume()
        assert not (spool / "big.dat").exists()
        async with asyncio.timeout(30):
            while True:
                try:
                    path = await poller.fetch(ref, spool)
                    break
                except SourceUnavailable:
                    await asyncio.sleep(0.2)
        assert sha256(path) == sha256(inbox / "big.dat")
    finally:
        await poller.close()


async def test_finish_archive_delete_leave_with_markers(sshd: SshServer, inbox: Path) -> None:
    for name in ("a.hl7", "b.hl7", "c.hl7"):
        (inbox / name).write_bytes(name.encode())
        (inbox / f"{name}.done").write_bytes(b"")
    (inbox / "archive").mkdir()
    (inbox / "archive" / "a.hl7").write_bytes(b"yesterday's a.hl7")
    poller = SftpPoller("in", settings_for(sshd, inbox), CompletenessRule(mode="marker"))
    try:
        a, b, c = await poller.scan()
        await poller.finish(a, "archive", "archive")
        await poller.finish(b, "delete", None)
        await poller.finish(c, "leave", None)
        assert names(inbox) == ["archive", "c.hl7", "c.hl7.done"]
        archived = {p.name: p.read_bytes() for p in (inbox / "archive").iterdir()}
        assert archived == {"a.hl7": b"yesterday's a.hl7", "a.1.hl7": b"a.hl7", "a.hl7.done": b""}
        assert await poller.scan() == []  # c was left in place: never emitted again
    finally:
        await poller.close()


async def test_archive_into_missing_absolute_dir(sshd: SshServer, inbox: Path) -> None:
    (inbox / "a.hl7").write_bytes(b"a")
    target = sshd.root / "elsewhere" / "archive"
    (sshd.root / "elsewhere").mkdir()
    poller = SftpPoller("in", settings_for(sshd, inbox), CompletenessRule(mode="rename"))
    try:
        [a] = await poller.scan()
        await poller.finish(a, "archive", str(target))
        assert (target / "a.hl7").read_bytes() == b"a"
    finally:
        await poller.close()


async def test_connection_refused_is_unavailable_with_backoff(sshd: SshServer, inbox: Path) -> None:
    settings = settings_for(sshd, inbox)
    sshd.stop()
    # The backoff draws its delay at random in [0, 1 s]: pinned to the ceiling here, so the
    # second scan surely falls inside it.
    poller = SftpPoller("in", settings, CompletenessRule(), backoff=Backoff(1, 60, uniform=lambda low, high: high))
    with pytest.raises(SourceUnavailable, match="connect"):
        await poller.scan()
    with pytest.raises(SourceUnavailable, match="reconnect in"):
        await poller.scan()
    await poller.close()
