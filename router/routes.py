"""The routing table: one entry per interface in the KV bucket `ficus-routes`.

The config's `route` only seeds a missing entry; after that the bucket is the truth, so a
flip survives restarts and every instance sees it. Each instance keeps an in-memory copy
(read on the hot path, no I/O), updated by a KV watch and, as a safety net across NATS
outages where a watch can go quiet, by a periodic re-read. Every flip is also appended to
the audit stream, which is the history `ficus routes history` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from router import names
from router.config import Mode
from router.store import Bucket, Outgoing, RevisionConflict, Store, StoreError, StoreUnavailable

log = logging.getLogger("ficus.routes")


class RouteError(Exception):
    """A flip that cannot be done; `status` is the HTTP status the API answers with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Route(BaseModel):
    """One interface's route: its mode and per-facility overrides (canary)."""

    model_config = ConfigDict(extra="ignore")

    mode: Mode
    facilities: dict[str, Mode] = {}
    reason: str = ""
    actor: str = ""
    changed_at: str = ""
    revision: int = 0

    def mode_for(self, facility: str | None) -> Mode:
        if facility and self.facilities:
            return self.facilities.get(facility, self.mode)
        return self.mode


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RouteTable:
    """The live routing table of the interfaces this instance runs."""

    def __init__(self, store: Store, defaults: dict[str, Mode], refresh_seconds: float = 3.0) -> None:
        self.store = store
        self.defaults = dict(defaults)
        self.refresh_seconds = refresh_seconds
        self._routes: dict[str, Route] = {
            name: Route(mode=mode, reason="config", actor="config") for name, mode in defaults.items()
        }
        self._kv: Bucket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.on_change: list[Callable[[str, Route, Route], None]] = []
        """Called with (interface, before, after) for every newer route seen (a flip here or
        elsewhere), synchronously: router/parity.py starts a parity window before the next unit."""

    def mode_for(self, interface: str, facility: str | None = None) -> Mode:
        """The mode for a unit of an interface (and facility); hot path, no I/O."""
        return self._routes[interface].mode_for(facility)

    def get(self, interface: str) -> Route:
        return self._routes[interface]

    def all(self) -> dict[str, Route]:
        return dict(self._routes)

    async def start(self) -> None:
        """Seeds missing entries from the config, loads the table, starts watching."""
        self._kv = await self.store.kv(names.KV_ROUTES)
        for name, mode in self.defaults.items():
            seed = Route(mode=mode, reason="seeded from config", actor="config", changed_at=_now())
            with contextlib.suppress(RevisionConflict):  # seeded before (by us or another instance)
                await self._kv.create(name, seed.model_dump_json().encode())
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._watch(), name="routes-watch"),
            asyncio.create_task(self._refresh_loop(), name="routes-refresh"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _apply(self, key: str, value: bytes | None, revision: int) -> None:
        if key not in self._routes or value is None:
            return
        try:
            route = Route.model_validate_json(value)
        except ValueError:
            log.error("routes: entry %s in %s is not a route; ignored", key, names.KV_ROUTES)
            return
        current = self._routes[key]
        if revision >= current.revision:
            if route.mode != current.mode or route.facilities != current.facilities:
                log.info("routes: %s is now %s %s", key, route.mode, route.facilities or "")
            self._routes[key] = route.model_copy(update={"revision": revision})
            if revision != current.revision:
                for listener in self.on_change:
                    listener(key, current, self._routes[key])

    async def refresh(self) -> None:
        """Re-reads every entry of the interfaces we run."""
        assert self._kv is not None
        for name in self.defaults:
            entry = await self._kv.get(name)
            if entry is not None:
                self._apply(name, entry.value, entry.revision)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except StoreError as exc:
                log.debug("routes: refresh failed: %s", exc.reason)

    async def _watch(self) -> None:
        assert self._kv is not None
        while True:
            try:
                async for entry in self._kv.watch():
                    # An empty value is a delete: nothing to apply.
                    self._apply(entry.key, entry.value or None, entry.revision)
            except StoreError as exc:
                log.debug("routes: watch interrupted: %s", exc.reason)
            await asyncio.sleep(1)

    async def set(
        self,
        interface: str,
        mode: Mode,
        *,
        reason: str,
        actor: str,
        facility: str | None = None,
        keep_facilities: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Route:
        """Writes a flip (optimistic concurrency on the KV revision) and audits it.

        A flip of the whole interface (no `facility`) takes every facility with it: the one-command
        rollback must not leave a canary facility on modern. `keep_facilities` keeps the overrides;
        the audit record lists the ones cleared.
        """
        if interface not in self._routes:
            raise RouteError(f"unknown interface {interface!r}", 404)
        if not reason.strip():
            raise RouteError("a flip needs a reason")
        assert self._kv is not None
        try:
            entry = await self._kv.get(interface)
        except StoreError as exc:
            raise RouteError(f"routing table unavailable: {_kind(exc)}", 503) from exc
        if entry is None:
            current, last = self._routes[interface], 0
        else:
            current = Route.model_validate_json(entry.value or b"{}")
            last = entry.revision
        facilities = dict(current.facilities)
        base_mode = current.mode
        cleared: dict[str, Mode] = {}
        if facility:
            if mode == base_mode:
                facilities.pop(facility, None)
            else:
                facilities[facility] = mode
        else:
            base_mode = mode
            if not keep_facilities:
                cleared, facilities = facilities, {}
        route = Route(mode=base_mode, facilities=facilities, reason=reason, actor=actor,
                      changed_at=_now())
        try:
            revision = await self._kv.update(interface, route.model_dump_json().encode(), last=last)
        except RevisionConflict as exc:
            raise RouteError("the route changed meanwhile; read it again and retry", 409) from exc
        except StoreError as exc:
            raise RouteError(f"routing table unavailable: {_kind(exc)}", 503) from exc
        self._apply(interface, route.model_dump_json().encode(), revision)
        # A facility flip is audited as that facility's change: from the mode it had in effect
        # (its override, else the interface's), so undoing an override reads `legacy -> shadow`.
        previous = current.mode_for(facility) if facility else current.mode
        audit = {
            "interface": interface, "from": previous, "from_facilities": current.facilities,
            "to": mode, "facility": facility, "cleared_facilities": cleared, "reason": reason, "actor": actor,
            "at": route.changed_at, "revision": revision, **(extra or {}),
        }
        try:
            await self.store.publish([Outgoing(
                names.route_audit_subject(interface), json.dumps(audit).encode(),
                msg_id=f"route-{interface}-{revision}",
            )])
        except StoreUnavailable:
            log.error("routes: flip of %s applied but its audit record was not stored", interface)
        return self._routes[interface]

    async def history(self, interface: str, limit: int = 100) -> list[dict[str, Any]]:
        """The audit trail of an interface's flips, oldest first."""
        try:
            rows = await self.store.read(names.STREAM_AUDIT, names.route_audit_subject(interface), 0, 10_000)
        except StoreError as exc:
            raise RouteError(f"audit stream unavailable: {_kind(exc)}", 503) from exc
        out = [json.loads(data) for _, data, _ in rows]
        return out[-limit:]


def _kind(exc: StoreError) -> str:
    # The nats-py error's class name, as these messages said before the store had its own errors.
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else type(exc).__name__


def modes(values: Iterable[str]) -> list[Mode]:
    """Validates mode names from user input."""
    allowed: tuple[Mode, ...] = ("legacy", "shadow", "modern")
    out: list[Mode] = []
    for value in values:
        if value not in allowed:
            raise RouteError(f"mode must be one of {', '.join(allowed)}; got {value!r}")
        out.append(value)
    return out
