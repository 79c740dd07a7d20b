"""A KV bucket as Ficus uses it: bytes values with revisions, Ficus types and errors only.

Compare-and-set (`create`, `update` with the last revision) is how two instances agree on
a route or a checkpoint: the loser gets `RevisionConflict` and reads the winner's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from router.store.errors import StoreUnavailable, mapped


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's current value and its revision (the bucket-wide sequence of that write)."""

    key: str
    value: bytes
    revision: int


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

    async def create(self, key: str, value: bytes) -> int:
        """Writes only if the key is absent (or deleted); `RevisionConflict` otherwise."""
        with mapped(f"{self.name}: create"):
            return await self._kv.create(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Writes only if the key's revision is still `last`; `RevisionConflict` otherwise."""
        with mapped(f"{self.name}: update"):
            return await self._kv.update(key, value, last=last)

    async def delete(self, key: str) -> None:
        """Deletes the key (a tombstone: `get` answers None afterwards)."""
        with mapped(f"{self.name}: delete"):
            await self._kv.delete(key)

    LIST_BATCH = 10_000  # keys per pull request (headers only: well under 4 MB a batch)
    LIST_SECONDS = 300.0  # a listing that has not caught up with the writers by then fails

    async def keys(self) -> list[str]:
        """Every live key (deleted and purged keys left out); an empty bucket gives [].

        Read with an ephemeral pull consumer of the bucket's stream, headers only, from the
        stream's first message to its end: the newest message of each key says whether the key
        lives. The read ends when the consumer has nothing pending, so a key that exists
        throughout the listing is in it even while it is being rewritten; a key written or
        deleted during the listing may or may not be. nats-py's `KeyValue.keys` is not used: its
        watch can answer "no keys", or leave out a key being rewritten, while keys are written.
        Raises `StoreUnavailable` when the listing cannot finish (NATS away, or writers outpacing
        it for `LIST_SECONDS`).
        """
        js = self._js if self._js is not None else self._kv._js
        stream, name = f"KV_{self.name}", f"ficus-keys-{secrets.token_hex(8)}"
        prefix = f"$KV.{self.name}."
        # DeliverPolicy.ALL, not LAST_PER_SUBJECT: with history 1 the server reads the two alike
        # (from the first message), and with more history its last-per-subject skip list keeps a
        # pending count that drops when older revisions are removed, so "nothing pending" could
        # come early. Every revision is read then; the newest of each key decides.
        config = ConsumerConfig(name=name, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                filter_subject=f"{prefix}>", headers_only=True, mem_storage=True,
                                num_replicas=1, inactive_threshold=60.0)
        with mapped(f"{self.name}: keys"):
            info = await js.add_consumer(stream, config)
        try:
            if not info.num_pending:  # exact at creation: nothing stored under the bucket
                return []
            with mapped(f"{self.name}: keys"):
                live = await self._read_all(js, stream, name, prefix)
        finally:
            with contextlib.suppress(Exception):  # the inactive threshold removes it otherwise
                await js.delete_consumer(stream, name)
        return sorted(key for key, alive in live.items() if alive)

    async def _read_all(self, js: JetStreamContext, stream: str, name: str, prefix: str) -> dict[str, bool]:
        """Key -> lives, from the consumer's messages until it has nothing pending.

        Only the pending count ends the read: the server may end a `no_wait` pull early (it does
        when a message it was about to send was removed meanwhile), so an ended pull with
        nothing in it is checked against the consumer's own count before the listing stops.
        """
        nc = js._nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        wait = max(js._timeout, 5.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.LIST_SECONDS
        request = json.dumps({"batch": self.LIST_BATCH, "no_wait": True}).encode()
        live: dict[str, bool] = {}
        try:
            while loop.time() < deadline:
                await nc.publish(f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{name}", request, reply=inbox)
                got = 0
                while got < self.LIST_BATCH:
                    msg = await sub.next_msg(timeout=wait)
                    status = JetStreamContext.is_status_msg(msg)
                    if status in ("404", "408"):  # this pull ended: nothing more for it now
                        break
                    if status == "100":  # idle heartbeat
                        continue
                    if status:
                        raise StoreUnavailable(f"{self.name}: keys: the pull was answered {status}")
                    got += 1
                    headers = msg.headers or {}
                    live[msg.subject[len(prefix):]] = (headers.get(KV_OP) not in (KV_DEL, KV_PURGE)
                                                       and KV_MARKER_REASON not in headers)
                    if msg.metadata.num_pending == 0:
                        return live
                if got == 0 and (await js.consumer_info(stream, name)).num_pending == 0:
                    return live
            raise StoreUnavailable(f"{self.name}: keys: writers outpaced the listing")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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

