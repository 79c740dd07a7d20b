"""Parity evidence survives restarts: each interface's agreement counts live in the KV bucket
`ficus-parity` (key = interface), saved every few seconds and restored at start, so a restart
in the middle of a shadow period does not send the migration team back to zero samples."""

from __future__ import annotations

import asyncio
import json
import logging

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from router.stats import InterfaceStats

log = logging.getLogger("ficus.parity")
KV_PARITY = "ficus-parity"


async def restore(kv: KeyValue, stats: dict[str, InterfaceStats]) -> None:
    """Seeds each interface's parity with what was saved."""
    for name, st in stats.items():
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            st.parity.restore(json.loads(entry.value))


async def save(kv: KeyValue, stats: dict[str, InterfaceStats], saved: dict[str, int]) -> None:
    """Saves the parity of interfaces whose sample count changed since `saved`."""
    for name, st in stats.items():
        if saved.get(name) == st.parity.samples:
            continue
        try:
            await kv.put(name, json.dumps(st.parity.as_dict()).encode())
            saved[name] = st.parity.samples
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("parity of %s not saved: %s", name, type(exc).__name__)


async def keep_saved(kv: KeyValue, stats: dict[str, InterfaceStats], saved: dict[str, int],
                     every: float = 5.0) -> None:
    """Saves changed parity counts every few seconds, until cancelled."""
    while True:
        await asyncio.sleep(every)
        await save(kv, stats, saved)
