"""Acknowledged JetStream publishing on the hot path, cheaper than ``js.publish_async``.

Every unit Ficus accepts costs several JetStream writes (the raw copy, each event), and
the benchmark showed nats-py's generic path costing more per write than translation:
per publish it validates the subject, encodes headers key by key, makes a NUID token,
a future with a done-callback and a semaphore slot; per PubAck it builds a ``Msg``,
queues it to a subscription task, and parses it into a dataclass through reflection.

This module keeps nats-py for everything else (connection, reconnects, the pending
buffer and its flusher, the read loop) and changes only the two ends of a publish:
commands are written as pre-encoded ``HPUB`` bytes with a counter token in the reply
subject, and PubAcks are taken off the read loop before nats-py builds a message,
resolving one future per *batch* rather than one per message. The outcome rules are
those of ``Store.publish``: all acknowledged, or an exception (the caller turns it into
``StoreUnavailable`` and never into success).

It reaches inside ``nats.aio.client.Client`` only where it must: the PubAck hook (the
parser's ``_process_msg``, keyed by the subscription's ``_id``) and the write of
pre-encoded commands (``_send_command``, ``_flush_pending``, ``_flush_queue``: the same
calls ``Client.publish`` makes, without its per-header encoding). The reply inbox
(``new_inbox()``) and the payload limit (``max_payload``) come from the public API.
:func:`supported` checks the internals are there, the store falls back to
``publish_async`` when they are not, and the store's start-up self-test
(``Store.choose_publisher``) falls back when they are there but no longer behave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import PubAck

_HDR_LINE = b"NATS/1.0\r\n"
_CRLF = b"\r\n"
# What nats-py itself refuses in subjects and strips from header values: any of them
# would break the protocol framing of this and every later command.
_UNSAFE_SUBJECT = (" ", "\t", "\r", "\n")
_NEWLINES = str.maketrans({"\r": None, "\n": None})
_SAFE_SUBJECTS_MAX = 4096
# The internals used; everything else is nats-py's public API.
_REQUIRED = ("_process_msg", "_send_command", "_flush_pending", "_flush_queue")


class Item(Protocol):
    """What is published: ``router.store.Outgoing`` satisfies it."""

    @property
    def subject(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def msg_id(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...


ProcessMsg = Callable[[int, bytes, bytes, bytes, bytes], Awaitable[None]]


def supported(nc: Client) -> bool:
    """Whether this nats-py exposes the internals the fast path relies on."""
    return all(hasattr(nc, name) for name in _REQUIRED)


def encode_headers(msg_id_name: str, item: Item) -> bytes:
    """The NATS header block: the dedupe id first, then the item's own headers."""
    parts = [_HDR_LINE, msg_id_name.encode(), b": ", _clean(item.msg_id).encode(), _CRLF]
    for key, value in item.headers.items():
        parts += (key.encode(), b": ", _clean(value).encode(), _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


def _clean(value: str) -> str:
    # Header values may come from the wire (MSH-10); a CR or LF would end the header early.
    if "\r" in value or "\n" in value:
        return value.translate(_NEWLINES)
    return value


def parse_pub_ack(data: bytes) -> PubAck | BaseException:
    """A PubAck, or the error JetStream answered instead.

    nats-server writes the success case as ``{"stream":"S","seq":N}``, optionally with
    ``"domain"`` and ``"duplicate": true``; that shape is read by hand (a PubAck per
    stored message made ``json.loads`` show up in the profile), anything else by json.
    """
    if data.startswith(b'{"stream":"') and b'"error"' not in data:
        end = data.find(b'"', 11)
        if end > 0 and data.startswith(b',"seq":', end + 1):
            start = end + 8
            stop = data.find(b",", start)
            digits = data[start:stop if stop > 0 else -1]
            if digits.isdigit():
                # The server writes `"duplicate": true` (with a space); accept both.
                duplicate = True if (b'"duplicate": true' in data or b'"duplicate":true' in data) else None
                return PubAck(stream=data[11:end].decode(), seq=int(digits), duplicate=duplicate)
    try:
        resp: dict[str, Any] = json.loads(data)
    except ValueError:
        return nats.errors.Error("JetStream sent an unreadable PubAck")
    error = resp.get("error") if isinstance(resp, dict) else None
    if error is not None:
        try:
            # from_error raises the specific subclass for some codes and returns it for others.
            found: BaseException = nats.js.errors.APIError.from_error(error)
            return found
        except nats.js.errors.APIError as exc:
            return exc
    try:
        return PubAck(stream=resp["stream"], seq=int(resp["seq"]), duplicate=resp.get("duplicate"))
    except (KeyError, TypeError, ValueError):
        return nats.errors.Error("JetStream sent an unreadable PubAck")


class _Batch:
    """The acknowledgements of one ``publish`` call, resolved as they arrive."""

    __slots__ = ("acks", "deadline", "future", "remaining")

    def __init__(self, count: int, future: asyncio.Future[None], deadline: float) -> None:
        self.acks: list[PubAck | None] = [None] * count
        self.remaining = count
        self.future = future
        self.deadline = deadline

    def resolve(self, index: int, data: bytes, headers: bytes) -> None:
        future = self.future
        if future.done():
            return
        if headers:
            # Only status replies carry headers here; 503 means no stream took the subject.
            status = headers[len(_HDR_LINE) - 1: len(_HDR_LINE) + 3].strip()
            if status == b"503":
                future.set_exception(nats.js.errors.NoStreamResponseError())
            else:
                future.set_exception(nats.errors.Error(f"JetStream status {status.decode(errors='replace')}"))
            return
        ack = parse_pub_ack(data)
        if isinstance(ack, BaseException):
            future.set_exception(ack)
            return
        self.acks[index] = ack
        self.remaining -= 1
        if self.remaining == 0:
            future.set_result(None)


class FastPublisher:
    """Pipelined, acknowledged JetStream publishes on one nats-py connection."""

    def __init__(self, nc: Client, msg_id_header: str = "Nats-Msg-Id") -> None:
        if not supported(nc):
            raise RuntimeError("this nats-py version does not expose what FastPublisher needs")
        self._nc = nc
        self._msg_id_header = msg_id_header
        self._pending: dict[int, tuple[_Batch, int]] = {}
        self._token = 0
        self._sid: int | None = None
        self._prefix = ""
        self._lock = asyncio.Lock()
        # Batches waiting for acks; a sweeper fails the late ones. One timer task for all
        # instead of an asyncio.timeout (a timer handle in the loop's heap) per publish.
        self._waiting: set[_Batch] = set()
        self._sweeper: asyncio.Task[None] | None = None
        # Subjects already checked: an interface publishes on a handful, thousands of times.
        self._safe_subjects: set[str] = set()

    @property
    def outstanding(self) -> int:
        """Publishes written and not yet acknowledged (or given up on)."""
        return len(self._pending)

    async def start(self) -> None:
        """Subscribes to the reply subjects and takes their messages off the read loop."""
        async with self._lock:
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="ficus-publish-timeouts")
            if self._sid is not None:
                return
            nc: Any = self._nc
            prefix = self._nc.new_inbox() + "."
            sub = await self._nc.subscribe(prefix + "*")
            self._prefix = prefix
            original: ProcessMsg = nc._process_msg
            sid: int = sub._id
            pending = self._pending
            plen = len(prefix)

            async def process_msg(sid_: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
                if sid_ != sid:
                    await original(sid_, subject, reply, data, headers)
                    return
                try:
                    token = int(subject[plen:])
                except ValueError:
                    return
                slot = pending.pop(token, None)
                if slot is not None:
                    slot[0].resolve(slot[1], data, headers)

            # The parser looks the method up on the instance for every MSG.
            nc._process_msg = process_msg
            self._sid = sid

    async def _sweep(self, interval: float = 0.05) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if self._waiting:
                now = loop.time()
                for batch in [b for b in self._waiting if b.deadline <= now]:
                    self._waiting.discard(batch)
                    if not batch.future.done():
                        batch.future.set_exception(TimeoutError())

    async def stop(self) -> None:
        """Stops the timeout sweeper (the connection itself belongs to the caller)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def publish(self, items: Sequence[Item], timeout: float) -> list[PubAck]:
        """Writes every item, then waits for all their PubAcks (in order) for at most
        ``timeout`` seconds. Raises a nats error or TimeoutError otherwise."""
        if self._sweeper is None:
            await self.start()
        nc: Any = self._nc
        max_payload = self._nc.max_payload
        loop = asyncio.get_running_loop()
        batch = _Batch(len(items), loop.create_future(), loop.time() + timeout)
        pending = self._pending
        prefix = self._prefix
        safe = self._safe_subjects
        tokens: list[int] = []
        try:
            for index, item in enumerate(items):
                subject, payload = item.subject, item.payload
                if subject not in safe:
                    if not subject or any(c in subject for c in _UNSAFE_SUBJECT):
                        raise nats.errors.BadSubjectError()
                    if len(safe) >= _SAFE_SUBJECTS_MAX:
                        safe.clear()
                    safe.add(subject)
                hdr = encode_headers(self._msg_id_header, item)
                # The server counts headers too, and answers an oversize command by closing the connection.
                if len(hdr) + len(payload) > max_payload:
                    raise nats.errors.MaxPayloadError()
                self._token += 1
                token = self._token
                head = f"HPUB {subject} {prefix}{token} {len(hdr)} {len(hdr) + len(payload)}\r\n".encode()
                pending[token] = (batch, index)
                tokens.append(token)
                # One join: chained `+` copies a large payload once per `+` (into fresh pages).
                await nc._send_command(b"".join((head, hdr, payload, _CRLF)))
            if nc._flush_queue is not None and nc._flush_queue.empty():
                await nc._flush_pending()
            self._waiting.add(batch)
            await batch.future
        except BaseException:
            for token in tokens:
                pending.pop(token, None)
            batch.future.cancel()
            raise
        finally:
            self._waiting.discard(batch)
        return batch.acks  # type: ignore[return-value]  # every slot is set once the future resolved

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until nothing is outstanding (at shutdown); False when time ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True
