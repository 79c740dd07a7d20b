"""The consumer API over the canonical streams: pages of events and a live feed (SSE).

``GET /api/v1/events`` and ``GET /api/v1/events/stream`` take the same filters -- ``type`` (a
whole type or a prefix of it: ``org.ficus.revenue``, ``org.ficus.revenue.charge``),
``interface``, ``facility``, ``from``/``to`` (when the stream stored the event, ISO 8601) and
``mode`` (live or shadow) -- and both are answered by a JetStream consumer that the server
positions (a start sequence or a start time) on a subject filter, never by reading and
dropping messages: a page costs O(limit) however many events the stream holds
(bench/events_pages.py measures it).

Why an index stream. The event subject ``canonical.<domain>.<entity>.<action>`` (PRODUCT.md)
names the type and nothing else, so an interface or facility filter cannot be a subject
filter on FICUS_CANONICAL. A stream that sources the canonical streams with a subject
transform can only reorder the tokens it is given, so it cannot add the interface either.
So the stage publishes, in the same publish as the events, a copy of each one on
``evidx.<live|shadow>.<interface>.<facility>.<domain>.<entity>.<action>`` (FICUS_EVIDX,
names.evidx_subject; the facility is the record's, escaped to one token). One more message
per event in the same pipelined batch costs little on the ingest path (measured:
docs/benchmarks.md, "Event pages"); it doubles the bytes kept for events, for the same
retention. A listing with an interface or facility filter reads FICUS_EVIDX; without, it
reads FICUS_CANONICAL / FICUS_SHADOW, whose sequences ``GET /api/v1/events/{id}`` takes
(events stored before the index existed are listed there too).

A version (``...posted.v2``) is not in the subject: a page skips other versions of the same
domain.entity.action, so it may hold fewer than ``limit`` events (it still reads ``limit``
at most). ``from`` positions the consumer by time; ``to`` ends a page (and a feed) at the
first event stored later.

The cursor is opaque: base64url of (stream, next sequence, hash of the filters). A cursor
given with other filters than its own is a 400. A page answers ``cursor`` (where the next
page starts; given even when nothing more is there yet, so a client can poll with it) and
``more``. An SSE event's ``id`` is the cursor just past it: ``Last-Event-ID`` resumes
without a gap or a repeat. A feed sends a comment line every ``heartbeat`` seconds (default
15), and a client that does not keep up -- QUEUE_MAX events waiting for it -- is
disconnected and counted (``ficus_sse_dropped_total``): the feed's reader never waits on
a client, so ingest is never slowed by one.

Events are message content (PHI): both routes need content access (the admin role, or a
client granted `content = true`: router/api.py CONSUMER) and are audited; a page as a
content read (router/api.py), a feed once per connection (its start recorded before the
first byte, then its end).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from prometheus_client import Counter

from router import names, queries
from router.store import StoredMsg

PAGE_MAX = queries.PAGE_MAX
QUEUE_MAX = 1000
"""Events waiting for one SSE client before it is dropped."""
FEEDS: web.AppKey[set[asyncio.Event]] = web.AppKey("sse_feeds")
"""The open feeds of an app, each by the event that ends it (set at shutdown: close_feeds)."""
SSE_DROPPED = Counter("ficus_sse_dropped_total", "SSE clients disconnected for not keeping up", registry=None)


class BadRequest(Exception):
    """A filter or cursor the API answers with 400 (router/api.py turns it into ApiProblem)."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What a listing or a feed selects; `stream` and `subject` are where it reads."""

    mode: str
    type: str | None
    interface: str | None
    facility: str | None
    start: datetime | None
    end: datetime | None

    @property
    def indexed(self) -> bool:
        return self.interface is not None or self.facility is not None

    @property
    def stream(self) -> str:
        if self.indexed:
            return names.STREAM_EVIDX
        return names.STREAM_SHADOW if self.mode == "shadow" else names.STREAM_CANONICAL

    @property
    def subject(self) -> str:
        parts = (self.type or "").split(".")[2:5] if self.type else []
        tail = ".".join(parts) + (".>" if len(parts) < 3 else "") if parts else ">"
        if self.indexed:
            iface = self.interface or "*"
            facility = names.subject_token(self.facility) if self.facility else "*"
            return f"evidx.{self.mode}.{iface}.{facility}.{tail}"
        return ("shadow." if self.mode == "shadow" else "") + "canonical." + tail

    @property
    def version(self) -> str | None:
        """The whole type when it names a version (not in the subject: checked per event)."""
        return self.type if self.type and len(self.type.split(".")) == 6 else None

    def digest(self) -> str:
        """What a cursor is bound to: every filter except the start time (the cursor replaces it)."""
        key = json.dumps([self.mode, self.type, self.interface, self.facility,
                          self.end.isoformat() if self.end else None])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def audit(self) -> dict[str, Any]:
        return {"mode": self.mode, "type": self.type, "facility_filter": self.facility is not None,
                "from": self.start.isoformat() if self.start else None,
                "to": self.end.isoformat() if self.end else None}


def filters_of(query: Any) -> Filters:
    """The filters of a request's query (router/queries.py EventFilters); BadRequest for one that is malformed."""
    try:
        return filters_from(queries.parse(queries.EventFilters, query))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def filters_from(query: queries.EventFilters) -> Filters:
    return Filters(query.mode, query.type, query.interface, query.facility, query.start, query.end)


def encode_cursor(filters: Filters, next_seq: int) -> str:
    raw = json.dumps({"s": filters.stream, "q": next_seq, "h": filters.digest()}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, filters: Filters) -> int:
    """The next sequence a cursor points at; BadRequest when it is not one of ours or was made
    with other filters."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
        stream, seq, digest = data["s"], data["q"], data["h"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise BadRequest("not a cursor of this API") from None
    if not isinstance(seq, int) or not 0 < seq <= 2**63 - 1:
        raise BadRequest("not a cursor of this API")
    if stream != filters.stream or digest != filters.digest():
        raise BadRequest("this cursor was made with other filters: give the same filters, or none of the cursor")
    return seq


def _decoded(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None  # not ours: something else published on a canonical subject


def item(msg: StoredMsg) -> dict[str, Any]:
    """One event as both routes give it: its sequence in the stream read, when it was stored, the event."""
    return {"seq": msg.seq, "stored_at": msg.time.isoformat() if msg.time else None, "event": _decoded(msg.data)}


def wanted(msg: StoredMsg, filters: Filters) -> bool:
    """False for an event of another version of the type than the one asked for."""
    if filters.version is None:
        return True
    event = _decoded(msg.data)
    return isinstance(event, dict) and event.get("type") == filters.version


def past_end(msg: StoredMsg, filters: Filters) -> bool:
    return filters.end is not None and msg.time is not None and msg.time > filters.end


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def close_feeds(app: web.Application) -> None:
    """on_shutdown: ends every open feed, so stopping the API does not wait on its clients."""
    for stop in app[FEEDS]:
        stop.set()


async def feed(response: EventSourceResponse, source: Any, filters: Filters, stop: asyncio.Event,
               abort: Callable[[], None]) -> bool:
    """Sends the events `source` (an async iterator of StoredMsg) yields until the client goes,
    `to` is passed, `stop` is set, or the client falls QUEUE_MAX events behind (then True:
    dropped, and `abort` ends the connection: the writer is stuck on the client's full socket).

    The reader puts into a bounded queue and never waits: a client that stops reading fills
    its queue, not the NATS connection the interfaces publish on.
    """
    queue: asyncio.Queue[StoredMsg | None] = asyncio.Queue(maxsize=QUEUE_MAX)
    dropped = asyncio.Event()

    async def read() -> None:
        async for msg in source:
            try:
                queue.put_nowait(msg)
            except asyncio.QueueFull:
                dropped.set()
                SSE_DROPPED.inc()
                abort()  # a graceful close would wait on the client; the blocked send fails now
                return
            if past_end(msg, filters):
                return

    reader = asyncio.create_task(read())
    gone = asyncio.create_task(dropped.wait())
    ending = asyncio.create_task(stop.wait())
    # The heartbeat task ends when a write fails: a client gone while nothing happens.
    closed = asyncio.create_task(response.wait())
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, gone, ending, closed}, return_when=asyncio.FIRST_COMPLETED)
            if ending in done or closed in done:
                getter.cancel()
                return False
            if gone in done:
                getter.cancel()
                return True
            msg = getter.result()
            if msg is None or past_end(msg, filters):
                return False
            if wanted(msg, filters):
                try:
                    await response.send(json.dumps(item(msg)), id=encode_cursor(filters, msg.seq + 1))
                except (ConnectionError, RuntimeError):
                    return dropped.is_set()  # dropped, or the client went away
    finally:
        for task in (reader, gone, ending, closed):
            task.cancel()
        for task in (reader, gone, ending, closed):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# -- handlers (registered in router/api.py ENDPOINTS, which imports this module: the
# router.api names they use are imported when they run) ------------------------------------

def _request_filters(request: web.Request, query: queries.EventFilters) -> Filters:
    from router.api import STORE, ApiProblem

    filters = filters_from(query)
    if filters.indexed and not request.app[STORE].cfg.event_index:
        # Without the index an interface or facility filter could only be answered by a scan.
        raise ApiProblem(409, "interface and facility filters need the event index (nats.event_index = true)")
    return filters


def _start(query: queries.EventFilters, filters: Filters, cursor: str | None) -> int:
    """The sequence to start from: the cursor's, else `after` + 1 (plain sequences, kept for the
    CLI and older clients), else 0 (from the `from` time, or the stream's first)."""
    from router.api import ApiProblem

    if cursor:
        try:
            return decode_cursor(cursor, filters)
        except BadRequest as exc:
            raise ApiProblem(400, str(exc)) from None
    return 0 if query.after is None else query.after + 1


async def list_events(request: web.Request) -> web.Response:
    """GET /api/v1/events?type=&interface=&facility=&from=&to=&mode=&limit=&cursor= (admin, audited)."""
    from router import api

    query = queries.of(request, queries.EventsQuery)
    filters = _request_filters(request, query)
    start = _start(query, filters, query.cursor)
    limit = min(query.limit, PAGE_MAX)
    msgs = await request.app[api.STORE].page(filters.stream, filters.subject, start_seq=start,
                                             start_time=filters.start, limit=limit)
    events, seen = [], set()
    next_seq = max(start, 1)
    more = False
    for msg in msgs:
        if past_end(msg, filters):
            more = False
            break
        next_seq, more = msg.seq + 1, msg.pending > 0
        if wanted(msg, filters):
            events.append(item(msg))
            seen.add(msg.headers.get(names.HDR_INTERFACE, "?"))
    api.note(request, **filters.audit(), stream=filters.stream, count=len(events),
             seqs=[e["seq"] for e in events], interfaces=sorted(seen))
    # Nothing found from a time: no position to give yet (ask again with the same filters).
    cursor = None if start == 0 and filters.start is not None and not msgs else encode_cursor(filters, next_seq)
    return web.json_response({"events": events, "stream": filters.stream, "cursor": cursor,
                              "more": more, "next_after": next_seq - 1})


async def stream_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/events/stream (Server-Sent Events): the same filters; `Last-Event-ID` (or
    `cursor`) resumes after the last event received, `from` starts at a time, else only new
    events; `heartbeat` seconds between comment lines (1-60, default 15)."""
    from router import api

    query = queries.of(request, queries.StreamQuery)
    filters = _request_filters(request, query)
    start = _start(query, filters, request.headers.get("Last-Event-ID") or query.cursor)
    heartbeat = float(query.heartbeat)
    await api.begin(request, **filters.audit(), stream=filters.stream, start=start or None)
    store = request.app[api.STORE]
    response = EventSourceResponse(ping_interval=heartbeat, send_timeout=None)
    await response.prepare(request)
    stop = asyncio.Event()
    request.app[FEEDS].add(stop)
    try:
        async with contextlib.aclosing(store.tail(filters.stream, filters.subject, start, filters.start)) as source:
            dropped = await feed(response, source, filters, stop, lambda: _abort(request))
    finally:
        request.app[FEEDS].discard(stop)
    api.note(request, dropped=dropped)
    if not dropped and response.is_connected():
        with contextlib.suppress(ConnectionError, RuntimeError):
            response.stop_streaming()
            await response.write_eof()
    return response
