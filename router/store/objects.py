"""An object store bucket (whole raw files), Ficus types and errors only."""

from __future__ import annotations

from typing import BinaryIO

import nats.js.errors
from nats.js.object_store import ObjectStore

from router.store.errors import mapped


class Objects:
    """One object store bucket; every method raises only `router.store` errors."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        self._store = store
        self.name = name

    async def has(self, name: str) -> bool:
        """Whether an object of that name is stored (and not deleted)."""
        with mapped(f"{self.name}: info"):
            try:
                await self._store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                return False
        return True

    async def put(self, name: str, data: bytes | BinaryIO) -> None:
        """Stores `data` (bytes or a binary file read in chunks) under `name`."""
        with mapped(f"{self.name}: put"):
            await self._store.put(name, data)  # type: ignore[arg-type]  # nats-py types file objects narrowly

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
