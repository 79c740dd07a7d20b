"""Parity evidence and the flip gate: routing policy, kept out of the HTTP handlers.

Evidence is per *window*. A window starts when an interface -- or one of its facility
overrides -- enters shadow; `tracker` sees every route change (this instance's flips and
other instances' through the KV watch) and starts the window at once, so samples from an
earlier stint in shadow, before a flip to modern and a rollback, never count toward the gate.

Evidence survives restarts: each interface's window and counts live in the KV bucket
`ficus-parity` (key = interface), saved every few seconds and restored at start, so a restart
in the middle of a shadow period does not send the migration team back to zero samples. A
saved window is continued only when the route is still the one it was gathered under (same
revision); a route changed while this instance was stopped starts a new window.
"""

from __future__ import annotations

import asyncio
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


async def restore(kv: Bucket, stats: dict[str, InterfaceStats], routes: RouteTable,
                  saved_changes: dict[str, int]) -> None:
    """Seeds each interface's parity with what was saved, then follows the route changes."""
    for name, st in stats.items():
        entry = await kv.get(name)
        saved = json.loads(entry.value) if entry is not None and entry.value else None
        kept = restore_one(st.parity, saved, routes.get(name))
        saved_changes[name] = st.parity.changes if kept else -1  # -1: saved at the next round
    routes.on_change.append(tracker(stats))


async def save(kv: Bucket, stats: dict[str, InterfaceStats], saved: dict[str, int]) -> None:
    """Saves the parity of interfaces that changed (a sample, a window) since `saved`."""
    for name, st in stats.items():
        if saved.get(name) == st.parity.changes:
            continue
        try:
            await kv.put(name, json.dumps(st.parity.saved_form()).encode())
            saved[name] = st.parity.changes
        except StoreError as exc:
            log.debug("parity of %s not saved: %s", name, exc.reason)


async def keep_saved(kv: Bucket, stats: dict[str, InterfaceStats], saved: dict[str, int],
                     every: float = 5.0) -> None:
    """Saves changed parity every few seconds, until cancelled."""
    while True:
        await asyncio.sleep(every)
        await save(kv, stats, saved)


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
