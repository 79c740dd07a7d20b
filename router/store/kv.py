"""A KV bucket as Ficus uses it: bytes values with revisions, Ficus types and errors only.

Compare-and-set (`create`, `update` with the last revision) is how two instances agree on
a route or a checkpoint: the loser gets `RevisionConflict` and reads the winner's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from router.store.errors import StoreUnavailable, mapped


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's current value and its revision (the bucket-wide sequence of that write)."""

    key: str
    value: bytes
    revision: int


def _whole(ttl: float | None) -> float | None:
    """A TTL in whole seconds (nats-py sends whole seconds): rounded up, never shorter than asked."""
    return None if ttl is None else float(math.ceil(ttl))


class Bucket:
    """One KV bucket; every method raises only `router.store` errors."""

    def __init__(self, kv: KeyValue, name: str, js: JetStreamContext | None = None) -> None:
        self._kv = kv
        self.name = name
        self._js = js

    async def get(self, key: str) -> Entry | None:
        """The key's entry, or None when it was never written or is deleted."""
        with mapped(f"{self.name}: get"):
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # KeyDeletedError too: a deleted key reads as absent
                return None
        return Entry(key, entry.value or b"", entry.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        """Writes unconditionally; returns the new revision."""
        with mapped(f"{self.name}: put"):
            return await self._kv.put(key, value)

    async def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Writes only if the key is absent (or deleted); `RevisionConflict` otherwise.

        `ttl`: this value's own time to live in whole seconds (rounded up; per-message TTL,
        nats-server 2.11+): the server removes it then unless a later write replaced it.
        """
        with mapped(f"{self.name}: create"):
            return await self._kv.create(key, value, msg_ttl=_whole(ttl))

    async def update(self, key: str, value: bytes, last: int, *, ttl: float | None = None) -> int:
        """Writes only if the key's revision is still `last`; `RevisionConflict` otherwise
        (`ttl` as for `create`)."""
        with mapped(f"{self.name}: update"):
            if ttl is None:
                return await self._kv.update(key, value, last=last)
            # nats-py's public update takes no TTL; its compare-and-set write does.
            return await self._kv._update(key, value, last=last, msg_ttl=_whole(ttl))

    async def delete(self, key: str) -> None:
        """Deletes the key (a tombstone: `get` answers None afterwards)."""
        with mapped(f"{self.name}: delete"):
            await self._kv.delete(key)

    LIST_BATCH = 10_000  # messages per pull request (headers only: well under 4 MB a batch)
    LIST_SECONDS = 300.0  # a listing that has not caught up with the writers by then fails
    PULL_EXPIRES = 2.0  # a pull with nothing to send ends after this long

    async def keys(self) -> list[str]:
        """Every live key (deleted and purged keys left out); an empty bucket gives [].

        Read with an ephemeral pull consumer of the bucket's stream (each key's last message,
        headers only), then on to the stream's end; the newest message read of each key says
        whether it lives. A key that exists throughout the listing is in it, even while it is
        being rewritten; a key created or deleted during the listing may or may not be.
        nats-py's `KeyValue.keys` is not used: its watch can answer "no keys", or leave out a
        key being rewritten, while keys are written. Raises `StoreUnavailable` when the listing
        cannot finish (NATS away, or writers never pausing for `LIST_SECONDS`).
        """
        js = self._js if self._js is not None else self._kv._js
        stream, name = f"KV_{self.name}", f"ficus-keys-{secrets.token_hex(8)}"
        prefix = f"$KV.{self.name}."
        config = ConsumerConfig(name=name, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                ack_policy=AckPolicy.NONE, filter_subject=f"{prefix}>", headers_only=True,
                                mem_storage=True, num_replicas=1, inactive_threshold=60.0)
        with mapped(f"{self.name}: keys"):
            info = await js.add_consumer(stream, config)
        try:
            if not info.num_pending:  # counted at creation: the bucket holds no message at all
                return []
            with mapped(f"{self.name}: keys"):
                live = await self._read_all(js, stream, name, prefix)
        finally:
            with contextlib.suppress(Exception):  # the inactive threshold removes it otherwise
                await js.delete_consumer(stream, name)
        return sorted(key for key, alive in live.items() if alive)

    async def _read_all(self, js: JetStreamContext, stream: str, name: str, prefix: str) -> dict[str, bool]:
        """Key -> lives, from the consumer's messages until the stream holds none past the last read.

        The end is checked against the stream itself, not the pending counts: the server's
        counts lag writes (a message can report 0 pending while a rewrite is on its way), and a
        pull can end before the stream's end. Once a message was read and afterwards the stream
        holds nothing past it, every message that was a key's newest at that moment was read
        (the consumer reads in stream order and passes only messages already stored).
        """
        nc = js._nc
        loop = asyncio.get_running_loop()
        live: dict[str, bool] = {}
        got = 0
        last: Msg | None = None
        ended: asyncio.Future[str] = loop.create_future()

        async def take(msg: Msg) -> None:
            nonlocal got, last
            headers = msg.headers or {}
            status = headers.get(Header.STATUS)
            if status:
                if status != "100" and not ended.done():  # 100: an idle heartbeat
                    ended.set_result(status)
                return
            got += 1
            last = msg
            live[msg.subject[len(prefix):]] = (headers.get(KV_OP) not in (KV_DEL, KV_PURGE)
                                               and KV_MARKER_REASON not in headers)
            if got == self.LIST_BATCH and not ended.done():
                ended.set_result("full")

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=take)
        idle = max(js._timeout, 5.0) + self.PULL_EXPIRES
        deadline = loop.time() + self.LIST_SECONDS
        unheard = loop.time() + idle  # until when "no responders" is waited out
        # no_wait: answer as soon as the stream's end is reached; expires: do not answer
        # "no messages" from the consumer's pending count alone.
        request = json.dumps({"batch": self.LIST_BATCH, "no_wait": True,
                              "expires": int(self.PULL_EXPIRES * 1e9)}).encode()
        try:
            while loop.time() < deadline:
                ended, got = loop.create_future(), 0
                await nc.publish(f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{name}", request, reply=inbox)
                while not ended.done():
                    before = got
                    await asyncio.wait([ended], timeout=idle)
                    if not ended.done() and got == before:
                        raise StoreUnavailable(f"{self.name}: keys: the pull went silent")
                status = ended.result()
                if status == "503" and loop.time() < unheard:
                    # No responders: in a cluster the consumer's server may not have told the
                    # others yet that it takes pulls for it. Asked again shortly.
                    await asyncio.sleep(0.05)
                    continue
                if status not in ("full", "404", "408"):
                    raise StoreUnavailable(f"{self.name}: keys: the pull was answered {status}")
                if status == "full":
                    continue
                after = last.metadata.sequence.stream + 1 if last is not None else 1
                if not await self._holds_from(js, stream, prefix, after):
                    return live
            raise StoreUnavailable(f"{self.name}: keys: writers did not pause for {self.LIST_SECONDS:.0f} s")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @staticmethod
    async def _holds_from(js: JetStreamContext, stream: str, prefix: str, seq: int) -> bool:
        """Whether the stream holds a message of the bucket at `seq` or later."""
        try:
            await js.get_msg(stream, seq, subject=f"{prefix}>", next=True)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def watch(self) -> AsyncIterator[Entry]:
        """Every key's current value, then each later write, until the caller stops iterating.

        A delete arrives with an empty value. Raises `StoreError` when the watch is lost.
        """
        with mapped(f"{self.name}: watch"):
            watcher = await self._kv.watchall()
        try:
            while True:
                with mapped(f"{self.name}: watch"):
                    try:
                        entry = await watcher.__anext__()  # type: ignore[no-untyped-call]
                    except StopAsyncIteration:
                        return
                if entry is not None:  # None marks "initial values delivered"
                    yield Entry(entry.key, entry.value or b"", entry.revision or 0)
        finally:
            # Best effort: the watch's subscription goes with the connection anyway.
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

