"""Helpers for issue 18's high-availability tests: Ficus instances on a NATS cluster, HAProxy in
front of them (from deploy/haproxy/ficus.cfg), a sender that resends as real ones do, and a
read of what the canonical and raw streams hold.

Every process is a real one, started by the test and stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from protocols.mllp import frame
from router import names
from tests.ficus_proc import REPO, Ficus, free_port
from tests.mllp_client import MllpTestClient, msa

HAPROXY_CFG = REPO / "deploy" / "haproxy" / "ficus.cfg"
IFACE = "his-charges"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)


@dataclass
class Instance:
    """One `ficus run` of the cluster: its name, ports and process."""

    name: str
    api_port: int
    mllp_port: int
    ficus: Ficus

    async def restart(self) -> None:
        await self.ficus.start()
        await self.ficus.wait_ready(timeout=60)


def instance_config(tmp: Path, name: str, nats_url: str, *, replicas: int = 3, extra: str = "",
                    legacy: str | None = None) -> Instance:
    """A Ficus config on the cluster (`nats.replicas`), one MLLP interface in modern mode; `extra`:
    more lines of its `[cluster]` table."""
    api_port, mllp_port = free_port(), free_port()
    conf = tmp / f"ficus-{name}.toml"
    legacy_line = f'legacy = "{legacy}"\n' if legacy else ""
    conf.write_text(f"""
state_dir = "{tmp / ('state-' + name)}"
log_level = "INFO"
shutdown_timeout_seconds = 10
[nats]
url = "{nats_url}"
replicas = {replicas}
publish_timeout_seconds = 3
start_timeout_seconds = 30
[api]
listen = "127.0.0.1:{api_port}"
[cluster]
instance = "{name}"
{extra}
[[interfaces]]
name = "{IFACE}"
kind = "hl7-mllp"
listen = "127.0.0.1:{mllp_port}"
mapping = "hl7v2.dft_p03"
route = "modern"
{legacy_line}""")
    return Instance(name, api_port, mllp_port, Ficus(conf, api_port, tmp / f"ficus-{name}.log"))


@contextlib.asynccontextmanager
async def instances(tmp: Path, nats_url: str, names_: list[str], **kwargs: object) -> AsyncIterator[list[Instance]]:
    """Started and ready; each killed by PID at the end, whatever happened."""
    started = [instance_config(tmp, n, nats_url, **kwargs) for n in names_]  # type: ignore[arg-type]
    try:
        for inst in started:
            await inst.ficus.start()
        for inst in started:
            await inst.ficus.wait_ready(timeout=90)
        yield started
    finally:
        for inst in started:
            inst.ficus.kill_if_running()
            if inst.ficus.proc is not None:
                await inst.ficus.proc.wait()


def haproxy_config(frontend_port: int, backends: list[Instance]) -> str:
    """The shipped deploy/haproxy/ficus.cfg with this test's addresses: its listen port, its
    instances (MLLP port, health check on the API port), and no syslog or daemon settings."""
    text = HAPROXY_CFG.read_text()
    servers = "\n".join(f"    server {b.name} 127.0.0.1:{b.mllp_port} check port {b.api_port}" for b in backends)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("server "):
            if servers:
                lines.append(servers)
                servers = ""
            continue
        if stripped.startswith("bind "):
            line = f"    bind 127.0.0.1:{frontend_port}"
        elif stripped.startswith("log /dev/log"):
            continue
        lines.append(line)
    # Checks every 200 ms in the test (the shipped 1 s would only make it slower, not different).
    return re.sub(r"default-server inter 1s", "default-server inter 200ms", "\n".join(lines)) + "\n"


@contextlib.asynccontextmanager
async def haproxy(tmp: Path, backends: list[Instance]) -> AsyncIterator[int]:
    """HAProxy in the foreground on a free port; yields the port; stopped by PID."""
    binary = haproxy_binary()
    assert binary is not None, "haproxy is not installed (scripts/bootstrap.sh installs it)"
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, backends))
    log = tmp / "haproxy.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(binary, "-db", "-f", str(cfg), stdout=out, stderr=out,
                                                    start_new_session=True)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            assert proc.returncode is None, log.read_text()
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            assert loop.time() < deadline, "haproxy did not listen\n" + log.read_text()
            await asyncio.sleep(0.05)
        yield port
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()


@dataclass
class SenderStats:
    acked: dict[str, float] = field(default_factory=dict)
    """Control id -> when its AA came (loop time)."""
    resends: int = 0
    negative: Counter[str] = field(default_factory=Counter)
    """Why a try failed: an ACK code, "closed", "timeout", "refused"."""
    longest_gap: float = 0.0
    """The longest time between two AAs (a pause during a failover)."""


class ResendingSender:
    """Sends `messages` in order at `rate` per second over one connection at a time, as an
    interface engine does: a message is sent again (same bytes) until it gets AA, after a
    negative ACK, no ACK within the timeout, or a dropped connection (then a new connection).
    With `reconnect_every`, the connection is closed and opened again after that many messages
    (engines that connect per batch); through a balancer that spreads the connections."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], rate: float, *,
                 reconnect_every: int = 0, ack_timeout: float = 5.0, give_up: float = 60.0) -> None:
        self.port, self.messages, self.rate = port, messages, rate
        self.reconnect_every, self.ack_timeout, self.give_up = reconnect_every, ack_timeout, give_up
        self.stats = SenderStats()
        self.stopped = asyncio.Event()

    async def run(self) -> SenderStats:
        loop = asyncio.get_running_loop()
        client: MllpTestClient | None = None
        start = loop.time()
        last_ack = start
        try:
            for n, (control_id, payload) in enumerate(self.messages):
                if self.stopped.is_set():
                    break
                due = start + n / self.rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if client is not None and self.reconnect_every and n % self.reconnect_every == 0:
                    await _close(client)
                    client = None
                first_try = loop.time()
                tries = 0
                while True:
                    waited = loop.time() - first_try
                    assert waited < self.give_up, f"{control_id}: no AA in {self.give_up}s {self.stats}"
                    if tries:
                        self.stats.resends += 1
                        await asyncio.sleep(0.1)
                    tries += 1
                    if client is None:
                        try:
                            client = await MllpTestClient(self.port).__aenter__()
                        except OSError:
                            self.stats.negative["refused"] += 1
                            continue
                    try:
                        await client.send_raw(frame(payload))
                        reply = await client.reply(timeout=self.ack_timeout)
                    except TimeoutError:
                        reply, why = None, "timeout"
                    except OSError:
                        reply, why = None, "closed"
                    else:
                        why = "closed"
                    if reply is None:
                        self.stats.negative[why] += 1
                        await _close(client)
                        client = None
                        continue
                    code = msa(reply)[0]
                    if code == "AA":
                        now = loop.time()
                        self.stats.acked[control_id] = now
                        self.stats.longest_gap = max(self.stats.longest_gap, now - last_ack)
                        last_ack = now
                        break
                    self.stats.negative[code] += 1
        finally:
            if client is not None:
                await _close(client)
        return self.stats


async def _close(client: MllpTestClient) -> None:
    with contextlib.suppress(Exception):
        await client.__aexit__(None, None, None)


def dft_messages(prefix: int, count: int, lines: int = 2) -> list[tuple[str, bytes]]:
    """`count` DFT^P03s with control ids DFT<prefix*100000 + n>, each with `lines` charges."""
    from router import simulate

    out = []
    for n in range(count):
        seq = prefix * 100000 + n
        out.append((f"DFT{seq:08d}", simulate.dft(seq, lines=lines)))
    return out


async def stored_events(url: str, stream: str = names.STREAM_CANONICAL) -> list[dict[str, object]]:
    """Every event in `stream` (JSON), read with an ordered consumer from a connection of the test's."""
    nc = await nats.connect(url.split(","))
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = int(info.state.messages)
        out: list[dict[str, object]] = []
        if total == 0:
            return out
        sub = await js.subscribe(">", stream=stream, ordered_consumer=True,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        try:
            while len(out) < total:
                msg = await sub.next_msg(timeout=10)
                out.append(json.loads(msg.data))
        finally:
            await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def raw_control_ids(url: str) -> Counter[str]:
    """How many times each control id's raw message is in FICUS_RAW (its header)."""
    nc = await nats.connect(url.split(","))
    try:
        js = nc.jetstream()
        total = int((await js.stream_info(names.STREAM_RAW)).state.messages)
        seen: Counter[str] = Counter()
        if total == 0:
            return seen
        sub = await js.subscribe(">", stream=names.STREAM_RAW, ordered_consumer=True,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        try:
            for _ in range(total):
                msg = await sub.next_msg(timeout=10)
                seen[(msg.headers or {}).get(names.HDR_CONTROL_ID, "")] += 1
        finally:
            await sub.unsubscribe()
        return seen
    finally:
        await nc.close()


def check_exactly_once(acked: dict[str, float], events: list[dict[str, object]], raws: Counter[str],
                       lines: int) -> None:
    """Every control id that got AA: its raw message once, its `lines` events once each (no event
    id twice anywhere: a resend that produced events again would show here)."""
    ids = Counter(str(e["id"]) for e in events)
    twice = {i: n for i, n in ids.items() if n > 1}
    assert not twice, f"{len(twice)} event ids stored more than once"
    per_message = Counter(str(e["ficuscorrelation"]).rpartition(":")[2] for e in events)
    missing = [c for c in acked if per_message[c] != lines]
    assert not missing, f"{len(missing)} acknowledged messages without exactly {lines} events: {missing[:5]}"
    raw_wrong = [c for c in acked if raws[c] != 1]
    assert not raw_wrong, f"{len(raw_wrong)} acknowledged messages whose raw is not stored once: " \
                          f"{[(c, raws[c]) for c in raw_wrong[:5]]}"
