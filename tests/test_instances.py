"""The instance registry (router/instances.py), GET /api/v1/instances, `ficus instances` and the
console's Instances table, on real nats-servers and real `ficus run` processes.

Two instances on one NATS both list each other as ready; a kill -9 leaves the killed one's
entry, shown `stale` within `cluster.lease_seconds`; a clean stop (SIGTERM) removes it; the
same on a three-node cluster with `nats.replicas = 3`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from router import names
from router.config import ClusterConfig
from router.embedded_nats import EmbeddedNats
from router.instances import STALE_KEPT_SECONDS, InstanceRecord, Registry, bucket_of, list_instances
from tests.conftest import ServiceFactory, make_config, wait_for
from tests.ficus_proc import REPO, Ficus, free_port
from tests.nats_cluster import nats_cluster

pytestmark = pytest.mark.integration
VIEWER = f"tok-viewer-{secrets.token_urlsafe(16)}"
LEASE, RENEW = 3.0, 1.0
"""Short leases, so a dead instance turns stale within seconds."""


def _api() -> dict[str, Any]:
    return {"clients": [{"name": "ward-viewer", "role": "viewer",
                         "token_sha256": hashlib.sha256(VIEWER.encode()).hexdigest()}]}


def _cluster(name: str) -> dict[str, Any]:
    return {"instance": name, "lease_seconds": LEASE, "renew_seconds": RENEW}


async def _get(http: aiohttp.ClientSession, url: str, token: str | None = VIEWER) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def _instances(http: aiohttp.ClientSession, api: str) -> dict[str, dict[str, Any]]:
    status, body = await _get(http, f"{api}/api/v1/instances")
    assert status == 200, body
    return {i["instance"]: i for i in body["instances"]}


def _write_config(tmp: Path, name: str, nats_url: str, api_port: int, replicas: int = 1) -> Path:
    conf = tmp / f"{name}.toml"
    digest = hashlib.sha256(VIEWER.encode()).hexdigest()
    conf.write_text(f"""
state_dir = "{tmp / ('state-' + name)}"
shutdown_timeout_seconds = 10
[nats]
url = "{nats_url}"
replicas = {replicas}
publish_timeout_seconds = 2
[api]
listen = "127.0.0.1:{api_port}"
[[api.clients]]
name = "ward-viewer"
role = "viewer"
token_sha256 = "{digest}"
[cluster]
instance = "{name}"
lease_seconds = {LEASE}
renew_seconds = {RENEW}
[[interfaces]]
name = "his-charges"
kind = "hl7-mllp"
listen = "127.0.0.1:0"
mapping = "hl7v2.dft_p03"
route = "modern"
""")
    return conf


async def _two_processes(tmp_path: Path, nats_url: str, replicas: int = 1) -> None:
    """Two `ficus run` on `nats_url`: both ready in the registry; kill -9 one: stale within
    lease_seconds; SIGTERM the other: its entry is gone."""
    ports = {"ficus-a": free_port(), "ficus-b": free_port()}
    procs = {n: Ficus(_write_config(tmp_path, n, nats_url, p, replicas), p, tmp_path / f"{n}.log")
             for n, p in ports.items()}
    try:
        for proc in procs.values():  # one after the other: see the note on the cluster test
            await proc.start()
            await proc.wait_ready()
        api_a, api_b = (f"http://127.0.0.1:{p}" for p in ports.values())
        async with aiohttp.ClientSession() as http:
            async def both_ready() -> dict[str, dict[str, Any]] | None:
                found = await _instances(http, api_a)
                ok = set(found) == set(ports) and all(i["health"] == "ready" for i in found.values())
                return found if ok else None

            found = await wait_for(both_ready, timeout=30, interval=0.2)
            assert (await _instances(http, api_b)).keys() == found.keys()  # either instance answers for all
            for name, inst in found.items():
                assert inst["api"] == f"http://127.0.0.1:{ports[name]}"
                assert inst["interfaces"] == ["his-charges"] and inst["leases"] == []
                assert inst["pid"] == procs[name].proc.pid and inst["ready"] is True and not inst["draining"]
            status, _ = await _get(http, f"{api_a}/api/v1/instances", token=None)
            assert status == 401

            # kill -9 ficus-a: its entry stays, and turns stale once not refreshed for lease_seconds.
            seen_at = found["ficus-a"]["seen_at"]
            await procs["ficus-a"].kill9()
            killed = time.time()

            async def a_stale() -> bool:
                now = await _instances(http, api_b)
                assert "ficus-a" in now, now
                return now["ficus-a"]["health"] == "stale"

            await wait_for(a_stale, timeout=LEASE + 2 * RENEW + 5, interval=0.1)
            # Stale within lease_seconds of its last refresh (the poll's own delay aside).
            assert time.time() - killed <= LEASE + 1.5, time.time() - killed
            assert time.time() - seen_at >= LEASE
            assert (await _instances(http, api_b))["ficus-b"]["health"] == "ready"

            # A clean stop of ficus-b removes its entry (read by a fresh store: no API is left).
            assert await procs["ficus-b"].terminate() == 0, procs["ficus-b"].tail()
        nc = await nats.connect(servers=nats_url.split(","))
        try:
            kv = await nc.jetstream().key_value(names.KV_INSTANCES)
            keys = set(await kv.keys())
            assert keys == {"ficus-a"}, keys
            status_info = await kv.status()
            assert status_info.stream_info.config.num_replicas == replicas
        finally:
            await nc.close()
    finally:
        for proc in procs.values():
            proc.kill_if_running()
            if proc.proc is not None:
                await proc.proc.wait()


async def test_two_processes_on_one_server_kill_9_and_clean_stop(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    await _two_processes(tmp_path, nats_server.url)


async def test_two_processes_on_a_three_node_cluster(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "cluster") as cluster:
        await _two_processes(tmp_path, cluster.url, replicas=3)


async def test_leases_draining_and_a_clean_stop_in_the_entry(
        nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path) -> None:
    """The entry carries what `held` and `draining` say at each refresh; stop deletes it."""
    cfg = make_config(nats_server.url, [], api=_api(), cluster=_cluster("svc-1"))
    async with service_factory(cfg) as svc:
        held: list[str] = ["folder-lab"]
        draining = False
        cluster = ClusterConfig(instance="poller-2", lease_seconds=LEASE, renew_seconds=RENEW)
        other = Registry(await bucket_of(svc.store), cluster, api=None, interfaces=["folder-lab", "odbc-adt"],
                         started_at=time.time(),
                         ready=lambda: (False, ["odbc-adt: database unavailable"]),
                         held=lambda: list(held), draining=lambda: draining)
        await other.start()
        try:
            found = {i["instance"]: i for i in await list_instances(svc.store, LEASE)}
            assert found["poller-2"]["leases"] == ["folder-lab"]
            assert found["poller-2"]["health"] == "not ready"
            assert found["poller-2"]["problems"] == ["odbc-adt: database unavailable"]
            assert found["svc-1"]["health"] == "ready" and found["svc-1"]["leases"] == []
            held.append("odbc-adt")
            draining = True
            writes = other.writes
            await wait_for(lambda: other.writes > writes, timeout=RENEW * 5)
            entry = {i["instance"]: i for i in await list_instances(svc.store, LEASE)}["poller-2"]
            assert entry["leases"] == ["folder-lab", "odbc-adt"] and entry["draining"] is True
        finally:
            await other.stop()
        assert "poller-2" not in {i["instance"] for i in await list_instances(svc.store, LEASE)}
        bucket = await bucket_of(svc.store)
        assert await bucket.get("poller-2") is None
        # The bucket drops entries not written for a day (a TTL), so dead instances do not pile up.
        nc = await nats.connect(nats_server.url)
        try:
            status = await (await nc.jetstream().key_value(names.KV_INSTANCES)).status()
            assert status.ttl == STALE_KEPT_SECONDS
        finally:
            await nc.close()
    # The service's own entry is gone after its clean stop.
    cfg2 = make_config(nats_server.url, [], api=_api(), cluster=_cluster("svc-2"))
    async with service_factory(cfg2) as svc2:
        names_now = {i["instance"] for i in await list_instances(svc2.store, LEASE)}
        assert names_now == {"svc-2"}


async def test_the_console_overview_shows_each_instance_its_leases_and_health(
        nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [], api=_api(), cluster=_cluster("web-1"))
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        bucket = await bucket_of(svc.store)
        now = time.time()
        # Another instance holding two leases, and one that died a minute ago (a real entry each).
        await bucket.put("poller-2", InstanceRecord(
            instance="poller-2", host="host-b", pid=4242, version="9.9.9", started_at=now - 100, seen_at=now,
            api="http://10.0.0.2:8080", ready=False, problems=["odbc-adt: <script>alert(1)</script>"],
            leases=["folder-lab", "odbc-adt"], interfaces=["folder-lab", "odbc-adt"]).model_dump_json().encode())
        await bucket.put("gone-3", InstanceRecord(
            instance="gone-3", host="host-c", pid=7, seen_at=now - 60, ready=True,
            leases=["sftp-remit"]).model_dump_json().encode())
        await bucket.put("junk", b"not json")  # left out, not an error

        status, page = await _get(http, f"{svc.api_url}/")
        assert status == 200
        table = re.search(r'<table id="instances">.*?</table>', page, re.S)
        assert table is not None, page
        rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr><th scope="row">([^<]+)</th>(.*?)</tr>',
                                                             table.group(0), re.S)}
        assert set(rows) == {"gone-3", "poller-2", "web-1 (this one)"}, rows
        assert 'data-field="health" class="ready">ready<' in rows["web-1 (this one)"]
        assert 'class="not-ready">not ready<' in rows["poller-2"]
        assert ">folder-lab, odbc-adt<" in rows["poller-2"] and ">host-b pid 4242<" in rows["poller-2"]
        assert 'class="stale">stale<' in rows["gone-3"] and ">sftp-remit<" in rows["gone-3"]
        assert "<script>alert" not in page and html.escape("<script>alert(1)</script>") in rows["poller-2"]

        # The live stream carries the same rows with its slow figures.
        async with http.get(f"{svc.api_url}/console/stream", headers={"Authorization": f"Bearer {VIEWER}"},
                            timeout=aiohttp.ClientTimeout(total=20)) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: "):
                    snap = json.loads(line[6:])
                    break
        assert {i["instance"]: i["health"] for i in snap["instances"]} == {
            "gone-3": "stale", "poller-2": "not ready", "web-1 (this one)": "ready"}

        # Without a credential: the login form, no instance.
        status, page = await _get(http, f"{svc.api_url}/", token=None)
        assert status == 401 and "poller-2" not in page


async def test_ficus_instances_prints_a_table(nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    cfg = make_config(nats_server.url, [], api=_api(), cluster=_cluster("cli-1"))
    async with service_factory(cfg) as svc:
        bucket = await bucket_of(svc.store)
        await bucket.put("poller-2", InstanceRecord(
            instance="poller-2", host="host-b", pid=4242, version="1.0", seen_at=time.time() - 60,
            leases=["folder-lab"]).model_dump_json().encode())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "instances", "--api", svc.api_url or "", "--token", VIEWER,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        assert proc.returncode == 0, err
        lines = out.decode().splitlines()
        assert lines[0].split()[:3] == ["INSTANCE", "HEALTH", "HOST"]
        rows = {line.split()[0]: line for line in lines[1:]}
        assert set(rows) == {"*cli-1", "poller-2"}
        assert rows["*cli-1"].split()[1] == "ready"
        assert rows["poller-2"].split()[1:3] == ["stale", "host-b"] and "folder-lab" in rows["poller-2"]


async def test_the_listing_holds_every_key_while_entries_are_written(
        nats_server: EmbeddedNats, service_factory: ServiceFactory) -> None:
    """The registry lists keys from the stream's subject index: nats-py's watch-based `keys`
    answers "no keys" now and then when a write lands during the listing (about 1 in 200)."""
    cfg = make_config(nats_server.url, [], api=_api(), cluster=_cluster("list-1"))
    async with service_factory(cfg) as svc:
        bucket = await bucket_of(svc.store)
        for name in ("w-1", "w-2", "gone"):
            await bucket.put(name, InstanceRecord(instance=name, seen_at=time.time()).model_dump_json().encode())
        await bucket.delete("gone")
        writing = True

        async def writer() -> None:
            while writing:
                await bucket.put("w-1", InstanceRecord(instance="w-1", seen_at=time.time()).model_dump_json().encode())
                await asyncio.sleep(0.005)

        task = asyncio.create_task(writer())
        try:
            for _ in range(300):
                listed = {i["instance"] for i in await list_instances(svc.store, LEASE)}
                assert listed == {"list-1", "w-1", "w-2"}, listed
        finally:
            writing = False
            await task
