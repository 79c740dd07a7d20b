"""The instance registry: which Ficus instances share this NATS, what each holds, how each is.

Each instance keeps one entry in KV `ficus-instances` under its `cluster.instance` name,
written at start and every `cluster.renew_seconds`: host, pid, version, when it started and
when it was last seen, its API address, its readiness with the problems, whether it is
draining, the leases it holds and the interfaces it runs. A clean stop deletes the entry. An
instance that dies (kill -9, a host that loses power) leaves its entry behind: readers show
it `stale` once it has not been refreshed within `cluster.lease_seconds`, the bound after
which its leases may be taken over, and the bucket itself drops an entry not written for
STALE_KEPT_SECONDS, so instances gone for good do not pile up.

Nothing in processing depends on the registry: an entry that cannot be written (NATS away)
only makes this instance look stale to the others, it never stops intake. Times are Unix
seconds from each writer's clock, so the hosts of a cluster keep their clocks in step (NTP),
as the leases need anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router import names
from router.config import ClusterConfig
from router.store import Bucket, Store, StoreError

log = logging.getLogger("ficus.instances")
STALE_KEPT_SECONDS = 86400.0
"""An entry not written for this long (its instance stopped without a clean stop a day ago) is
removed by the bucket (its TTL)."""
MAX_PROBLEMS = 50
"""Readiness problems kept in an entry at most (each is already one bounded line)."""
Health = Literal["ready", "not ready", "stale"]


class InstanceRecord(BaseModel):
    """One entry of the registry as stored (JSON). Keys another Ficus version adds are ignored,
    so instances of two versions read each other's entries during a rolling upgrade."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instance: str
    host: str = ""
    pid: int = 0
    version: str = ""
    started_at: float = 0.0
    seen_at: float = 0.0
    api: str | None = None
    ready: bool = False
    problems: list[str] = Field(default_factory=list)
    draining: bool = False
    leases: list[str] = Field(default_factory=list)
    interfaces: list[str] = Field(default_factory=list)
    received: int = 0
    """Units this instance received since it started, all interfaces together (with `workers`,
    how the kernel spread the MLLP connections)."""


def health(record: InstanceRecord, lease_seconds: float, now: float) -> Health:
    """`stale` when not refreshed within `lease_seconds`, else `ready` or `not ready`."""
    if now - record.seen_at > lease_seconds:
        return "stale"
    return "ready" if record.ready else "not ready"


def view(record: InstanceRecord, lease_seconds: float, now: float) -> dict[str, Any]:
    """An entry as `GET /api/v1/instances` lists it: the record, its health and its age."""
    return {**record.model_dump(), "health": health(record, lease_seconds, now),
            "seen_seconds_ago": round(max(0.0, now - record.seen_at), 1)}


async def bucket_of(store: Store) -> Bucket:
    """The registry's bucket (created with the config's replicas on first use)."""
    return await store.kv(names.KV_INSTANCES, history=1, max_age=STALE_KEPT_SECONDS)


async def list_instances(store: Store, lease_seconds: float, now: float | None = None) -> list[dict[str, Any]]:
    """Every instance of the registry by name, each with its health (see `view`).

    An entry that does not parse (written by something else) is left out and logged by its key.
    Raises `StoreError` when NATS is away.
    """
    bucket = await bucket_of(store)
    out = []
    for key in await bucket.keys():
        entry = await bucket.get(key)
        if entry is None:  # deleted between the listing and the read: a clean stop
            continue
        try:
            record = InstanceRecord.model_validate_json(entry.value)
        except ValidationError:
            log.warning("instances: entry %s is not an instance record; left out", key[:100])
            continue
        out.append(view(record, lease_seconds, time.time() if now is None else now))
    return out


def _version() -> str:
    try:
        return metadata.version("ficus")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _no_leases() -> list[str]:
    return []


def _nothing_received() -> int:
    return 0


def _not_draining() -> bool:
    return False


class Registry:
    """This instance's entry in `bucket` (see `bucket_of`): written at `start`, refreshed every
    `renew_seconds`, deleted at `stop`.

    `ready` gives the readiness as /readyz does; `held` the interfaces whose lease this
    instance holds now (router/leases.py); `draining` whether it is stopping.
    """

    def __init__(self, bucket: Bucket, cfg: ClusterConfig, *, api: str | None, interfaces: Sequence[str],
                 started_at: float, ready: Callable[[], tuple[bool, list[str]]],
                 held: Callable[[], list[str]] = _no_leases, draining: Callable[[], bool] = _not_draining,
                 received: Callable[[], int] = _nothing_received) -> None:
        self.cfg = cfg
        self.name = cfg.instance
        self._interfaces = list(interfaces)
        self._started_at = started_at
        self._ready = ready
        self._held = held
        self._draining = draining
        self._received = received
        self._api = api
        self._bucket = bucket
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.writes = 0
        """Entries written (tests, diagnostics)."""

    def record(self) -> InstanceRecord:
        """The entry as it is now."""
        ok, problems = self._ready()
        draining = self._draining()
        return InstanceRecord(
            instance=self.name, host=socket.gethostname(), pid=os.getpid(), version=_version(),
            started_at=self._started_at, seen_at=time.time(), api=self._api, ready=ok,
            problems=problems[:MAX_PROBLEMS], draining=draining, leases=sorted(self._held()),
            interfaces=self._interfaces, received=self._received())

    async def start(self) -> None:
        """Writes the entry (raises `StoreError` if it cannot) and keeps it fresh from then on."""
        await self._warn_if_taken(self._bucket)
        await self._bucket.put(self.name, self.record().model_dump_json().encode())
        self.writes += 1
        self._task = asyncio.create_task(self._keep(), name="instance-registry")

    async def _warn_if_taken(self, bucket: Bucket) -> None:
        """Two live instances under one name would be one owner to the leases: say so loudly.

        Only a warning: the entry may be this instance's own, left by a kill -9 a moment ago
        (a service manager restarts at once, under the same configured name).
        """
        entry = await bucket.get(self.name)
        if entry is None:
            return
        try:
            other = InstanceRecord.model_validate_json(entry.value)
        except ValidationError:
            return
        if time.time() - other.seen_at <= self.cfg.lease_seconds and (other.host, other.pid) != (
                socket.gethostname(), os.getpid()):
            log.warning("instances: %s was seen %.0fs ago on host %s pid %d; if that instance still runs, give "
                        "each instance its own cluster.instance", self.name, time.time() - other.seen_at,
                        other.host[:100], other.pid)

    async def write(self) -> bool:
        """Writes the entry now; False (logged once per outage) when NATS does not take it."""
        try:
            await self._bucket.put(self.name, self.record().model_dump_json().encode())
        except StoreError as exc:
            if not self._failing:
                log.warning("instances: entry %s not refreshed (%s); the others see it stale after %gs",
                            self.name, exc.reason, self.cfg.lease_seconds)
            self._failing = True
            return False
        if self._failing:
            log.info("instances: entry %s refreshed again", self.name)
        self._failing = False
        self.writes += 1
        return True

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.renew_seconds)
            await self.write()

    async def stop(self) -> None:
        """Stops refreshing and deletes the entry (a clean stop: the instance leaves the list)."""
        if self._task is not None:
            self._task.cancel()
            # Waited for: a write still in flight after the delete would bring the entry back.
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self._bucket.delete(self.name)
        except StoreError as exc:
            log.warning("instances: entry %s not removed (%s); shown stale after %gs", self.name, exc.reason,
                        self.cfg.lease_seconds)


class Siblings:
    """The other workers of this `ficus run` (`workers` > 1), as the instance registry shows them:
    what worker 1's `/readyz` adds to its own problems, so it answers for the whole host.

    A sibling that is up (its entry fresh) and not ready is a problem: the kernel still hands it
    MLLP connections. One that is gone (no entry, or stale) is not: its listening socket died
    with it, so connections go to the workers that run, and the supervisor restarts it. One
    draining is not either: it closes its listeners and the others take its connections.
    """

    def __init__(self, bucket: Bucket, names_: Sequence[str], lease_seconds: float, renew_seconds: float) -> None:
        self._bucket = bucket
        self.names = list(names_)
        self._lease_seconds = lease_seconds
        self._renew_seconds = renew_seconds
        self._problems: list[str] = []

    def problems(self) -> list[str]:
        """`worker <name>: <problem>` for each problem of a sibling up and not ready (at most
        `renew_seconds` old, plus the sibling's own refresh interval)."""
        return list(self._problems)

    async def refresh(self) -> None:
        found: list[str] = []
        now = time.time()
        for name in self.names:
            try:
                entry = await self._bucket.get(name)
            except StoreError:
                continue  # NATS away: this worker's own readiness says so
            if entry is None:
                continue
            try:
                record = InstanceRecord.model_validate_json(entry.value)
            except ValidationError:
                continue
            if record.draining or health(record, self._lease_seconds, now) != "not ready":
                continue
            found.extend(f"worker {name}: {problem}" for problem in record.problems or ["not ready"])
        self._problems = found[:MAX_PROBLEMS]

    async def keep(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._renew_seconds)
