"""SFTP interfaces end to end against a real OpenSSH sshd on loopback and a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import paramiko
import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.sshd import SshServer, keygen, sshd_fixture  # noqa: F401

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
REMIT = REPO / "fixtures/x12/balanced_2claims_plb.835"


def sftp_settings(sshd: SshServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
            "private_key": str(sshd.user_key_path), "known_hosts": str(sshd.known_hosts),
            "connect_timeout_seconds": 5, "operation_timeout_seconds": 5, "reconnect_max_backoff_seconds": 1,
            **extra}


def sftp_iface(sshd: SshServer, **extra: Any) -> dict[str, Any]:
    for d in ("in", "archive", "legacy"):
        (sshd.root / d).mkdir(exist_ok=True)
    return {
        "name": "payer-835", "kind": "sftp", "path": str(sshd.root / "in"), "patterns": ["*.835", "*.csv"],
        "poll_seconds": 0.2, "complete": "stable", "stable_seconds": 1.0, "format": "x12-835",
        "after": "archive", "archive_dir": str(sshd.root / "archive"), "sftp": sftp_settings(sshd),
        "legacy": f"sftp://127.0.0.1:{sshd.port}{sshd.root / 'legacy'}", "legacy_sftp": sftp_settings(sshd),
        "route": "shadow", **extra,
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upload_slowly(sshd: SshServer, data: bytes, remote: Path, chunk: int, pause: float) -> None:
    """A real SFTP client writing a file in chunks with pauses, as a slow uploader does."""
    key = paramiko.Ed25519Key.from_private_key_file(str(sshd.user_key_path))
    transport = paramiko.Transport(("127.0.0.1", sshd.port))
    transport.connect(username=sshd.username, pkey=key)
    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    try:
        with sftp.open(str(remote), "wb") as fh:
            for i in range(0, len(data), chunk):
                fh.write(data[i:i + chunk])
                fh.flush()
                import time
                time.sleep(pause)
    finally:
        sftp.close()
        transport.close()


async def test_slow_sftp_upload_shadow_events_and_sftp_legacy_delivery(
    sshd: SshServer, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [sftp_iface(sshd)], state_dir=str(tmp_path / "state"))
    data = REMIT.read_bytes()
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["payer-835"].stats
        upload = asyncio.to_thread(upload_slowly, sshd, data, sshd.root / "in" / "remit.835", 200, 0.3)
        task = asyncio.create_task(upload)
        while not task.done():
            assert stats.received == 0, "not read while the upload is still going on"
            await asyncio.sleep(0.05)
        await task
        await wait_for(lambda: stats.acked == 1, timeout=30)
        delivered = sshd.root / "legacy" / "remit.835"
        assert sha(delivered) == hashlib.sha256(data).hexdigest(), "legacy delivery over SFTP is byte-identical"
        # Archived right after the file is counted acknowledged (a rename on the SFTP server).
        await wait_for(lambda: (sshd.root / "archive" / "remit.835").exists(), timeout=10)
        assert stats.shadow_published > 0 and stats.dead_lettered == 0
        assert await stream_count(nats_server.url, names.STREAM_SHADOW) == stats.shadow_published


async def test_unknown_host_key_is_refused(
    sshd: SshServer, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    other = tmp_path / "other_key"
    keygen(other)
    pub = other.with_suffix(".pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    iface = sftp_iface(sshd, route="modern", legacy=None, legacy_sftp=None,
                       sftp=sftp_settings(sshd, known_hosts=str(wrong)))
    (sshd.root / "in" / "remit.835").write_bytes(REMIT.read_bytes())
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["payer-835"].stats
        await wait_for(lambda: stats.last_error is not None, timeout=20)
        assert "host key" in (stats.last_error or "").lower()
        assert stats.received == 0
    assert (sshd.root / "in" / "remit.835").exists()
    assert await stream_count(nats_server.url, names.STREAM_CANONICAL) == 0


async def test_server_that_stops_answering_mid_transfer_is_timed_out_and_retried(
    sshd: SshServer, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    big = os.urandom(32 * 1024 * 1024)
    (sshd.root / "in").mkdir(exist_ok=True)
    (sshd.root / "in" / "export.csv").write_bytes(big)
    os.utime(sshd.root / "in" / "export.csv", (1_700_000_000, 1_700_000_000))
    iface = sftp_iface(sshd, route="legacy", stable_seconds=0.2,
                       sftp=sftp_settings(sshd, operation_timeout_seconds=2), legacy=str(tmp_path / "legacy"),
                       legacy_sftp=None)
    (tmp_path / "legacy").mkdir()
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["payer-835"].stats
        spool = tmp_path / "state" / "spool" / "payer-835"
        await wait_for(lambda: any(p.stat().st_size > 0 for p in spool.glob(".*")), timeout=20, interval=0.005)
        sshd.pause()
        try:
            await wait_for(lambda: stats.last_error is not None, timeout=20)
        finally:
            sshd.resume()
        assert stats.acked == 0
        print("error while paused:", stats.last_error)
        assert "SourceUnavailable" in (stats.last_error or "")
        await wait_for(lambda: stats.acked == 1, timeout=60)
    delivered = list((tmp_path / "legacy").iterdir())
    assert [p.name for p in delivered] == ["export.csv"], "delivered once, no temp files"
    assert hashlib.sha256(delivered[0].read_bytes()).hexdigest() == hashlib.sha256(big).hexdigest()
    assert (sshd.root / "archive" / "export.csv").exists()
