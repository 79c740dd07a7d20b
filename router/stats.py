"""Per-interface counters, parity evidence, and their Prometheus exposition.

Counters are plain attributes bumped on the hot path; the Prometheus collector reads them
only when scraped, so counting costs an integer add. Labels carry interface names only.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from canonical.safe_text import bounded_id, safe_reason

COUNTERS = (
    ("received", "units received from the legacy sender"),
    ("acked", "positive acknowledgements sent to the sender"),
    ("nacked", "negative acknowledgements sent (AE/AR/CE/CR)"),
    ("published", "canonical events stored on live subjects"),
    ("shadow_published", "canonical events stored on shadow subjects"),
    ("dead_lettered", "units stored in the dead-letter stream"),
    ("errors", "units that failed for any reason"),
    ("legacy_forwarded", "units delivered to the legacy destination"),
    ("legacy_errors", "legacy deliveries that failed"),
    ("archive_errors", "raw units that could not be archived"),
    ("store_unavailable", "units refused because JetStream did not acknowledge"),
    ("reused_control_ids", "messages whose control id was already stored with other content"),
    ("replayed_events", "canonical events published again by a replay (not traffic)"),
)


@dataclass
class ParityStats:
    """Shadow evidence: does the modern path agree with what the legacy path did?

    The counts are those of the current *window*: a window starts when the interface (or a
    facility override) enters shadow (router/parity.py watches the routes), so samples from an
    earlier stint in shadow -- before a flip to modern and a rollback -- never count toward the
    gate. The window before is kept as a summary (`previous_window`) for the operator.
    """

    samples: int = 0
    agree: int = 0
    disagree: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    window_started_at: str | None = None
    """When the current window started (ISO 8601, UTC; the flip's time), None before any."""
    window_flip: dict[str, Any] | None = None
    """The route change that started the window: revision, at, actor, what entered shadow."""
    previous_window: dict[str, Any] | None = None
    route_revision: int = 0
    """The route revision this evidence is consistent with (checked at a restart)."""
    changes: int = 0
    """Bumped on every change, so the saver knows what to write."""
    instances: dict[str, int] | None = None
    """In a view over several instances (router/parity.py `merged`): samples by instance."""

    @property
    def ratio(self) -> float | None:
        return self.agree / self.samples if self.samples else None

    def record(self, *, legacy_ok: bool, modern_ok: bool, unit: str, detail: str) -> None:
        self.samples += 1
        self.changes += 1
        if legacy_ok == modern_ok:
            self.agree += 1
            return
        self.disagree += 1
        # Shown by the API and the dashboard: bounded and escaped here, whoever called.
        self.recent.append({
            "unit": bounded_id(unit, 160), "legacy_ok": legacy_ok, "modern_ok": modern_ok,
            "detail": safe_reason(detail),
            "at": time.time(),
        })

    def start_window(self, started_at: str, flip: dict[str, Any] | None) -> None:
        """A new window: the counts start from zero, the current window becomes the previous one."""
        if self.window_started_at is not None or self.samples:
            self.previous_window = {**self.window(), "ended_at": started_at}
        self.samples = self.agree = self.disagree = 0
        self.recent.clear()
        self.window_started_at = started_at
        self.window_flip = flip
        self.changes += 1

    def window(self) -> dict[str, Any]:
        """The current window as judged by the gate: start, the flip that started it, counts."""
        return {"started_at": self.window_started_at, "flip": self.window_flip,
                "revision": None if self.window_flip is None else self.window_flip.get("revision"),
                "samples": self.samples, "agree": self.agree, "disagree": self.disagree, "ratio": self.ratio}

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "agree": self.agree, "disagree": self.disagree,
                "ratio": self.ratio, "recent_disagreements": list(self.recent),
                "window": self.window(), "previous_window": self.previous_window,
                **({"instances": self.instances} if self.instances is not None else {})}

    def saved_form(self) -> dict[str, Any]:
        """What router/parity.py stores in KV: the window with its counts and route revision."""
        return {**self.as_dict(), "route_revision": self.route_revision}

    def restore(self, saved: dict[str, Any]) -> None:
        """Continues the window saved before a restart (router/parity.py decides whether it may)."""
        self.samples = int(saved.get("samples", 0))
        self.agree = int(saved.get("agree", 0))
        self.disagree = int(saved.get("disagree", 0))
        self.recent.extend(saved.get("recent_disagreements", []))
        window = saved.get("window") or {}
        self.window_started_at = window.get("started_at")
        self.window_flip = window.get("flip")
        self.previous_window = saved.get("previous_window")
        self.route_revision = int(saved.get("route_revision", 0))


ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Latency:
    """A Prometheus-style histogram bumped on the hot path (a bisect and two adds)."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Observes how long the block took, when it ends without an exception."""
        started = time.perf_counter()
        yield
        self.observe(time.perf_counter() - started)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as Prometheus wants them, +Inf last."""
        out, total = [], 0
        for edge, count in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            total += count
            out.append((edge, float(total)))
        return out


@dataclass
class InterfaceStats:
    """The counters of one interface."""

    received: int = 0
    acked: int = 0
    nacked: int = 0
    published: int = 0
    shadow_published: int = 0
    dead_lettered: int = 0
    errors: int = 0
    legacy_forwarded: int = 0
    legacy_errors: int = 0
    archive_errors: int = 0
    store_unavailable: int = 0
    reused_control_ids: int = 0
    replayed_events: int = 0
    in_flight: int = 0
    shadow_backlog: int = 0
    last_message_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    parity: ParityStats = field(default_factory=ParityStats)
    legacy_refused: deque[tuple[float, str | None, Decimal | None]] = field(
        default_factory=lambda: deque(maxlen=1000))
    """Units the legacy destination could not take: (when, facility, amount at risk), for alerts."""
    legacy_ok_at: float | None = None
    """When the legacy destination last took a unit (the alerts' "it accepts again")."""
    ack_latency: Latency = field(default_factory=lambda: Latency(ACK_BUCKETS))
    """MLLP: from a message's arrival to its reply (the sender's ACK)."""
    commit_latency: Latency = field(default_factory=lambda: Latency(COMMIT_BUCKETS))
    """A unit's commit (events, dead letters and ledger delta stored)."""

    def error(self, reason: str) -> None:
        self.errors += 1
        self.last_error = safe_reason(reason)  # shown by the API and the dashboard
        self.last_error_at = time.time()

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_SHOWN}
        out["parity_ratio"] = self.parity.ratio
        return out


_NOT_SHOWN = frozenset({"parity", "legacy_refused", "legacy_ok_at", "ack_latency", "commit_latency"})


class StatsCollector(Collector):
    """Exposes every interface's counters as `ficus_<name>_total{interface=...}`."""

    def __init__(self, stats: dict[str, InterfaceStats], extra: dict[str, Any] | None = None) -> None:
        self.stats = stats
        self.extra = extra or {}

    def collect(self) -> Iterator[Metric]:
        for name, doc in COUNTERS:
            fam = CounterMetricFamily(f"ficus_{name}", doc, labels=["interface"])
            for iface, st in self.stats.items():
                fam.add_metric([iface], getattr(st, name))
            yield fam
        for name, doc in (("in_flight", "units being processed"),
                          ("shadow_backlog", "shadow translations waiting")):
            gauge = GaugeMetricFamily(f"ficus_{name}", doc, labels=["interface"])
            for iface, st in self.stats.items():
                gauge.add_metric([iface], getattr(st, name))
            yield gauge
        parity = GaugeMetricFamily("ficus_parity_ratio", "shadow agreement ratio", labels=["interface"])
        for iface, st in self.stats.items():
            if st.parity.ratio is not None:
                parity.add_metric([iface], st.parity.ratio)
        yield parity
        last = GaugeMetricFamily("ficus_last_message_timestamp_seconds", "time of the last unit",
                                 labels=["interface"])
        for iface, st in self.stats.items():
            if st.last_message_at is not None:
                last.add_metric([iface], st.last_message_at)
        yield last
        for attr, metric, doc in (("ack_latency", "ficus_mllp_ack_latency_seconds",
                                   "MLLP: from a message's arrival to the reply sent to the sender"),
                                  ("commit_latency", "ficus_unit_commit_seconds",
                                   "A unit's commit: its events, dead letters and ledger delta stored")):
            hist = HistogramMetricFamily(metric, doc, labels=["interface"])
            for iface, st in self.stats.items():
                latency: Latency = getattr(st, attr)
                if attr == "ack_latency" and not any(latency.counts):
                    continue  # not an MLLP interface (or nothing received yet)
                hist.add_metric([iface], latency.cumulative(), latency.sum)
            yield hist


LISTENER_COUNTERS = (
    ("connections_total", "mllp_connections", "MLLP connections accepted"),
    ("refused", "mllp_connections_refused", "MLLP connections refused over max_connections"),
    ("idle_closed", "mllp_idle_closed", "MLLP connections closed for being idle"),
    ("peer_resets", "mllp_peer_resets", "MLLP connections reset by the peer before the reply"),
    ("tls_refused", "mllp_tls_refused", "MLLP connections refused at the TLS handshake (nothing read)"),
    ("malformed", "mllp_malformed_frames", "MLLP frames with a stray block byte, rejected and kept"),
    ("oversize", "mllp_oversize_frames", "MLLP frames over max_message_bytes, rejected"),
    ("aborted_frames", "mllp_aborted_frames", "MLLP connections that ended inside a frame"),
    ("junk_bytes", "mllp_junk_bytes", "bytes received outside any MLLP frame"),
)


class ListenerCollector(Collector):
    """Exposes the MLLP listeners' connection and framing counters, labelled by interface.

    `listeners` maps an interface to a function returning its listener's current stats
    (any object with the attributes named in LISTENER_COUNTERS and `connections_open`).
    """

    def __init__(self, listeners: dict[str, Any]) -> None:
        self.listeners = listeners

    def collect(self) -> Iterator[Metric]:
        snapshots = {iface: stats() for iface, stats in self.listeners.items()}
        for attr, name, doc in LISTENER_COUNTERS:
            fam = CounterMetricFamily(f"ficus_{name}", doc, labels=["interface"])
            for iface, snap in snapshots.items():
                fam.add_metric([iface], getattr(snap, attr))
            yield fam
        gauge = GaugeMetricFamily("ficus_mllp_connections_open", "MLLP connections open now", labels=["interface"])
        for iface, snap in snapshots.items():
            gauge.add_metric([iface], snap.connections_open)
        yield gauge
