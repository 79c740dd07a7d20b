"""Issue 18: on a three-node cluster with `nats.replicas = 3`, every stream, KV bucket and object
store Ficus makes has three replicas, so losing one server loses none of Ficus's state.

A real Service (in this process) on a real three-node nats-server cluster (tests/nats_cluster.py),
with an MLLP and a folder interface, the business-key index, the event index and the status
views on, so that the buckets made on first use are made too; then the streams are listed
through the JetStream API from a connection of the test's own.
"""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.js.api import KeyValueConfig, StorageType

from router import names, simulate
from router.config import NatsConfig
from router.service import Service
from router.store import Store, connect
from tests.conftest import make_config, wait_for
from tests.mllp_client import MllpTestClient, msa
from tests.nats_cluster import nats_cluster

pytestmark = pytest.mark.integration


async def replicas_by_stream(url: str) -> dict[str, int]:
    nc = await nats.connect(url.split(","))
    try:
        return {info.config.name or "": int(info.config.num_replicas or 0)
                for info in await nc.jetstream().streams_info()}
    finally:
        await nc.close()


async def test_every_stream_and_bucket_ficus_makes_has_the_configured_replicas(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    async with nats_cluster(tmp_path / "cluster") as cluster:
        cfg = make_config(cluster.url, [
            {"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"},
            {"name": "payer-835", "kind": "folder", "path": str(inbox), "patterns": ["*.x12"],
             "format": "x12-835", "poll_seconds": 0.2, "after": "archive",
             "archive_dir": str(tmp_path / "archive"), "route": "modern"},
        ], state_dir=tmp_path / "state", nats={"replicas": 3, "key_index": True, "event_index": True},
            views={"enabled": True})
        async with Service(cfg) as svc:
            port = svc.interfaces["his-charges"].listener.port
            async with MllpTestClient(port) as sender:
                assert msa(await sender.exchange(simulate.dft(1), timeout=30))[0] == "AA"
            (inbox / "remit.x12").write_text(simulate.remit835(1))
            await wait_for(lambda: (tmp_path / "archive" / "remit.x12").exists()
                           or any((tmp_path / "archive").glob("*remit*")), timeout=60, interval=0.2)

            async def made() -> dict[str, int] | None:
                got = await replicas_by_stream(cluster.url)
                wanted = {names.STREAM_CANONICAL, names.STREAM_RAW, names.STREAM_AUDIT, names.STREAM_KEYS,
                          names.STREAM_EVIDX, f"KV_{names.KV_ROUTES}", f"KV_{names.KV_FILES}",
                          f"KV_{names.KV_KEYS}", f"OBJ_{names.OBJ_RAW_FILES}", "KV_ficus-parity",
                          "KV_ficus-view-charges"}
                return got if wanted <= set(got) else None

            streams = await wait_for(made, timeout=60, interval=0.5)
        # Every one of them, whoever made it; not only the few named above.
        assert len(streams) >= 15, streams
        assert {name: n for name, n in streams.items() if n != 3} == {}, streams


async def test_a_bucket_made_on_one_server_gets_the_replicas_when_they_are_raised(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "cluster") as cluster:
        nc = await nats.connect(cluster.url.split(","))
        try:
            # As a single-server deployment left it: R1.
            await nc.jetstream().create_key_value(KeyValueConfig(bucket="ficus-grown", history=1,
                                                                 storage=StorageType.FILE, replicas=1))
        finally:
            await nc.close()
        assert (await replicas_by_stream(cluster.url))["KV_ficus-grown"] == 1
        cfg = NatsConfig(url=cluster.url, replicas=3)
        store = Store(await connect(cfg, cfg.servers), cfg)
        try:
            bucket = await store.kv("ficus-grown", history=1)
            await bucket.put("k", b"v")
        finally:
            await store.close()
        assert (await replicas_by_stream(cluster.url))["KV_ficus-grown"] == 3
