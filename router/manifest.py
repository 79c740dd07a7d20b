"""The file manifest: one KV entry per file seen, so each file is processed exactly once.

Two keys per file: by name (`<iface>.n.<hash of name, size, mtime>`) so a file still in
place after a restart is recognised before it is even downloaded, and by content
(`<iface>.c.<sha256>`) so the same bytes under another name are recognised too. The
content entry also carries the resume point (`next_record`): records below it have all
their events acknowledged by JetStream, so a crash in the middle of a file resumes there,
and the records re-published after it are dropped by their `Nats-Msg-Id`. A file skipped
as a duplicate of another's content is written under its name only: the content entry stays
the file that was read (its resume point counts the units the duplicate repeats). Replay
lists the content entries of an interface (:meth:`Manifest.contents`): one per content read.

Fenced (a `fence`, the interface's lease: router/leases.py): each write first checks the
lease is still held, stores the writer's `epoch` in the entry, and is a compare-and-set on
the revision this instance last read or wrote for that key; a key not known here is read
first, and an entry of a later epoch is never written over (`LeaseLost`). A former owner
that wakes up after a pause therefore cannot write over its successor's entries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Literal

from router.leases import Fence, LeaseLost
from router.store import Bucket, RevisionConflict

READ_AT_ONCE = 64
"""Entries read concurrently when listing (one KV request each)."""
REVISIONS_KEPT = 4096
"""Keys whose last revision a fenced manifest remembers (older ones are read again before a write)."""
State = Literal["processing", "done", "duplicate", "failed"]
"""`failed`: set aside too long and dead-lettered; a file of that name, size and mtime is left
alone (touch or rename it to have it taken again, from its resume point if it was read)."""


@dataclass
class FileEntry:
    """What the manifest knows of one file."""

    interface: str
    name: str
    size: int
    mtime: float
    sha256: str = ""
    state: State = "processing"
    next_record: int = 0
    events: int = 0
    dead_letters: int = 0
    delivered: bool = False
    acked: bool = False
    """An HL7 file's batch ACK is written (ack_file)."""
    outcome: str = ""
    raw: str = ""
    updated_at: float = field(default_factory=time.time)
    epoch: int = 0
    """The lease epoch of the instance that wrote it (0: not fenced)."""

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> FileEntry:
        return cls(**json.loads(data))


def name_key(interface: str, name: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256(f"{name}\0{size}\0{int(mtime)}".encode()).hexdigest()[:40]
    return f"{interface}.n.{digest}"


def content_key(interface: str, sha256: str) -> str:
    return f"{interface}.c.{sha256}"


class Manifest:
    """Reads and writes file entries in the `ficus-files` KV bucket."""

    def __init__(self, kv: Bucket, fence: Fence | None = None) -> None:
        self.kv = kv
        self.fence = fence
        self._revisions: OrderedDict[str, int] = OrderedDict()

    async def get(self, key: str) -> FileEntry | None:
        entry = await self.kv.get(key)
        if self.fence is not None:
            self._remember(key, entry.revision if entry is not None else 0)
        return FileEntry.decode(entry.value) if entry is not None and entry.value else None

    async def put(self, key: str, entry: FileEntry) -> None:
        entry.updated_at = time.time()
        if self.fence is None:
            await self.kv.put(key, entry.encode())
            return
        last = self._revisions.get(key)
        if last is None:
            stored = await self.kv.get(key)
            self._refuse_later(key, stored.value if stored is not None else b"")
            last = stored.revision if stored is not None else 0
        self.fence.check()  # immediately before the write
        entry.epoch = self.fence.epoch
        try:
            if last == 0:
                revision = await self.kv.create(key, entry.encode())
            else:
                revision = await self.kv.update(key, entry.encode(), last=last)
        except RevisionConflict:
            self._revisions.pop(key, None)
            stored = await self.kv.get(key)
            self._refuse_later(key, stored.value if stored is not None else b"")
            raise  # a StoreError: the pass is retried from what is stored
        self._remember(key, revision)

    def _refuse_later(self, key: str, value: bytes) -> None:
        assert self.fence is not None
        if value and FileEntry.decode(value).epoch > self.fence.epoch:
            raise LeaseLost(f"manifest entry {key} written by a later owner")

    def _remember(self, key: str, revision: int) -> None:
        self._revisions[key] = revision
        self._revisions.move_to_end(key)
        while len(self._revisions) > REVISIONS_KEPT:
            self._revisions.popitem(last=False)

    async def by_name(self, interface: str, name: str, size: int, mtime: float) -> FileEntry | None:
        return await self.get(name_key(interface, name, size, mtime))

    async def by_content(self, interface: str, sha256: str) -> FileEntry | None:
        return await self.get(content_key(interface, sha256))

    async def record(self, entry: FileEntry) -> None:
        """Writes both keys of an entry (only the name key of a file never read: no content,
        or of a duplicate: the content entry is the file it repeats)."""
        if entry.sha256 and entry.state != "duplicate":
            await self.put(content_key(entry.interface, entry.sha256), entry)
        await self.put(name_key(entry.interface, entry.name, entry.size, entry.mtime), entry)

    async def contents(self, interface: str) -> list[FileEntry]:
        """The content entries of an interface: one per distinct content it read (or began to)."""
        prefix = content_key(interface, "")
        keys = [key for key in await self.kv.keys() if key.startswith(prefix)]
        out: list[FileEntry] = []
        for start in range(0, len(keys), READ_AT_ONCE):
            found = await asyncio.gather(*(self.get(key) for key in keys[start : start + READ_AT_ONCE]))
            out += [entry for entry in found if entry is not None]
        return out
