"""A KV bucket as Ficus uses it: bytes values with revisions, Ficus types and errors only.

Compare-and-set (`create`, `update` with the last revision) is how two instances agree on
a route or a checkpoint: the loser gets `RevisionConflict` and reads the winner's value.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from router.store.errors import StoreError, mapped


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

    async def keys(self) -> list[str]:
        """Every live key; an empty bucket gives an empty list."""
        with mapped(f"{self.name}: keys"):
            try:
                return list(await self._kv.keys())
            except nats.js.errors.NoKeysError:
                return []

    MAX_INDEXED = 100_000

    async def indexed_keys(self) -> list[str]:
        """Every live key of a small bucket (a registry, leases), from the stream's subject index.

        One request to the stream's leader, right while keys are being written: nats-py's
        watch-based `keys` may answer "no keys" when a write lands during its listing (seen about
        once in 200 listings beside a writer). The index still lists a deleted key (its tombstone),
        so callers `get` each key. More than the server lists at once (100,000) is a `StoreError`.
        """
        if self._js is None:
            return await self.keys()
        prefix = f"$KV.{self.name}."
        with mapped(f"{self.name}: keys"):
            info = await self._js.stream_info(f"KV_{self.name}", subjects_filter=f"{prefix}>")
        subjects = info.state.subjects or {}
        if len(subjects) >= self.MAX_INDEXED:  # the server lists this many at most: some may be missing
            raise StoreError(f"{self.name}: keys: more keys than one listing holds")
        return sorted(subject[len(prefix):] for subject in subjects)

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

