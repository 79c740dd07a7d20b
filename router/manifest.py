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
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from router.store import Bucket

READ_AT_ONCE = 64
"""Entries read concurrently when listing (one KV request each)."""
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

    def __init__(self, kv: Bucket) -> None:
        self.kv = kv

    async def get(self, key: str) -> FileEntry | None:
        entry = await self.kv.get(key)
        return FileEntry.decode(entry.value) if entry is not None and entry.value else None

    async def put(self, key: str, entry: FileEntry) -> None:
        entry.updated_at = time.time()
        await self.kv.put(key, entry.encode())

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
