"""Translation of units bigger than a message runs off the event loop (issue 12 item 7).

A heartbeat task on the service's loop measures the longest gap between its wake-ups while a
folder interface ingests an 835 whose transactions hold thousands of claims (each one unit).
With translation on the loop (the old path, still selectable with FICUS_TRANSLATE_ON_LOOP=1
for the benchmark) a gap lasts as long as one transaction's translation; off the loop it is a
few GIL switch intervals. The two are compared in the same test, so a busy machine slows both.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bench.x12_835 import ISA, transaction
from router import names
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config, stream_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_balances")]
CLAIMS = 1500
"""Claims per ST transaction: one unit, about a tenth of a second or more of translation."""


def write_835(path: Path, first_st: int, transactions: int) -> None:
    body = "".join(transaction(first_st + i, CLAIMS) for i in range(transactions))
    path.write_text(ISA + "GS*HP*BENCHPAYER*BENCHHOSP*20241015*1200*1*X*005010X221A1~\n" + body
                    + f"GE*{transactions}*1~\nIEA*1*000000001~\n", encoding="ascii")


def folder_835(tmp: Path) -> dict[str, Any]:
    for d in ("in", "archive"):
        (tmp / d).mkdir(exist_ok=True)
    return {"name": "remits", "kind": "folder", "path": str(tmp / "in"), "patterns": ["*.835"],
            "poll_seconds": 0.1, "complete": "rename", "format": "x12-835", "after": "archive",
            "archive_dir": str(tmp / "archive"), "route": "modern"}


async def ingest_max_gap(tmp: Path, svc: Any, name: str, first_st: int) -> float:
    """Drops one 835 of 3 big transactions; the longest heartbeat gap (s) until it is done."""
    stats = svc.interfaces["remits"].stats
    done = stats.acked
    staged = tmp / name
    write_835(staged, first_st, 3)
    gaps: list[float] = []
    running = True

    async def heartbeat() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        await asyncio.sleep(0.05)
        staged.rename(tmp / "in" / name)
        await wait_for(lambda: stats.acked == done + 1, timeout=120)
    finally:
        running = False
        await beat
    return max(gaps)


async def test_big_835_does_not_hold_the_event_loop(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(nats_server.url, [folder_835(tmp_path)], state_dir=str(tmp_path / "state"))
    async with service_factory(cfg) as svc:
        monkeypatch.setenv("FICUS_TRANSLATE_ON_LOOP", "1")
        on_loop = await ingest_max_gap(tmp_path, svc, "on-loop.835", 1)
        monkeypatch.delenv("FICUS_TRANSLATE_ON_LOOP")
        off_loop = await ingest_max_gap(tmp_path, svc, "off-loop.835", 100)
        stats = svc.interfaces["remits"].stats
        assert stats.dead_lettered == 0
        events = await stream_count(nats_server.url, names.STREAM_CANONICAL)
        assert events == stats.published > 0
    # The same work either way: off the loop, the loop's longest pause is a fraction of one
    # transaction's translation.
    assert off_loop < on_loop / 3, f"longest loop gap {off_loop * 1000:.0f} ms off the loop, " \
                                   f"{on_loop * 1000:.0f} ms on it"
