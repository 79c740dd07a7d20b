"""Store.page, the consumer API's page read (router/store/core.py, router/store/pages.py): batched
direct gets where the server offers them, a filtered consumer otherwise, the same messages
either way."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
from nats.js.api import StreamConfig

from router import names
from router.embedded_nats import EmbeddedNats
from router.store import StoredMsg
from router.store.pages import direct_page
from tests.test_store import opened


def _view(msgs: list[StoredMsg]) -> list[tuple[int, str, bytes, dict[str, str], int]]:
    return [(m.seq, m.subject, m.data, m.headers, m.pending) for m in msgs]


async def _fill(url: str, stream: str, count: int) -> datetime:
    """`count` messages on canonical.revenue.charge.posted / canonical.revenue.encounter.updated
    alternately; returns a time between the first and the second half."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        middle = datetime.now(UTC)
        for i in range(count):
            if i == count // 2:
                await asyncio.sleep(0.01)  # the halves get distinct store times
                middle = datetime.now(UTC)
                await asyncio.sleep(0.01)
            subject = "canonical.revenue.charge.posted" if i % 2 else "canonical.revenue.encounter.updated"
            await js.publish(subject, f'{{"i": {i}}}'.encode(), stream=stream,
                             headers={names.HDR_INTERFACE: f"feed-{i % 3}", names.HDR_MSG_ID: f"m{i}"})
        return middle
    finally:
        await nc.close()


async def test_direct_pages_equal_consumer_pages(nats_server: EmbeddedNats) -> None:
    async with opened(nats_server.url) as store:
        middle = await _fill(nats_server.url, names.STREAM_CANONICAL, 400)
        cases = [("canonical.>", 1, None, 100), ("canonical.revenue.charge.posted", 37, None, 50),
                 ("canonical.revenue.charge.posted", 390, None, 50), ("canonical.>", 0, middle, 30),
                 ("canonical.revenue.charge.posted", 5000, None, 10), ("canonical.none.such.thing", 1, None, 10)]
        for subject, seq, since, limit in cases:
            direct = await direct_page(store._nc, names.STREAM_CANONICAL, subject, seq, since, limit)
            assert direct is not None, "the embedded server (2.11+) answers direct gets"
            by_consumer = await store._page_by_consumer(names.STREAM_CANONICAL, subject, seq, since, limit)
            assert _view(direct) == _view(by_consumer), (subject, seq, since, limit)
            assert all(m.time is not None for m in direct)
        first = await store.page(names.STREAM_CANONICAL, "canonical.revenue.charge.posted", start_seq=1, limit=3)
        assert [m.seq for m in first] == [2, 4, 6] and first[0].headers[names.HDR_INTERFACE] == "feed-1"
        assert first[-1].pending == 200 - 3
        since = await store.page(names.STREAM_CANONICAL, "canonical.>", start_time=middle, limit=1)
        assert since[0].seq == 201


async def test_a_stream_without_direct_gets_is_paged_by_a_consumer(nats_server: EmbeddedNats) -> None:
    async with opened(nats_server.url) as store:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="OLD", subjects=["old.>"], allow_direct=False))
        finally:
            await nc.close()
        await _fill_old(nats_server.url)
        assert await direct_page(store._nc, "OLD", "old.>", 1, None, 10) is None  # no responder: not a wait
        page = await store.page("OLD", "old.>", start_seq=2, limit=3)
        assert [m.seq for m in page] == [2, 3, 4] and page[0].data == b"1"


async def _fill_old(url: str) -> None:
    nc = await nats.connect(url)
    try:
        for i in range(6):
            await nc.jetstream().publish(f"old.{i}", str(i).encode())
    finally:
        await nc.close()
