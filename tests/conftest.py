"""Shared fixtures: a real nats-server per test (free port, temp store), real MLLP peers,
the public corpus (skipped with a message when absent), and a service factory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from router.config import FicusConfig, parse_config
from router.embedded_nats import EmbeddedNats
from router.service import Service

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def corpus_root() -> Path | None:
    env = os.environ.get("FICUS_CORPUS")
    root = Path(env) if env else REPO.parent / "shared" / "corpus"
    return root if root.is_dir() else None


@pytest.fixture
def corpus() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("public corpus not found: set FICUS_CORPUS or place it at ../shared/corpus")
    return root


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def make_config(nats_url: str, interfaces: list[dict[str, Any]], **top: Any) -> FicusConfig:
    """A config on loopback with free ports: listeners and API on port 0."""
    ifaces = []
    for iface in interfaces:
        kind = iface.get("kind", "hl7-mllp")
        merged = {"kind": kind, **({"listen": "127.0.0.1:0"} if kind == "hl7-mllp" else {}), **iface}
        ifaces.append(merged)
    data: dict[str, Any] = {
        "state_dir": str(top.pop("state_dir", "/tmp/ficus-test-state")),
        "nats": {"url": nats_url, "publish_timeout_seconds": 2, **top.pop("nats", {})},
        "api": {"listen": "127.0.0.1:0", **top.pop("api", {})},
        "interfaces": ifaces,
        **top,
    }
    return parse_config(data, "test-config")


ServiceFactory = Callable[..., Any]


@pytest.fixture
def service_factory() -> ServiceFactory:
    """`async with service_factory(cfg) as svc:` starts and stops a real Service."""

    @asynccontextmanager
    async def factory(cfg: FicusConfig) -> AsyncIterator[Service]:
        async with Service(cfg) as svc:
            yield svc

    return factory


async def stream_count(url: str, stream: str, subject: str | None = None) -> int:
    """Messages in a stream (optionally on one subject), read from a separate connection."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream, subjects_filter=subject) if subject else await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0
        if subject:
            return int((info.state.subjects or {}).get(subject, 0))
        return int(info.state.messages)
    finally:
        await nc.close()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Polls an (async or sync) predicate until truthy; fails the test on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
