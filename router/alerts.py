"""Alerts with business context (`[[alerts]]`): evaluated in Ficus from its own figures.

Every `alerting.evaluate_seconds` each rule is judged per *subject* (an interface, an
interface and facility, a sink, a certificate) into a `Finding`: firing, clear, or unknown
(not enough evidence to say either: a silent feed after a restart has no last message yet,
so it is neither resolved nor fired again). A finding names the business process, the
facilities and the money at risk (dead letters' amounts, the amounts of units the legacy
destination refused).

State is shared by every instance and survives restarts: one KV entry per rule and subject
in `ficus-alerts` (state, since, last_sent, repeats, the notice still to deliver). Every
notice is claimed by a compare-and-set write before it is sent, so of several instances
evaluating the same figures exactly one sends it, and an instance started again reads that
it was sent. A notice that could not be delivered stays pending in the entry (released by
its sender, or taken over once its claim is older than `alerting.claim_seconds`) and is tried
again at the next evaluation. NATS itself being away cannot be coordinated through NATS: that
kind is judged and notified by each instance on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from router import names
from router.alert_notify import Notice, NoticeKind, Notifier
from router.config import AlertRuleConfig, AlertScheduleConfig, FicusConfig, InterfaceConfig
from router.dlq import DeadLetter
from router.interfaces import RunningInterface
from router.routes import RouteTable
from router.sinks import Sink
from router.stats import ParityStats
from router.store import Bucket, RevisionConflict, Store, StoreError

log = logging.getLogger("ficus.alerts")
KV_ALERTS = "ficus-alerts"
_KEY_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_FACILITY = "-"


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def process_of(iface: InterfaceConfig) -> str:
    """The business process an interface's events belong to (rule `process` overrides it)."""
    flat = getattr(iface, "flat", None)
    target = flat.mapping.target if flat is not None else getattr(getattr(iface, "mapping", None), "target", None)
    if target == "labor_time":
        return "workforce"
    if target in ("supply_usage", "purchase_orders"):
        return "supply"
    return "claims-to-cash"  # HL7 ADT/DFT, 835 remittances, charges, the GL export


def subject_key(rule: str, subject: str) -> str:
    """The KV key of a rule's subject: readable when it is a plain name, else a short hash."""
    part = subject if _KEY_SAFE.match(subject) else "h" + hashlib.sha256(subject.encode()).hexdigest()[:16]
    return f"{rule}.{part}"


@dataclass
class Finding:
    """One rule's judgment of one subject: active True (firing), False (clear), None (unknown)."""

    active: bool | None
    summary: str = ""
    interfaces: list[str] = field(default_factory=list)
    facilities: list[str] = field(default_factory=list)
    money: Decimal | None = None


def in_schedule(schedule: AlertScheduleConfig | None, now: float) -> tuple[bool, float]:
    """Whether `now` is inside the schedule, and when today's window opened (epoch seconds)."""
    if schedule is None:
        return True, 0.0
    local = datetime.fromtimestamp(now, ZoneInfo(schedule.timezone))
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    sh, sm = (int(x) for x in schedule.start.split(":"))
    eh, em = (int(x) for x in schedule.end.split(":"))
    opened = midnight + timedelta(hours=sh, minutes=sm)
    closes = midnight + timedelta(hours=eh, minutes=em)
    return (day in schedule.days and opened <= local < closes), opened.timestamp()


@dataclass(frozen=True)
class Letter:
    seq: int
    at: float
    interface: str
    facility: str
    mode: str
    amount: Decimal | None


class DeadLetterWindow:
    """The dead letters stored within the longest rule window, read from the stream as they come.

    Filled from the stream at the first evaluation (so a restart sees the same window), then
    only what is new is read.
    """

    BATCH = 500

    def __init__(self, store: Store, seconds: float) -> None:
        self.store = store
        self.seconds = seconds
        self.letters: deque[Letter] = deque()
        self.last_seq = 0
        self.loaded = False

    async def refresh(self, now: float) -> None:
        if not self.loaded:
            since = datetime.fromtimestamp(now - self.seconds, UTC)
            page = await self.store.page(names.STREAM_DLQ, names.SUBJECTS_DLQ, start_time=since, limit=self.BATCH)
            self._add([(m.seq, m.data) for m in page])
            self.loaded = True
            if page:
                self.last_seq = page[-1].seq
        while True:
            rows = await self.store.read(names.STREAM_DLQ, names.SUBJECTS_DLQ, self.last_seq, self.BATCH)
            self._add([(seq, data) for seq, data, _ in rows])
            if len(rows) < self.BATCH:
                break
        while self.letters and self.letters[0].at < now - self.seconds:
            self.letters.popleft()

    def _add(self, rows: Sequence[tuple[int, bytes]]) -> None:
        for seq, data in rows:
            self.last_seq = max(self.last_seq, seq)
            try:
                letter = DeadLetter.model_validate_json(data)
                at = datetime.fromisoformat(letter.at).timestamp() if letter.at else time.time()
            except ValueError:
                continue  # not one of ours: nothing to alert on
            amount: Decimal | None = None
            if letter.amount:
                with contextlib.suppress(InvalidOperation):
                    amount = abs(Decimal(letter.amount))
            self.letters.append(Letter(seq, at, letter.interface, letter.facility or NO_FACILITY, letter.mode,
                                       amount))

    def within(self, seconds: float, now: float) -> list[Letter]:
        return [x for x in self.letters if x.at >= now - seconds]


@dataclass
class LegacyTrack:
    """What this instance saw of one interface's legacy deliveries since it started."""

    errors: int = 0
    forwarded: int = 0
    last_error_at: float | None = None
    last_ok_at: float | None = None


def cert_not_after(path: str) -> float | None:
    """When the (first) certificate in a PEM file expires; None when it cannot be read."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


def certificates(cfg: FicusConfig, interfaces: Sequence[str]) -> dict[str, str]:
    """Certificate files Ficus presents or pins, by subject (`<interface> listener`, `api`...)."""
    found: dict[str, str] = {}
    for iface in cfg.interfaces:
        if interfaces and iface.name not in interfaces:
            continue
        tls = getattr(iface, "tls", None)
        if tls is not None and getattr(tls, "cert", None):
            found[f"{iface.name} listener"] = tls.cert
        legacy = getattr(iface, "legacy_tls", None)
        if legacy is not None:
            if legacy.cert:
                found[f"{iface.name} legacy client"] = legacy.cert
            found[f"{iface.name} legacy ca"] = legacy.ca
    if not interfaces:
        if cfg.api.tls is not None:
            found["api"] = cfg.api.tls.cert
        if cfg.nats.tls is not None:
            if cfg.nats.tls.cert:
                found["nats client"] = cfg.nats.tls.cert
            found["nats ca"] = cfg.nats.tls.ca
    return found


class Alerts:
    """The evaluation loop's state: the figures it follows and the notices it sends."""

    def __init__(self, cfg: FicusConfig, store: Store, routes: RouteTable,
                 interfaces: Mapping[str, RunningInterface], sinks: Sequence[Sink], started_at: float,
                 parity_of: Callable[[str], ParityStats] | None = None) -> None:
        self.cfg = cfg
        self.parity_of = parity_of or (lambda name: interfaces[name].stats.parity)
        """An interface's parity window: every instance's (router/parity.py ``Shared.latest``), as the gate judges."""
        self.store = store
        self.routes = routes
        self.interfaces = interfaces
        self.sinks = {s.cfg.name: s for s in sinks}
        self.started_at = started_at
        self.notifier = Notifier(cfg.alerting)
        longest = max([r.window_minutes for r in cfg.alerts] or [60.0]) * 60
        self.letters = DeadLetterWindow(store, longest)
        self.legacy: dict[str, LegacyTrack] = {}
        self.nats_down_since: float | None = None
        self.local: dict[str, dict[str, Any]] = {}
        """nats_unavailable's state, per instance (the shared KV is where NATS is)."""
        self.kv: Bucket | None = None
        self.evaluations = 0
        self._store_failing = False

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Evaluates every rule each `evaluate_seconds`, until cancelled."""
        try:
            while True:
                try:
                    await self.evaluate_once()
                except Exception:  # a bug must not end alerting for the life of the process
                    log.exception("alerts: evaluation failed")
                await asyncio.sleep(self.cfg.alerting.evaluate_seconds)
        finally:
            await self.notifier.close()

    async def evaluate_once(self, now: float | None = None) -> None:
        """Judges every rule once; a rule the store cannot serve now is judged at the next round."""
        now = time.time() if now is None else now
        self._follow_counters(now)
        refreshed, failed = False, None
        for rule in self.cfg.alerts:
            if rule.kind == "nats_unavailable":
                await self._local_step(rule, self._nats(rule, now), now)
                continue
            try:
                if self.kv is None:
                    self.kv = await self.store.kv(KV_ALERTS, history=1)
                if rule.kind in ("dead_letters", "parity") and not refreshed:
                    await self.letters.refresh(now)
                    refreshed = True
                findings = self.judge(rule, now)
                for subject, finding in findings.items():
                    await self._step(self.kv, rule, subject, finding, now)
                if rule.kind in ("dead_letters", "cert_expiry"):
                    await self._gone(self.kv, rule, set(findings), now)
            except StoreError as exc:
                failed = exc.reason
        if failed is not None and not self._store_failing:
            log.warning("alerts: not every rule could be judged: %s; trying each round", failed)
        elif failed is None and self._store_failing:
            log.info("alerts: every rule judged again")
        self._store_failing = failed is not None
        self.evaluations += 1

    # -- judging ---------------------------------------------------------------------------------

    def _watched(self, rule: AlertRuleConfig) -> list[str]:
        return list(rule.interfaces) or list(self.interfaces)

    def _process(self, rule: AlertRuleConfig, interfaces: Sequence[str]) -> str:
        if rule.process is not None:
            return rule.process
        found = sorted({process_of(self.interfaces[n].cfg) for n in interfaces if n in self.interfaces})
        return ", ".join(found) or "claims-to-cash"

    def judge(self, rule: AlertRuleConfig, now: float) -> dict[str, Finding]:
        """Every subject of `rule` judged now (subjects with nothing to say are left out)."""
        if rule.kind == "silent":
            return {n: self._silent(rule, n, now) for n in self._watched(rule)}
        if rule.kind == "dead_letters":
            return self._dead_letters(rule, now)
        if rule.kind == "parity":
            return {n: self._parity(rule, n, now) for n in self._watched(rule)}
        if rule.kind == "legacy_errors":
            return {n: self._legacy(rule, n, now) for n in self._watched(rule) if n in self.legacy}
        if rule.kind == "sink_lag":
            return {str(rule.sink): self._sink_lag(rule)}
        if rule.kind == "sftp_auth":
            return {n: self._sftp(n) for n in self._watched(rule) if self.interfaces[n].cfg.kind == "sftp"}
        if rule.kind == "cert_expiry":
            return self._certs(rule, now)
        return {}

    def _silent(self, rule: AlertRuleConfig, name: str, now: float) -> Finding:
        minutes = float(rule.silent_minutes or 0)
        last = self.interfaces[name].stats.last_message_at
        if last is not None and now - last < minutes * 60:
            return Finding(False, f"{name} receives again", [name], list(rule.facilities))
        inside, opened = in_schedule(rule.schedule, now)
        if not inside:
            return Finding(None)
        silent_for = now - max(last or 0.0, self.started_at, opened)
        if silent_for >= minutes * 60:
            scope = "" if rule.schedule is None else " inside its schedule"
            return Finding(True, f"{name} has received nothing for {silent_for / 60:.1f} minutes{scope}",
                           [name], list(rule.facilities))
        return Finding(None)

    def _dead_letters(self, rule: AlertRuleConfig, now: float) -> dict[str, Finding]:
        watched = set(rule.interfaces)
        groups: dict[tuple[str, str], list[Letter]] = {}
        for letter in self.letters.within(rule.window_minutes * 60, now):
            if watched and letter.interface not in watched:
                continue
            if rule.facilities and letter.facility not in rule.facilities:
                continue
            groups.setdefault((letter.interface, letter.facility), []).append(letter)
        threshold = Decimal(rule.money) if rule.money is not None else None
        out: dict[str, Finding] = {}
        for (iface, facility), letters in sorted(groups.items()):
            total = sum((x.amount for x in letters if x.amount is not None), Decimal(0))
            over = (rule.count is not None and len(letters) >= rule.count) or (
                threshold is not None and total >= threshold)
            summary = (f"{len(letters)} dead letters on {iface} for {facility} in the last "
                       f"{rule.window_minutes:g} minutes, {_money(total)} at risk")
            out[f"{iface}/{facility}"] = Finding(over, summary, [iface], [facility], total)
        return out

    def _parity(self, rule: AlertRuleConfig, name: str, now: float) -> Finding:
        route = self.routes.get(name)
        in_shadow = sorted(f for f, m in route.facilities.items() if m == "shadow")
        if route.mode != "shadow" and not in_shadow:
            return Finding(False, f"{name} is not in shadow", [name])
        parity = self.parity_of(name)
        gate = rule.below if rule.below is not None else self.interfaces[name].cfg.parity_gate
        if parity.samples < rule.min_samples or parity.ratio is None:
            return Finding(None)
        letters = [x for x in self.letters.within(rule.window_minutes * 60, now)
                   if x.interface == name and x.mode == "shadow"]
        facilities = sorted({x.facility for x in letters} | set(in_shadow)) or list(rule.facilities)
        money = sum((x.amount for x in letters if x.amount is not None), Decimal(0))
        summary = (f"parity of {name} is {parity.ratio:.4f} over {parity.samples} samples, below {gate:g}; "
                   f"{parity.disagree} disagreements, {_money(money)} in shadow dead letters")
        if parity.ratio < gate:
            return Finding(True, summary, [name], facilities, money)
        return Finding(False, f"parity of {name} is {parity.ratio:.4f}, at or above {gate:g}", [name], facilities)

    def _follow_counters(self, now: float) -> None:
        """Notes when each interface's legacy deliveries failed and succeeded (counters grow)."""
        for name, running in self.interfaces.items():
            st = running.stats
            track = self.legacy.get(name)
            if track is None:
                if getattr(running.cfg, "legacy", None) is None:
                    continue
                track = self.legacy[name] = LegacyTrack()
            # The pipeline's own times where it keeps them (an error and a success in one round
            # are then ordered), else the time this round saw the counter grow.
            if st.legacy_errors > track.errors:
                track.last_error_at = st.legacy_refused[-1][0] if st.legacy_refused else now
            if st.legacy_forwarded > track.forwarded:
                track.last_ok_at = st.legacy_ok_at or now
            track.errors, track.forwarded = st.legacy_errors, st.legacy_forwarded

    def _legacy(self, rule: AlertRuleConfig, name: str, now: float) -> Finding:
        track = self.legacy[name]
        window = rule.window_minutes * 60
        refused = [r for r in self.interfaces[name].stats.legacy_refused if r[0] >= now - window]
        if rule.facilities:
            refused = [r for r in refused if (r[1] or NO_FACILITY) in rule.facilities]
        failing = track.last_error_at is not None and (
            track.last_ok_at is None or track.last_ok_at < track.last_error_at)
        if failing and len(refused) >= (rule.count or 1):
            facilities = sorted({r[1] or NO_FACILITY for r in refused})
            money = sum((r[2] for r in refused if r[2] is not None), Decimal(0))
            return Finding(True, f"the legacy destination of {name} refused {len(refused)} units in the last "
                           f"{rule.window_minutes:g} minutes, {_money(money)} at risk", [name], facilities, money)
        if track.last_ok_at is not None and not failing:
            return Finding(False, f"the legacy destination of {name} accepts again", [name])
        return Finding(None)

    def _sink_lag(self, rule: AlertRuleConfig) -> Finding:
        sink = self.sinks.get(str(rule.sink))
        if sink is None or sink.status.lag is None:
            return Finding(None)
        lag = sink.status.lag
        if lag > int(rule.lag or 0):
            return Finding(True, f"sink {rule.sink} is {lag} events behind (bound {rule.lag})",
                           list(rule.interfaces), list(rule.facilities))
        return Finding(False, f"sink {rule.sink} is {lag} events behind", list(rule.interfaces))

    def _sftp(self, name: str) -> Finding:
        problem = self.interfaces[name].problem() or ""
        if "authentication" in problem:
            return Finding(True, f"{name}: the SFTP server refuses Ficus's credentials", [name])
        return Finding(False, f"{name}: SFTP authentication works", [name])

    def _certs(self, rule: AlertRuleConfig, now: float) -> dict[str, Finding]:
        out: dict[str, Finding] = {}
        for subject, path in certificates(self.cfg, rule.interfaces).items():
            iface = subject.split(" ")[0]
            ifaces = [iface] if iface in self.interfaces else []
            expires = cached_not_after(path)
            if expires is None:
                out[subject] = Finding(None)
                continue
            left = (expires - now) / 86400
            if left <= float(rule.days or 0):
                out[subject] = Finding(True, f"the certificate of {subject} expires {_iso(expires)} "
                                       f"({left:.1f} days)", ifaces)
            else:
                out[subject] = Finding(False, f"the certificate of {subject} is valid until {_iso(expires)}", ifaces)
        return out

    def _nats(self, rule: AlertRuleConfig, now: float) -> Finding:
        if self.store.connected:
            self.nats_down_since = None
            return Finding(False, "NATS is connected again")
        if self.nats_down_since is None:
            self.nats_down_since = now
        if now - self.nats_down_since >= rule.minutes * 60:
            return Finding(True, f"NATS unavailable for {(now - self.nats_down_since) / 60:.1f} minutes: "
                           "units are refused (resend later) and nothing is published", self._watched(rule))
        return Finding(None)

    # -- state and notices -----------------------------------------------------------------------

    def _details(self, rule: AlertRuleConfig, finding: Finding) -> dict[str, Any]:
        return {"kind": rule.kind, "process": self._process(rule, finding.interfaces or self._watched(rule)),
                "interfaces": finding.interfaces, "facilities": finding.facilities,
                "money_at_risk": _money(finding.money), "summary": finding.summary}

    def _transition(self, rule: AlertRuleConfig, subject: str, st: dict[str, Any] | None, finding: Finding,
                    now: float) -> dict[str, Any] | None:
        """The entry to write for this finding, with the notice it owes; None: nothing to do."""
        targets = list(rule.notify)
        firing = st is not None and st.get("state") == "firing"
        if finding.active is True:
            details = self._details(rule, finding)
            if not firing:
                return {"rule": rule.name, "subject": subject, "state": "firing", "since": now, "last_sent": now,
                        "repeats": 0, "resolved_at": None, "details": details, "notice": "firing",
                        "pending": targets, "claimed_at": now}
            assert st is not None
            if now - float(st["last_sent"]) >= rule.repeat_minutes * 60 and int(st["repeats"]) < rule.max_repeats:
                return {**st, "details": details, "last_sent": now, "repeats": int(st["repeats"]) + 1,
                        "notice": "repeat", "pending": targets, "claimed_at": now}
            return None
        if finding.active is False and firing:
            assert st is not None
            details = {**st["details"], "summary": finding.summary or st["details"]["summary"]}
            return {**st, "state": "resolved", "resolved_at": now, "last_sent": now, "details": details,
                    "notice": "resolved", "pending": targets, "claimed_at": now}
        return None

    def _notice(self, st: dict[str, Any]) -> Notice:
        d = st["details"]
        kind: NoticeKind = st["notice"]
        return Notice(rule=st["rule"], kind=d["kind"], notice=kind, subject=st["subject"], process=d["process"],
                      interfaces=list(d["interfaces"]), facilities=list(d["facilities"]),
                      money_at_risk=d["money_at_risk"], since=_iso(float(st["since"])) or "",
                      summary=d["summary"], repeats=int(st["repeats"]))

    async def _send(self, st: dict[str, Any]) -> list[str]:
        """Delivers the entry's pending notice; the targets that still did not take it."""
        notice = self._notice(st)
        results = await asyncio.gather(*(self.notifier.deliver(t, notice) for t in st["pending"]))
        if all(results):
            log.info("alert %s (%s): %s notice sent", st["rule"], st["subject"], st["notice"])
        return [t for t, ok in zip(st["pending"], results, strict=True) if not ok]

    async def _step(self, kv: Bucket, rule: AlertRuleConfig, subject: str, finding: Finding, now: float) -> None:
        key = subject_key(rule.name, subject)
        entry = await kv.get(key)
        st: dict[str, Any] | None = json.loads(entry.value) if entry is not None and entry.value else None
        if st is not None and st.get("pending"):
            # A notice owed first: sent by whoever claims it (its sender released it on failure,
            # or stopped before it could: taken over once the claim is stale).
            if now - float(st.get("claimed_at") or 0) < self.cfg.alerting.claim_seconds and st.get("claimed_at"):
                return
            new: dict[str, Any] | None = {**st, "claimed_at": now}
        else:
            new = self._transition(rule, subject, st, finding, now)
        if new is None:
            return
        try:
            revision = (await kv.update(key, json.dumps(new).encode(), entry.revision) if entry is not None
                        else await kv.create(key, json.dumps(new).encode()))
        except RevisionConflict:
            return  # another instance claimed this notice
        left = await self._send(new)
        done = {**new, "pending": left, "claimed_at": 0 if left else new["claimed_at"]}
        if not left:
            done["notice"] = None
        with contextlib.suppress(RevisionConflict):
            await kv.update(key, json.dumps(done).encode(), revision)

    async def _gone(self, kv: Bucket, rule: AlertRuleConfig, judged: set[str], now: float) -> None:
        """Subjects no longer found (no dead letter of that facility left in the window, a
        certificate no longer configured) are clear: a firing one is resolved."""
        prefix = f"{rule.name}."
        judged_keys = {subject_key(rule.name, s) for s in judged}
        for key in await kv.keys():
            if not key.startswith(prefix) or key in judged_keys:
                continue
            entry = await kv.get(key)
            st = json.loads(entry.value) if entry is not None and entry.value else None
            if st is None or (st.get("state") != "firing" and not st.get("pending")):
                continue
            what = (f"no dead letters in the last {rule.window_minutes:g} minutes" if rule.kind == "dead_letters"
                    else "no longer configured")
            await self._step(kv, rule, str(st["subject"]), Finding(False, what), now)

    async def _local_step(self, rule: AlertRuleConfig, finding: Finding, now: float) -> None:
        st = self.local.get(rule.name)
        if st is not None and st.get("pending"):
            new: dict[str, Any] | None = st
        else:
            new = self._transition(rule, "nats", st, finding, now)
        if new is None:
            return
        left = await self._send(new)
        self.local[rule.name] = {**new, "pending": left, "notice": new["notice"] if left else None}


def cached_not_after(path: str) -> float | None:
    """cert_not_after, cached by file stamp: judging certificates every few seconds reads no file."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    stamp = (path, stat.st_mtime_ns, stat.st_size)
    if stamp not in _CERT_CACHE:
        if len(_CERT_CACHE) > 256:
            _CERT_CACHE.clear()
        _CERT_CACHE[stamp] = cert_not_after(path)
    return _CERT_CACHE[stamp]


_CERT_CACHE: dict[tuple[str, int, int], float | None] = {}


# -- what the API and the CLI show ---------------------------------------------------------------


def _shown(st: dict[str, Any]) -> dict[str, Any]:
    d = st.get("details") or {}
    return {"rule": st.get("rule"), "kind": d.get("kind"), "state": st.get("state", "ok"),
            "process": d.get("process"), "interfaces": d.get("interfaces", []),
            "facilities": d.get("facilities", []), "money_at_risk": d.get("money_at_risk"),
            "since": _iso(st.get("since")), "last_sent": _iso(st.get("last_sent")),
            "repeats": int(st.get("repeats", 0)), "summary": d.get("summary", "")}


async def listing(store: Store, cfg: FicusConfig, local: Alerts | None = None) -> list[dict[str, Any]]:
    """Every rule's alerts as stored (one per subject that ever fired), and `ok` for the rest."""
    kv = await store.kv(KV_ALERTS, history=1)
    rules = {r.name: r for r in cfg.alerts}
    shown: list[dict[str, Any]] = []
    seen: set[str] = set()
    for key in sorted(await kv.keys()):
        entry = await kv.get(key)
        if entry is None or not entry.value:
            continue
        st = json.loads(entry.value)
        if st.get("rule") not in rules:
            continue  # a rule removed from the config
        seen.add(st["rule"])
        shown.append(_shown(st))
    for name, st in (local.local.items() if local is not None else ()):
        seen.add(name)
        shown.append(_shown(st))
    for rule in cfg.alerts:
        if rule.name not in seen:
            shown.append({"rule": rule.name, "kind": rule.kind, "state": "ok",
                          "process": rule.process or _default_process(cfg, rule),
                          "interfaces": list(rule.interfaces), "facilities": list(rule.facilities),
                          "money_at_risk": None, "since": None, "last_sent": None, "repeats": 0, "summary": ""})
    return shown


def _default_process(cfg: FicusConfig, rule: AlertRuleConfig) -> str:
    ifaces = [i for i in cfg.interfaces if not rule.interfaces or i.name in rule.interfaces]
    return ", ".join(sorted({process_of(i) for i in ifaces})) or "claims-to-cash"
