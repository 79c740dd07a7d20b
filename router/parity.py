"""Parity evidence and the flip gate: routing policy, kept out of the HTTP handlers.

Evidence is per *window*. A window starts when an interface -- or one of its facility
overrides -- enters shadow; `tracker` sees every route change (this instance's flips and
other instances' through the KV watch) and starts the window at once, so samples from an
earlier stint in shadow, before a flip to modern and a rollback, never count toward the gate.

Evidence survives restarts and is shared by the instances of a cluster: each instance saves
its window and counts in the KV bucket `ficus-parity` under its own key (`IFACE.INSTANCE`)
every few seconds, restores its own key at start, and the gate, the API and the console judge
the window summed over every instance that gathered samples in it (:class:`Shared`). Senders
behind a load balancer reach any instance: evidence of one instance alone would be part of the
traffic, and one key for all would keep only the last writer's counts. A saved window is
continued only when the route is still the one it was gathered under (same revision); a route
changed while this instance was stopped starts a new window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from router.config import InterfaceConfig, Mode
from router.routes import Route, RouteTable
from router.stats import InterfaceStats, ParityStats
from router.store import Bucket, StoreError

log = logging.getLogger("ficus.parity")
KV_PARITY = "ficus-parity"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def entered_shadow(before: Route, after: Route) -> list[str]:
    """What a route change put into shadow: the interface, and/or facilities (by name)."""
    entered = []
    interface = after.mode == "shadow" and before.mode != "shadow"
    if interface:
        entered.append(f"interface: {before.mode} -> shadow")
    for facility in sorted(set(before.facilities) | set(after.facilities)):
        was, now = before.mode_for(facility), after.mode_for(facility)
        # A facility that follows the interface into shadow is already said by "interface".
        if now == "shadow" and was != "shadow" and (facility in after.facilities or not interface):
            entered.append(f"facility {facility}: {was} -> shadow")
    return entered


def _has_shadow(route: Route) -> bool:
    return route.mode == "shadow" or "shadow" in route.facilities.values()


def _flip(route: Route, entered: list[str]) -> dict[str, Any]:
    return {"revision": route.revision, "at": route.changed_at or _now(), "actor": route.actor, "entered": entered}


def tracker(stats: dict[str, InterfaceStats] | dict[str, ParityStats]) -> Callable[[str, Route, Route], None]:
    """A route-change listener (RouteTable.on_change) that starts a window on entering shadow."""

    def changed(name: str, before: Route, after: Route) -> None:
        found = stats.get(name)
        if found is None:
            return
        parity = found.parity if isinstance(found, InterfaceStats) else found
        entered = entered_shadow(before, after)
        if entered:
            parity.start_window(after.changed_at or _now(), _flip(after, entered))
            log.info("parity of %s: new window (%s)", name, "; ".join(entered))
        if after.revision != parity.route_revision:
            parity.route_revision = after.revision
            parity.changes += 1

    return changed


def restore_one(parity: ParityStats, saved: dict[str, Any] | None, route: Route) -> bool:
    """Seeds one interface's parity from what was saved, if it was gathered under this route.

    Returns True when the saved window is continued as it was (nothing new to save).
    """
    if saved is not None and "window" in saved and int(saved.get("route_revision", -1)) == route.revision:
        parity.restore(saved)
        return True
    previous = None
    if saved is not None:  # shown as the previous window; it cannot count toward this route's gate
        old = ParityStats()
        old.restore(saved)
        previous = {**old.window(), "ended_at": None, "note": "saved before a restart; the route changed since"}
    if _has_shadow(route):
        why = "route changed while Ficus was stopped" if saved is not None else "route as found at start"
        parity.start_window(route.changed_at or _now(), _flip(route, [f"{why}: {_describe(route)}"]))
    parity.previous_window = previous
    parity.route_revision = route.revision
    return False


def _describe(route: Route) -> str:
    facilities = ", ".join(f"{f} {m}" for f, m in sorted(route.facilities.items()))
    return route.mode + (f" ({facilities})" if facilities else "")


def key_of(iface: str, instance: str) -> str:
    """An instance's key for an interface's window. Interface names are slugs (no dot), so
    ``IFACE.`` starts exactly the keys of that interface; ``:`` is not a KV key character."""
    return f"{iface}.{instance.replace(':', '=')}"


def _same_window(own: ParityStats, saved: dict[str, Any]) -> bool:
    """True when `saved` (another instance's form) holds samples of `own`'s current window: the
    same route change started both (revision and time), and it saw the route `own` sees."""
    window = saved.get("window") or {}
    flip = window.get("flip") or {}
    own_flip = own.window_flip or {}
    return (own.window_started_at is not None and window.get("started_at") == own.window_started_at
            and flip.get("revision") == own_flip.get("revision")
            and int(saved.get("route_revision", -1)) == own.route_revision)


def merged(own: ParityStats, others: dict[str, dict[str, Any]], iface: str, instance: str) -> ParityStats:
    """`own`'s window with the samples other instances gathered in the same window added
    (`others`: KV key -> saved form); `instances` names each contributor's samples. Windows of
    other instances that do not match (an older window, a route this instance has moved past)
    are left out: never counted."""
    out = ParityStats(samples=own.samples, agree=own.agree, disagree=own.disagree,
                      window_started_at=own.window_started_at, window_flip=own.window_flip,
                      previous_window=own.previous_window, route_revision=own.route_revision)
    recent = list(own.recent)
    out.instances = {instance: own.samples}
    for key, saved in sorted(others.items()):
        if not _same_window(own, saved):
            continue
        name = "(saved before instances had keys)" if key == iface else key.removeprefix(f"{iface}.")
        out.samples += int(saved.get("samples", 0))
        out.agree += int(saved.get("agree", 0))
        out.disagree += int(saved.get("disagree", 0))
        recent.extend(saved.get("recent_disagreements", []))
        out.instances[name] = int(saved.get("samples", 0))
    out.recent.extend(sorted(recent, key=lambda r: float(r.get("at", 0.0))))
    return out


class Shared:
    """The parity windows of every instance: this one's saved under its own key, the others'
    read back when a window is judged or shown."""

    def __init__(self, kv: Bucket, stats: dict[str, InterfaceStats], instance: str) -> None:
        self.kv = kv
        self.stats = stats
        self.instance = instance
        self.saved: dict[str, int] = {}
        """Interface -> the `changes` count last saved (-1: save at the next round)."""
        self.routes: RouteTable | None = None
        """Set by :meth:`restore`: the others' windows are read back only while something is in shadow."""
        self.peers: dict[str, dict[str, dict[str, Any]]] = {}
        """Interface -> the other instances' windows as last read (:meth:`refresh`, :meth:`view`)."""

    async def others(self, iface: str, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """KV key -> what the other instances saved for `iface` (a key saved before instances had
        their own, plain ``IFACE``, counts as one more instance); `keys`: the bucket's, listed
        already (else listed here)."""
        own = key_of(iface, self.instance)
        found: dict[str, dict[str, Any]] = {}
        for key in keys if keys is not None else await self.kv.keys():
            if key != own and (key == iface or key.startswith(f"{iface}.")):
                entry = await self.kv.get(key)
                if entry is not None and entry.value:
                    found[key] = json.loads(entry.value)
        return found

    async def view(self, iface: str) -> ParityStats:
        """The interface's current window over every instance (this one's alone when NATS cannot
        be read: the gate then judges fewer samples, never more). Keys of instances that have
        not seen the current route and hold another window (stopped, or renamed: the default
        name changes at each start) are removed: they can never count again."""
        own = self.stats[iface].parity
        try:
            others = await self.others(iface)
        except StoreError as exc:
            log.warning("parity of %s: other instances' windows not read (%s); judged on this one's",
                        iface, exc.reason)
            return merged(own, {}, iface, self.instance)
        for key, saved in others.items():
            if not _same_window(own, saved) and int(saved.get("route_revision", -1)) < own.route_revision:
                with contextlib.suppress(StoreError):
                    await self.kv.delete(key)
        self.peers[iface] = others
        return merged(own, others, iface, self.instance)

    def latest(self, iface: str) -> ParityStats:
        """The window over every instance without reading NATS: this instance's samples as they
        are now, the others' as last read (every save round, ``keep_saved``): what the console's
        overview and the `parity` alerts show and judge, at most a round behind the gate's
        :meth:`view`."""
        return merged(self.stats[iface].parity, self.peers.get(iface, {}), iface, self.instance)

    async def refresh(self) -> None:
        """Reads the other instances' windows of every interface (the bucket's keys listed once)."""
        keys = await self.kv.keys()
        for name in self.stats:
            self.peers[name] = await self.others(name, keys)

    async def restore(self, routes: RouteTable) -> None:
        """Seeds each interface's parity with what this instance saved, then follows the route
        changes. With no key of its own (a first start, or a new instance name), the window is
        the one the other instances gather in, when they saw the current route: this instance's
        samples then add to theirs."""
        self.routes = routes
        keys: list[str] | None = None  # the bucket's keys, listed once for every interface
        for name, st in self.stats.items():
            entry = await self.kv.get(key_of(name, self.instance))
            saved = json.loads(entry.value) if entry is not None and entry.value else None
            route = routes.get(name)
            if saved is None and _has_shadow(route):
                keys = keys if keys is not None else await self.kv.keys()
                saved = _peer_window(await self.others(name, keys), route)
            kept = restore_one(st.parity, saved, route)
            self.saved[name] = st.parity.changes if kept else -1
        routes.on_change.append(tracker(self.stats))

    async def save(self) -> None:
        """Saves the parity of interfaces that changed (a sample, a window) since the last save."""
        for name, st in self.stats.items():
            if self.saved.get(name) == st.parity.changes:
                continue
            try:
                await self.kv.put(key_of(name, self.instance), json.dumps(st.parity.saved_form()).encode())
                self.saved[name] = st.parity.changes
            except StoreError as exc:
                log.debug("parity of %s not saved: %s", name, exc.reason)

    async def keep_saved(self, every: float = 5.0) -> None:
        """Saves changed parity every few seconds and reads the other instances' back, until cancelled."""
        while True:
            await asyncio.sleep(every)
            await self.save()
            routes = self.routes
            if routes is not None and not any(_has_shadow(routes.get(n)) for n in self.stats):
                self.peers.clear()  # nothing gathers samples: no window of another instance to show
                continue
            try:
                await self.refresh()
            except StoreError as exc:
                log.debug("parity of other instances not read: %s", exc.reason)


def _peer_window(others: dict[str, dict[str, Any]], route: Route) -> dict[str, Any] | None:
    """The window other instances gather in under `route`, with no samples of this instance's:
    what a newly started instance continues (None when no other saw this route)."""
    for saved in others.values():
        window = saved.get("window") or {}
        if window.get("started_at") and int(saved.get("route_revision", -1)) == route.revision:
            return {"window": window, "route_revision": route.revision, "previous_window": None}
    return None


@dataclass(frozen=True)
class Verdict:
    """The gate's answer to a flip: why it is refused (None: allowed) and the window it judged."""

    refusal: str | None
    window: dict[str, Any]


def gate(cfg: InterfaceConfig, route: Route, parity: ParityStats, mode: Mode, facility: str | None) -> Verdict:
    """Judges a flip of `cfg`'s interface (or one facility) against the current parity window.

    Only a flip to modern from elsewhere is judged: the interface (facility) must be in shadow,
    and the current window must hold `parity_min_samples` samples agreeing at `parity_gate`.
    """
    window = parity.window()
    current = route.mode_for(facility)
    if mode != "modern" or current == "modern":
        return Verdict(None, window)
    if current != "shadow":
        return Verdict(f"{cfg.name} is in {current}: run it in shadow first to gather parity (or force)", window)
    if parity.window_started_at:
        revision = "" if window["revision"] is None else f" (route revision {window['revision']})"
        named = f"the parity window started {parity.window_started_at}{revision}"
    else:
        named = "the parity window"
    if parity.samples < cfg.parity_min_samples:
        return Verdict(f"{named} has {parity.samples} samples, fewer than the {cfg.parity_min_samples} "
                       "needed (or force)", window)
    ratio = parity.ratio or 0.0
    if ratio < cfg.parity_gate:
        return Verdict(f"parity {ratio:.4f} in {named} ({parity.samples} samples) is below the gate "
                       f"{cfg.parity_gate} (or force)", window)
    return Verdict(None, window)
