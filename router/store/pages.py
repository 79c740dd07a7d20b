"""Pages of a stream for the consumer API, by batched direct gets (nats-server 2.11+, ADR-31).

The server positions each batch by sequence or time and subject filter, so a page costs
O(limit) whatever the stream holds, and sends the messages with an end-of-batch status: no
consumer to create and delete, no per-message wait on the client. Measured against the
consumer it replaces (tests/test_store_pages.py gives the same messages): several times the
pages per second for the same CPU (bench/ack_while_paging.py).

What a page still costs is client work in nats-py on the service's event loop, about 5 ms
for 100 events (each message's headers parsed, a message object built), time the MLLP
listeners wait for. Reading pages in a thread with a connection of its own was tried and
was worse: every socket call of the loop then waits to get the GIL back from the thread,
and ACK p99 doubled. So the per-client rate limit is what bounds a reader's share, and an
instance without interfaces can serve consumers apart from the ingest (README, "Serving
consumers").

`direct_page` answers None when the server cannot (an older server, a stream without
`allow_direct`): the caller then pages with a consumer (Store._page_by_consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

DIRECT_TIMEOUT = 5.0
"""How long a batch may take before the server is taken for one without direct gets."""
DIRECT_BATCH = 25
"""Messages asked for at a time: the client parses a batch in one go on the loop, so a small one
keeps that stretch short (the MLLP listeners wait for it)."""
DIRECT_HEADERS = frozenset({"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending",
                            "Nats-Last-Sequence", "Nats-UpTo-Sequence"})
"""What a direct get adds to a message's own headers."""


def _time(stamp: str) -> datetime | None:
    """RFC 3339 with nanoseconds, as the server writes it: fromisoformat takes microseconds."""
    head, dot, frac = stamp.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{frac[:6].ljust(6, '0')}" if dot else head).replace(tzinfo=UTC)
    except ValueError:
        return None


def _stored(msg: Msg, headers: dict[str, str]) -> Any:
    from router.store.core import StoredMsg

    return StoredMsg(int(headers["Nats-Sequence"]), headers.get("Nats-Subject", msg.subject), msg.data,
                     {k: v for k, v in headers.items() if k not in DIRECT_HEADERS},
                     int(headers.get("Nats-Num-Pending", "0") or 0), _time(headers.get("Nats-Time-Stamp", "")))


async def direct_page(nc: Client, stream: str, subject: str, start_seq: int, start_time: datetime | None,
                      limit: int) -> list[Any] | None:
    """Up to `limit` StoredMsg of `subject` from `start_seq` (or stored at/after `start_time`), by
    batched direct gets on `nc`; None when the server answers none (use a consumer then)."""
    out: list[Any] = []
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        queue.put_nowait(msg)

    sub = await nc.subscribe(nc.new_inbox(), cb=collect)
    try:
        while len(out) < limit:
            batch = min(limit - len(out), DIRECT_BATCH)
            request: dict[str, Any] = {"next_by_subj": subject, "batch": batch}
            if out:
                request["seq"] = out[-1].seq + 1
            elif start_time is not None and start_seq <= 0:
                request["start_time"] = start_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
            else:
                request["seq"] = max(1, start_seq)
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=sub.subject)
            got, status = 0, ""
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout=DIRECT_TIMEOUT)
                except TimeoutError:
                    return None  # no direct gets here (an older server): a consumer then
                headers = msg.headers or {}
                if "Nats-Sequence" not in headers:  # a status: end of batch, not found, no responders
                    status = headers.get("Status", "")
                    break
                out.append(_stored(msg, headers))
                got += 1
            if status == "404" or (status == "204" and (got < batch or out[-1].pending == 0)):
                return out  # nothing (more) matches
            if status != "204":
                return None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return out
