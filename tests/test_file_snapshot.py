"""Issue 10 item 1: one snapshot per file. A drop file replaced or grown while Ficus processes
it gives one unit whose events, legacy copy and raw archive are the same bytes; the new
content is then taken as a unit of its own (folder and SFTP)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import nats
import pytest

from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for
from tests.sshd import SshServer, sshd_fixture  # noqa: F401
from tests.test_files_restart import write_export
from tests.test_files_service import folder_iface, records
from tests.test_files_sftp import sftp_iface

pytestmark = pytest.mark.integration
BIG = 50_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Consumer:
    """The legacy consumer: takes each file delivered under ``name`` (read, then remove)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / name
        self.taken: list[bytes] = []

    def take(self, count: int) -> bool:
        if self.path.exists():
            self.taken.append(self.path.read_bytes())
            self.path.unlink()
        return len(self.taken) >= count


async def raw_objects(url: str) -> dict[str, bytes]:
    """Every object in the raw file store: name -> bytes."""
    nc = await nats.connect(url)
    try:
        store = await nc.jetstream().object_store(names.OBJ_RAW_FILES)
        found = {}
        for info in await store.list():
            found[info.name] = (await store.get(info.name)).data or b""
        return found
    finally:
        await nc.close()


async def check_units(url: str, consumer: Consumer, expected: list[bytes]) -> None:
    """Legacy got exactly ``expected`` (in order), the raw store holds exactly those bytes, and
    the shadow events are the records of those files."""
    assert [sha(b) for b in consumer.taken] == [sha(b) for b in expected], "legacy got each snapshot whole"
    objects = await raw_objects(url)
    for name, data in objects.items():
        assert name.endswith(sha(data)), f"raw object {name} holds other bytes than its name says"
    assert sorted(sha(data) for data in objects.values()) == sorted(sha(b) for b in expected)
    rows = sum(sum(1 for line in b.splitlines()[1:] if line.strip()) for b in expected)
    assert await stream_count(url, names.STREAM_SHADOW) == rows


async def test_folder_file_renamed_over_mid_processing(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface: dict[str, Any] = folder_iface(tmp_path, route="shadow", complete="rename")
    write_export(tmp_path / "a.part", BIG)
    write_export(tmp_path / "b.part", 10)
    a, b = (tmp_path / "a.part").read_bytes(), (tmp_path / "b.part").read_bytes()
    consumer = Consumer(tmp_path / "legacy", "x.csv")
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        (tmp_path / "a.part").rename(tmp_path / "in" / "x.csv")
        await wait_for(lambda: stats.shadow_published > 0, timeout=60, interval=0.002)
        (tmp_path / "b.part").rename(tmp_path / "in" / "x.csv")  # B renamed over A mid-processing
        assert stats.shadow_published < BIG, "B must arrive while A is still being processed"
        await wait_for(lambda: consumer.take(2), timeout=60, interval=0.02)
        await wait_for(lambda: stats.acked == 2, timeout=30)
    await check_units(nats_server.url, consumer, [a, b])
    assert (tmp_path / "archive" / "x.csv").read_bytes() == b, "B archived after its own unit"
    assert not (tmp_path / "in" / "x.csv").exists()


async def test_folder_file_grown_after_stable_mid_processing(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface: dict[str, Any] = folder_iface(tmp_path, route="shadow", complete="stable", stable_seconds=0.5)
    write_export(tmp_path / "first.part", BIG)
    first = (tmp_path / "first.part").read_bytes()
    write_export(tmp_path / "more.part", BIG + 4)
    tail = (tmp_path / "more.part").read_bytes()[len(first):]  # 4 more records, new ids
    consumer = Consumer(tmp_path / "legacy", "x.csv")
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["billing"].stats
        with (tmp_path / "in" / "x.csv").open("wb") as writer:
            writer.write(first)
            writer.flush()
            # The writer pauses past stable_seconds: Ficus takes the file; then it appends.
            await wait_for(lambda: stats.shadow_published > 0, timeout=60, interval=0.002)
            writer.write(tail)
        assert stats.shadow_published < BIG, "the append must happen while the file is processed"
        await wait_for(lambda: consumer.take(2), timeout=60, interval=0.02)
        await wait_for(lambda: stats.acked == 2, timeout=30)
    await check_units(nats_server.url, consumer, [first, first + tail])
    assert (tmp_path / "archive" / "x.csv").read_bytes() == first + tail


async def test_sftp_file_renamed_over_mid_processing(
    sshd: SshServer, nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    iface = sftp_iface(sshd, complete="rename", format="csv", flat=folder_iface(tmp_path)["flat"],
                       legacy=str(tmp_path / "legacy"), legacy_sftp=None)
    inbox = sshd.root / "in"
    write_export(sshd.root / "a.part", BIG)
    write_export(sshd.root / "b.part", 10)
    a, b = (sshd.root / "a.part").read_bytes(), (sshd.root / "b.part").read_bytes()
    consumer = Consumer(tmp_path / "legacy", "x.csv")
    cfg = make_config(nats_server.url, [iface], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        stats = svc.interfaces["payer-835"].stats
        (sshd.root / "a.part").rename(inbox / "x.csv")
        await wait_for(lambda: stats.shadow_published > 0, timeout=60, interval=0.002)
        (sshd.root / "b.part").rename(inbox / "x.csv")
        assert stats.shadow_published < BIG, "B must arrive while A is still being processed"
        await wait_for(lambda: consumer.take(2), timeout=60, interval=0.02)
        await wait_for(lambda: stats.acked == 2, timeout=30)
    await check_units(nats_server.url, consumer, [a, b])
    assert (sshd.root / "archive" / "x.csv").read_bytes() == b
    assert records(sshd.root / "archive" / "x.csv") == 10
