"""An object store bucket (whole raw files), Ficus types and errors only.

Objects are written in JetStream's object store format, as nats-py's own ``put`` writes
them (so its ``get`` reads them): the bytes as chunk messages on ``$O.<bucket>.C.<nuid>``,
then one meta message on ``$O.<bucket>.M.<name>`` naming the nuid, size, chunk count and
SHA-256 digest. An object exists once its meta message is stored, and that is written only
after JetStream acknowledged every chunk: a crash mid-put leaves chunks no meta names
(unreadable, never taken for the object), never a meta message naming missing bytes.

nats-py's ``put`` sends 128 KiB chunks and waits for each one's ack before reading the
next. Here chunks are as large as the server takes (up to `CHUNK_BYTES`), are read and
hashed off the event loop, and several are in flight at once (`WINDOW`): docs/benchmarks.md
section 14 measured about a third less CPU per MB (Ficus and nats-server together).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMetaOptions, PubAck
from nats.js.object_store import ObjectStore
from nats.nuid import NUID

from router.store.errors import StoreError, StoreUnavailable, mapped
from router.store.outgoing import Outgoing

CHUNK_BYTES = 1 << 20
"""The largest chunk written (the server's max_payload, less `HEADROOM`, may make it smaller)."""
HEADROOM = 1024
"""Bytes kept free below max_payload for the HPUB headers (the dedupe id)."""
MIN_CHUNK = 1024
WINDOW = 8
"""Chunks written and not yet acknowledged, at most: enough to keep the server writing
while the next chunk is read, few enough to keep memory at a few MiB whatever the file."""
ROLLUP = {"Nats-Rollup": "sub"}
"""The meta message replaces the object's earlier meta (as nats-py and the Go client write it)."""

Publish = Callable[[Sequence[Outgoing]], Awaitable[list[PubAck]]]


def chunk_size(max_payload: int) -> int:
    """The chunk size for a server that takes messages of ``max_payload`` bytes."""
    return max(MIN_CHUNK, min(CHUNK_BYTES, max_payload - HEADROOM))


def _read(fh: BinaryIO, size: int, digest: hashlib._Hash) -> bytes:
    # In a worker thread: reading and hashing (hashlib releases the GIL) overlap the sends.
    data = fh.read(size)
    digest.update(data)
    return data


def _in_order(last: int, acks: list[PubAck]) -> int:
    """The chunk's stream sequence, checked to follow the one before: readers take chunks
    in stream order, so chunks stored out of order must never get a meta message."""
    (ack,) = acks
    if ack.seq <= last:
        raise StoreUnavailable("object chunks stored out of order")
    return ack.seq


class Objects:
    """One object store bucket; every method raises only `router.store` errors."""

    def __init__(self, store: ObjectStore, name: str, js: JetStreamContext, publish: Publish,
                 max_payload: Callable[[], int]) -> None:
        self._store = store
        self._js = js
        self._publish = publish
        self._max_payload = max_payload
        self.name = name
        self.stream = f"OBJ_{name}"

    async def has(self, name: str) -> bool:
        """Whether an object of that name is stored (and not deleted)."""
        with mapped(f"{self.name}: info"):
            try:
                await self._store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                return False
        return True

    async def put(self, name: str, data: bytes | BinaryIO) -> None:
        """Stores `data` (bytes or a binary file, read chunk by chunk) under `name`; returns
        once JetStream acknowledged every chunk and then the meta message."""
        fh = io.BytesIO(data) if isinstance(data, bytes) else data
        with mapped(f"{self.name}: put"):
            try:
                before: ObjectInfo | None = await self._store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                before = None
            size = chunk_size(self._max_payload())
            nuid = NUID().next().decode()
            chunks = f"$O.{self.name}.C.{nuid}"
            try:
                total, count, digest = await self._put_chunks(fh, chunks, nuid, size)
            except Exception:
                await self._purge(chunks)
                raise
            info = ObjectInfo(name=name, bucket=self.name, nuid=nuid, size=total, chunks=count,
                              mtime=datetime.now(UTC).isoformat(), options=ObjectMetaOptions(max_chunk_size=size),
                              digest="SHA-256=" + base64.urlsafe_b64encode(digest).decode())
            # Not purged when this fails: the meta may be stored with only its ack lost.
            await self._publish([Outgoing(self._meta_subject(name), json.dumps(info.as_dict()).encode(),
                                          f"{nuid}.meta", ROLLUP)])
            if before is not None and not before.deleted:
                # The name now points at the new chunks; the old ones are garbage.
                await self._purge(f"$O.{self.name}.C.{before.nuid}")

    async def _put_chunks(self, fh: BinaryIO, subject: str, nuid: str, size: int) -> tuple[int, int, bytes]:
        """Writes the chunks, at most `WINDOW` unacknowledged; returns (bytes, chunks, SHA-256)
        once every one is acknowledged, in order."""
        digest = hashlib.sha256()
        sent: deque[asyncio.Future[list[PubAck]]] = deque()
        total = count = last = 0
        try:
            while data := await asyncio.to_thread(_read, fh, size, digest):
                sent.append(asyncio.ensure_future(self._publish([Outgoing(subject, data, f"{nuid}.{count}")])))
                total += len(data)
                count += 1
                while len(sent) >= WINDOW:
                    last = _in_order(last, await sent.popleft())
            while sent:
                last = _in_order(last, await sent.popleft())
        except Exception:
            # Their outcomes first (an error is the one already raised, or moot): a purge
            # sent while they are on the wire could be answered before they are stored.
            await asyncio.gather(*sent, return_exceptions=True)
            raise
        except BaseException:
            for future in sent:
                future.cancel()
            raise
        return total, count, digest.digest()

    async def _purge(self, subject: str) -> None:
        """Drops chunks no meta message names; best effort (the store may be what failed)."""
        with contextlib.suppress(StoreError), mapped(f"{self.name}: purge"):
            await self._js.purge_stream(self.stream, subject=subject)

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self.name}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    async def get(self, name: str) -> bytes:
        """The object's bytes; `NotFound` when absent."""
        with mapped(f"{self.name}: get"):
            result = await self._store.get(name)
        return result.data or b""

    async def get_into(self, name: str, fh: BinaryIO) -> None:
        """Writes the object's bytes into ``fh`` chunk by chunk (never whole in memory);
        `NotFound` when absent."""
        with mapped(f"{self.name}: get"):
            await self._store.get(name, writeinto=fh)  # type: ignore[arg-type]  # as put: narrow types
