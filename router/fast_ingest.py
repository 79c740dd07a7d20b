"""JetStream fast-ingest batch publishing (nats-server 2.14+, ADR-50) on the nats-py connection.

Why: one PubAck per message made the client the limit of ``FastPublisher`` (router/publisher.py)
at about half of what the server stores. A fast-ingest batch is acknowledged by the server
once every ``flow`` messages plus one PubAck when it is committed, so the client parses a
few acks per chunk instead of hundreds. No nats-py release implements it; the protocol is
small: the batch state travels in each message's reply subject::

    <inbox>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI      op: 0 start, 1 append, 2 commit

What the server answers on that subject, and what this module makes of it:

- to the first message: ``{"type":"ack","seq":0,"msgs":M}`` (acks will come every M
  messages), or an error PubAck: on a stream without ``allow_batched`` (10205), on a server
  that does not know the pattern, or a plain PubAck from a server that stored it as a normal
  publish -- all :class:`Unsupported`, and the caller publishes the lot another way (the
  Msg-Ids make what the server kept as plain messages a duplicate). The first window is
  written without waiting for that answer: the wait cost a round trip per batch, with the
  server idle; the messages after a refused first one are refused too (an unknown batch);
- ``{"type":"ack","seq":N,"msgs":M}``: messages up to N are stored (``gap: fail`` mode), the
  next ack comes M messages later. The writer keeps at most :data:`OUTSTANDING` windows
  unacknowledged (flow control; of the asked ``flow`` until the server says otherwise): it
  waits before running further ahead of the server;
- ``{"type":"gap",...}`` (a message lost on the way, a reconnect) or ``{"type":"err",...}``
  (a message refused): the batch fails at once (:class:`BatchFailed`) and nothing is
  acknowledged upstream; a retry sends the same Msg-Ids again;
- the commit's PubAck ``{"stream":S,"seq":Q,"batch":ID,"count":N}``: success only when
  ``count`` is the number of messages sent. A message whose Msg-Id was stored before is
  skipped by the server and still counted; a batch made only of such messages (a chunk read
  again after a crash) is committed with ``"seq": 0`` -- success too.

A batch goes to one stream (the server keeps batch state per stream; a message taken by
another stream would be a gap): :meth:`Store.ingest` groups messages by stream first.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from router.publisher import _CRLF, _HDR_LINE, _UNSAFE_SUBJECT, Item, _clean, encode_headers, supported

FLOW = 250
"""Messages per flow ack asked of the server (it may choose fewer: 1 while other batches run
on the same stream, then doubling up to 500 shared by the stream's batches). Each window is
what may be queued ahead of other publishers on the connection (MLLP ACKs wait behind it):
250 puts a 500-event file chunk in one write and three answers (start, one ack, commit); 100
cost the client half as much CPU again per message in wake-ups, writes and acks (measured
with bench.fast_ingest: about 2.0 against 1.35 us per message), for 300 fewer messages ahead."""
OUTSTANDING = 2
"""Flow windows written ahead of the last ack (ADR-50: 2 keeps the server busy while the
client waits)."""
FENCE_EVERY = 50
"""Messages between two checks of the lease fence (as Stage pieces of PUBLISH_PIECE)."""
UNSUPPORTED_CODES = frozenset({10205, 10206})
"""JetStream error codes meaning "not here": batch publish disabled on the stream, pattern unknown."""
_SUFFIX = ".$FI"
_OP_START, _OP_APPEND, _OP_COMMIT = 0, 1, 2

ProcessMsg = Callable[[int, bytes, bytes, bytes, bytes], Awaitable[None]]


_CACHED = 4096
"""Subjects and header sets remembered at most (then forgotten all at once)."""
_NUMBERS = b"%d.%d" + _SUFFIX.encode() + b" %d %d\r\n"
"""The end of an HPUB line after the batch's reply prefix: batch seq, op, header and total length."""
_Template = tuple[bytes, bytes, int]
"""Subject; CRLF and the headers after the Msg-Id, to the blank line; the header block's length
without the id."""


@dataclass(frozen=True, slots=True)
class _Bare:
    """Headers alone, to encode them with router/publisher.py's rules (an empty Msg-Id first)."""

    headers: dict[str, str]
    subject: str = ""
    payload: bytes = b""
    msg_id: str = ""


class Unsupported(Exception):
    """The server or the stream does not take fast-ingest batches (publish another way)."""


class BatchFailed(nats.errors.Error):
    """A batch the server did not store whole: a gap, a refused message, a short count."""


@dataclass(frozen=True, slots=True)
class Committed:
    """What the commit's PubAck said: ``seq`` 0 when every message was a duplicate."""

    stream: str
    seq: int
    count: int


class _Run:
    """One batch in flight: what the server acknowledged so far."""

    __slots__ = ("acked", "count", "error", "final", "flow", "started", "waiter")

    def __init__(self, count: int, flow: int, final: asyncio.Future[Committed]) -> None:
        self.count = count
        self.acked = 0
        self.flow = flow
        self.started = False
        self.error: BaseException | None = None
        self.final = final
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.final.done():
            self.final.set_exception(exc)
            self.final.exception()  # retrieved: the writer may be the one to raise it
        self.wake()

    def answer(self, data: bytes, headers: bytes) -> None:
        if headers:
            status = headers[len(_HDR_LINE) - 1: len(_HDR_LINE) + 3].strip()
            if status == b"503":
                self.fail(nats.js.errors.NoStreamResponseError())
            else:
                self.fail(BatchFailed(f"JetStream status {status.decode(errors='replace')}"))
            return
        try:
            resp: Any = json.loads(data)
        except ValueError:
            self.fail(BatchFailed("unreadable batch answer"))
            return
        if not isinstance(resp, dict):
            self.fail(BatchFailed("unreadable batch answer"))
            return
        kind = resp.get("type")
        if kind == "ack":
            self.started = True
            self.acked = max(self.acked, int(resp.get("seq") or 0))
            self.flow = max(1, int(resp.get("msgs") or 1))
            self.wake()
            return
        if kind == "gap":
            self.fail(BatchFailed(f"gap in batch: expected {resp.get('last_seq')}, got {resp.get('seq')}"))
            return
        if kind == "err":
            error = resp.get("error") or {}
            self.fail(BatchFailed(f"message {resp.get('seq')} refused: {error.get('err_code')}"))
            return
        error = resp.get("error")
        if error is not None:
            code = error.get("err_code") if isinstance(error, dict) else None
            if not self.started and code in UNSUPPORTED_CODES:
                self.fail(Unsupported(f"JetStream error {code}"))
                return
            self.fail(BatchFailed(f"JetStream error {code}"))
            return
        if "batch" not in resp:
            # A plain PubAck: the server stored the message as an ordinary publish.
            self.fail(Unsupported("no batch in the PubAck"))
            return
        count = int(resp.get("count") or 0)
        if count != self.count:
            self.fail(BatchFailed(f"batch committed {count} of {self.count} messages"))
            return
        if not self.final.done():
            self.final.set_result(Committed(str(resp.get("stream", "")), int(resp.get("seq") or 0), count))
        self.wake()


class FastIngest:
    """Fast-ingest batches on one nats-py connection (see the module docstring)."""

    def __init__(self, nc: Client, msg_id_header: str = "Nats-Msg-Id", *, flow: int = FLOW,
                 outstanding: int = OUTSTANDING) -> None:
        if not supported(nc):
            raise RuntimeError("this nats-py version does not expose what FastIngest needs")
        self._nc = nc
        self._msg_id_header = msg_id_header
        self._flow = flow
        self._outstanding = outstanding
        self._runs: dict[bytes, _Run] = {}
        self._ids = 0
        # Batch ids are per stream on the server: another instance's must never be ours.
        self._tag = secrets.token_hex(6)
        self._prefix = ""
        self._sid: int | None = None
        self._lock = asyncio.Lock()
        self._templates: dict[tuple[str, tuple[tuple[str, str], ...]], _Template] = {}
        """Per subject and header set: the subject checked, the headers after the Msg-Id line."""
        self._id_line = _HDR_LINE + msg_id_header.encode() + b": "
        self.batches = 0
        """Batches committed (a metric: shows the path is in use)."""
        self.messages = 0

    async def start(self) -> None:
        """Subscribes to the batches' reply subjects and takes their answers off the read loop."""
        async with self._lock:
            if self._sid is not None:
                return
            nc: Any = self._nc
            # An old-style inbox of our own: its answers never go through nats-py's mux.
            prefix = self._nc.new_inbox() + "."
            sub = await self._nc.subscribe(prefix + ">")
            original: ProcessMsg = nc._process_msg
            sid: int = sub._id
            runs = self._runs
            plen = len(prefix)

            async def process_msg(sid_: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
                if sid_ != sid:
                    await original(sid_, subject, reply, data, headers)
                    return
                end = subject.find(b".", plen)
                run = runs.get(subject[plen:end]) if end > 0 else None
                if run is not None:
                    run.answer(data, headers)

            nc._process_msg = process_msg
            self._prefix = prefix
            self._sid = sid

    async def publish(self, items: Sequence[Item], timeout: float,
                      fence: Callable[[], None] | None = None) -> Committed:
        """Stores ``items`` (all bound for one stream) as one batch; returns the commit.

        Raises :class:`Unsupported` (the server stored none of it as a batch), or a nats error,
        ``BatchFailed`` or ``TimeoutError`` when the batch is not stored whole; what ``fence``
        raises stops the batch (the server drops it after its idle timeout). The timeout runs
        from the last sign of progress, not from the start.
        """
        if not items:
            raise ValueError("an empty batch")
        if self._sid is None:
            await self.start()
        loop = asyncio.get_running_loop()
        self._ids += 1
        bid = f"{self._tag}{self._ids}"
        run = _Run(len(items), self._flow, loop.create_future())
        key = bid.encode()
        self._runs[key] = run
        prefix = f"{self._prefix}{bid}.{self._flow}.fail.".encode()
        last = len(items)
        sent = 0
        send = self._send
        outstanding = self._outstanding
        try:
            async with asyncio.timeout(timeout) as limit:
                while True:
                    if run.error is not None:
                        raise run.error
                    # The first window goes before the server's first answer: waiting for it cost
                    # a round trip per batch. Were batches not taken after all, what the server
                    # kept of it as plain messages is a duplicate when published another way.
                    upto = min(last, run.acked + run.flow * outstanding)
                    if upto > sent:
                        await send(self._commands(items, sent, upto, prefix, fence))
                        sent = upto
                        await self._flush()
                    if sent == last:
                        break
                    acked, started = run.acked, run.started
                    await self._wait(run)
                    if run.acked > acked or run.started > started:
                        limit.reschedule(loop.time() + timeout)
                committed = await run.final
        finally:
            self._runs.pop(key, None)
        self.batches += 1
        self.messages += last
        return committed

    def _commands(self, items: Sequence[Item], sent: int, upto: int, prefix: bytes,
                  fence: Callable[[], None] | None) -> bytes:
        """The HPUB commands of messages ``sent + 1`` to ``upto``, joined once. What a subject and
        header set make (checked, encoded) is remembered, and compared by value with the message
        before: a chunk's events come in runs of one interface and event type, so most messages
        cost their numbers, their Msg-Id and the join of their payload. (Dicts compare equal in
        any order: a message whose headers equal the one before's takes that one's line order.)"""
        templates = self._templates
        id_line = self._id_line
        max_payload = self._nc.max_payload
        last = len(items)
        out: list[bytes] = []
        extend = out.extend
        subject: str | None = None
        headers: dict[str, str] | None = None
        head = tail = b""
        fixed = 0
        for seq, item in enumerate(items[sent:upto], sent + 1):
            if fence is not None and seq % FENCE_EVERY == 1:
                fence()
            if item.subject != subject or item.headers != headers:
                subject, headers = item.subject, item.headers
                shape = (subject, tuple(headers.items()))
                subject_b, tail, fixed = templates.get(shape) or self._template(shape)
                head = b"HPUB " + subject_b + b" " + prefix
            msg_id = item.msg_id
            if "\r" in msg_id or "\n" in msg_id:
                msg_id = _clean(msg_id)
            mid = msg_id.encode()
            payload = item.payload
            hdr_len = fixed + len(mid)
            size = hdr_len + len(payload)
            if size > max_payload:
                raise nats.errors.MaxPayloadError()
            op = _OP_APPEND if 1 < seq < last else (_OP_COMMIT if seq == last else _OP_START)
            extend((head, _NUMBERS % (seq, op, hdr_len, size), id_line, mid, tail, payload, _CRLF))
        return b"".join(out)

    def _template(self, shape: tuple[str, tuple[tuple[str, str], ...]]) -> _Template:
        """Checks a subject and encodes a header set with router/publisher.py's rules, once."""
        subject, pairs = shape
        if not subject or any(c in subject for c in _UNSAFE_SUBJECT):
            raise nats.errors.BadSubjectError()
        tail = _CRLF + encode_headers("x", _Bare(dict(pairs)))[len(_HDR_LINE) + len("x: \r\n"):]
        if len(self._templates) >= _CACHED:
            self._templates.clear()
        template = (subject.encode(), tail, len(self._id_line) + len(tail))
        self._templates[shape] = template
        return template

    async def _send(self, commands: bytes) -> None:
        nc: Any = self._nc
        await nc._send_command(commands)

    async def _flush(self) -> None:
        nc: Any = self._nc
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    @staticmethod
    async def _wait(run: _Run) -> None:
        run.waiter = asyncio.get_running_loop().create_future()
        try:
            await run.waiter
        finally:
            run.waiter = None
