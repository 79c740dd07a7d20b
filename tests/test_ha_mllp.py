"""Issue 18 acceptance: MLLP on every instance, through a real HAProxy, on a real NATS cluster.

- Two `ficus run` processes on a three-node cluster (R3), HAProxy in front (the shipped
  deploy/haproxy/ficus.cfg with this test's addresses); two senders at a fixed rate that resend
  as interface engines do; one instance killed with SIGKILL three times and restarted: every
  message that got AA is stored exactly once (raw and events), resends included.
- A rolling restart (SIGTERM with `cluster.drain_seconds`) through HAProxy needs no resend.
- Kill the NATS node that leads the canonical stream during load: ACKs keep coming (after a
  short pause), nothing acknowledged is lost.
- A route flip through one instance's API is obeyed by every instance within one second.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from router import names
from tests.ha import (
    HAPROXY_CFG,
    IFACE,
    ResendingSender,
    check_exactly_once,
    dft_messages,
    haproxy,
    haproxy_binary,
    instances,
    raw_control_ids,
    stored_events,
)
from tests.nats_cluster import nats_cluster

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(haproxy_binary() is None,
                                 reason="haproxy not installed (scripts/bootstrap.sh installs the Debian package)")]

LINES = 2


def test_the_shipped_haproxy_config_is_valid() -> None:
    binary = haproxy_binary()
    assert binary is not None
    done = subprocess.run([binary, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_mllp_through_haproxy_survives_three_kill9_of_an_instance(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "cluster") as cluster, \
            instances(tmp_path, cluster.url, ["a", "b"]) as (a, b), haproxy(tmp_path, [a, b]) as port:
        senders = [ResendingSender(port, dft_messages(k + 1, 900, LINES), rate=15, reconnect_every=10)
                   for k in range(2)]
        sending = [asyncio.create_task(s.run()) for s in senders]
        loop = asyncio.get_running_loop()

        async def acks_grow(by: int, timeout: float = 30) -> None:
            target = sum(len(s.stats.acked) for s in senders) + by
            deadline = loop.time() + timeout
            while sum(len(s.stats.acked) for s in senders) < target:
                assert loop.time() < deadline, f"ACKs stalled: {[s.stats for s in senders]}"
                assert not any(t.done() for t in sending), [t.exception() for t in sending if t.done()]
                await asyncio.sleep(0.05)

        try:
            for _ in range(3):
                await acks_grow(60)
                await a.ficus.kill9()
                await acks_grow(30)  # the other instance carries the traffic meanwhile
                await a.restart()
            await acks_grow(60)
            for s in senders:
                s.stopped.set()
            stats = await asyncio.wait_for(asyncio.gather(*sending), 90)
        finally:
            for task in sending:
                task.cancel()
        acked = {cid: t for s in stats for cid, t in s.acked.items()}
        events = await stored_events(cluster.url)
        raws = await raw_control_ids(cluster.url)
        check_exactly_once(acked, events, raws, LINES)
        # Each sender sends in order and moves on only after an AA: nothing it sent lacks one.
        assert len(acked) >= 300, len(acked)
        sent_events = {str(e["ficuscorrelation"]).rpartition(":")[2] for e in events}
        assert sent_events == set(acked), "events stored for a message that never got AA, or the reverse"
        assert sum(s.resends for s in stats) > 0, "no resend happened: the kills did not hit traffic"
        print(f"acked {len(acked)}, resends {sum(s.resends for s in stats)}, "
              f"negative {[dict(s.negative) for s in stats]}, longest gap {max(s.longest_gap for s in stats):.2f}s")


async def test_a_rolling_restart_through_haproxy_with_drain_needs_no_resend(tmp_path: Path) -> None:
    """SIGTERM with `cluster.drain_seconds`: HAProxy sees /readyz 503 and sends new connections to
    the other instance while the stopping one still answers, so senders that reconnect now and
    then (every 5 messages here) never meet a closed listener: no resend, no negative ACK."""
    async with nats_cluster(tmp_path / "cluster") as cluster, \
            instances(tmp_path, cluster.url, ["a", "b"], extra="drain_seconds = 3") as (a, b), \
            haproxy(tmp_path, [a, b]) as port:
        sender = ResendingSender(port, dft_messages(5, 900, LINES), rate=15, reconnect_every=5)
        sending = asyncio.create_task(sender.run())

        async def acks_grow(by: int, timeout: float = 30) -> None:
            await _acks_grow(sender, sending, by, timeout)

        try:
            await acks_grow(30)
            for inst in (a, b, a):  # a rolling restart, then one more
                assert await inst.ficus.terminate() == 0, inst.ficus.tail()
                await inst.restart()
                await acks_grow(30)
            sender.stopped.set()
            stats = await asyncio.wait_for(sending, 60)
        finally:
            sending.cancel()
        assert stats.resends == 0 and not stats.negative, f"resends {stats.resends}: {dict(stats.negative)}"
        check_exactly_once(stats.acked, await stored_events(cluster.url), await raw_control_ids(cluster.url), LINES)


async def _canonical_leader(url: str) -> str:
    nc = await nats.connect(url.split(","))
    try:
        info = await nc.jetstream().stream_info(names.STREAM_CANONICAL)
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)
    finally:
        await nc.close()


async def test_killing_a_nats_node_during_load_loses_nothing(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "cluster") as cluster, \
            instances(tmp_path, cluster.url, ["a"]) as (a,):
        sender = ResendingSender(a.mllp_port, dft_messages(3, 1500, LINES), rate=30)
        sending = asyncio.create_task(sender.run())
        loop = asyncio.get_running_loop()

        async def acks_grow(by: int, timeout: float = 30) -> None:
            await _acks_grow(sender, sending, by, timeout)

        try:
            await acks_grow(60)
            leader = await _canonical_leader(cluster.url)
            node = next(n for n in cluster.nodes if n.name == leader)
            node.kill()
            await node.wait_stopped()
            killed_at = len(sender.stats.acked)
            await acks_grow(90)  # ingest continues on two nodes
            # An instance that (re)starts while a node is down starts at once: two of three will do.
            restarted = loop.time()
            await a.ficus.kill9()
            await a.restart()
            restart_seconds = loop.time() - restarted
            await acks_grow(60)
            await cluster.restart(node)
            await acks_grow(60)
            sender.stopped.set()
            stats = await asyncio.wait_for(sending, 90)
        finally:
            sending.cancel()
        assert len(stats.acked) > killed_at + 90
        assert restart_seconds < 30, f"an instance took {restart_seconds:.1f}s to start with a NATS node down"
        check_exactly_once(stats.acked, await stored_events(cluster.url), await raw_control_ids(cluster.url), LINES)
        print(f"acked {len(stats.acked)}, resends {stats.resends}, negative {dict(stats.negative)}, "
              f"longest gap {stats.longest_gap:.2f}s, restart with a node down {restart_seconds:.1f}s")


async def _mode(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/api/v1/routes") as resp:
        return str((await resp.json())["routes"][IFACE]["mode"])


async def test_a_route_flip_through_one_instance_is_obeyed_by_all_within_a_second(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "cluster") as cluster, \
            instances(tmp_path, cluster.url, ["a", "b", "c"], legacy="mllp://127.0.0.1:9") as insts, \
            aiohttp.ClientSession() as http:
        loop = asyncio.get_running_loop()
        for inst in insts:
            assert await _mode(http, inst.api_port) == "modern"
        async with http.put(f"http://127.0.0.1:{insts[0].api_port}/api/v1/routes/{IFACE}",
                            data=json.dumps({"mode": "legacy", "reason": "HA test rollback"}),
                            headers={"Content-Type": "application/json"}) as resp:
            body = await resp.text()
            assert resp.status == 200, body
        answered = loop.time()
        seen: dict[str, float] = {}
        while len(seen) < len(insts) and loop.time() - answered < 5:
            for inst in insts:
                if inst.name not in seen and await _mode(http, inst.api_port) == "legacy":
                    seen[inst.name] = loop.time() - answered
            await asyncio.sleep(0.01)
        print("flip seen after", {k: f"{v * 1000:.0f} ms" for k, v in seen.items()})
        assert set(seen) == {i.name for i in insts}, seen
        assert max(seen.values()) < 1.0, seen


async def _acks_grow(sender: ResendingSender, sending: asyncio.Task[Any], by: int, timeout: float) -> None:
    """Until `by` more messages got AA (the sender still running), within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    target = len(sender.stats.acked) + by
    deadline = loop.time() + timeout
    while len(sender.stats.acked) < target:
        assert loop.time() < deadline, f"ACKs stalled: {sender.stats}"
        assert not sending.done(), sending.exception()
        await asyncio.sleep(0.05)
