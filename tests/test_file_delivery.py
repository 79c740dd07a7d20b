"""Legacy file delivery: byte-identical copies, never a partial file under the final name,
idempotent re-delivery; to a folder and over SFTP to a real sshd."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from legacy.file_delivery import (
    DeliveryError,
    DeliveryUnavailable,
    FileDelivery,
    FolderDelivery,
    InPlaceDelivery,
    SftpDelivery,
)
from tests.sshd import SshServer, names, sshd_fixture  # noqa: F401
from wrappers.sftp_poller import SftpSettings, open_sftp

BIG = 8 * 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sftp_delivery(sshd: SshServer, remote_dir: Path, known_hosts: Path | None = None) -> SftpDelivery:
    settings = SftpSettings(
        host="127.0.0.1",
        port=sshd.port,
        username=sshd.username,
        password=None,
        private_key_path=str(sshd.user_key_path),
        private_key_passphrase=None,
        known_hosts_path=str(known_hosts or sshd.known_hosts),
        remote_dir=str(remote_dir),
        patterns=["*"],
        connect_timeout=5,
        operation_timeout=5,
    )
    return SftpDelivery(lambda: open_sftp(settings), str(remote_dir), operation_timeout=5)


async def deliver_watched(delivery: FileDelivery, source: Path, final: Path) -> tuple[str, set[int]]:
    """Deliver while another thread stats the final name; returns the sizes it saw there."""
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.add(final.stat().st_size)
            except FileNotFoundError:
                continue

    watcher = asyncio.create_task(asyncio.to_thread(watch))
    try:
        result = await asyncio.wait_for(delivery.deliver(source, final.name), 60)
    finally:
        stop.set()
        await watcher
    return result, seen


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "spool").mkdir()
    return make_file(tmp_path / "spool" / "batch.dat", BIG)


async def test_folder_delivery_is_byte_identical_and_atomic(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "legacy"
    out.mkdir()
    result, seen = await deliver_watched(FolderDelivery(out), source, out / "batch.dat")
    assert result == str(out / "batch.dat")
    assert sha256(out / "batch.dat") == sha256(source)
    assert seen <= {BIG}  # never a partial file under the final name
    assert names(out) == ["batch.dat"]


async def test_folder_redelivery_is_idempotent_and_conflicts_wait(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "legacy"
    out.mkdir()
    delivery = FolderDelivery(out)
    await delivery.deliver(source, "batch.dat")
    before = (out / "batch.dat").stat().st_mtime_ns
    assert await delivery.deliver(source, "batch.dat") == str(out / "batch.dat")
    assert (out / "batch.dat").stat().st_mtime_ns == before  # not rewritten
    other = make_file(tmp_path / "other.dat", 100)
    with pytest.raises(DeliveryUnavailable, match="not consumed"):
        await delivery.deliver(other, "batch.dat")
    await FolderDelivery(out, on_conflict="replace").deliver(other, "batch.dat")
    assert sha256(out / "batch.dat") == sha256(other)
    assert names(out) == ["batch.dat"]


async def test_folder_missing_directory_is_retryable(tmp_path: Path, source: Path) -> None:
    with pytest.raises(DeliveryUnavailable):
        await FolderDelivery(tmp_path / "not-mounted").deliver(source, "batch.dat")


async def test_in_place_delivery_does_nothing(source: Path) -> None:
    before = sha256(source)
    assert await InPlaceDelivery().deliver(source, "batch.dat") == str(source)
    assert sha256(source) == before


@pytest.mark.integration
async def test_sftp_delivery_is_byte_identical_atomic_and_idempotent(
    sshd: SshServer, tmp_path: Path, source: Path
) -> None:
    out = sshd.root / "legacy"
    out.mkdir()
    delivery = sftp_delivery(sshd, out)
    try:
        result, seen = await deliver_watched(delivery, source, out / "batch.dat")
        assert result == str(out / "batch.dat")
        assert sha256(out / "batch.dat") == sha256(source)
        assert seen <= {BIG}
        before = (out / "batch.dat").stat().st_mtime_ns
        assert await delivery.deliver(source, "batch.dat") == result
        assert (out / "batch.dat").stat().st_mtime_ns == before
        other = make_file(tmp_path / "other.dat", 100)
        with pytest.raises(DeliveryUnavailable, match="not consumed"):
            await delivery.deliver(other, "batch.dat")
        assert names(out) == ["batch.dat"]
    finally:
        await delivery.close()


@pytest.mark.integration
async def test_sftp_delivery_errors(sshd: SshServer, tmp_path: Path, source: Path) -> None:
    missing = sftp_delivery(sshd, sshd.root / "missing")
    with pytest.raises(DeliveryUnavailable):
        await missing.deliver(source, "batch.dat")
    await missing.close()
    wrong_keys = tmp_path / "known_hosts"
    wrong_keys.write_text("")
    rejected = sftp_delivery(sshd, sshd.root, known_hosts=wrong_keys)
    with pytest.raises(DeliveryError, match="host key") as caught:
        await rejected.deliver(source, "batch.dat")
    assert not isinstance(caught.value, DeliveryUnavailable)
    sshd.stop()
    down = sftp_delivery(sshd, sshd.root)
    with pytest.raises(DeliveryUnavailable, match="connect"):
        await down.deliver(source, "batch.dat")
