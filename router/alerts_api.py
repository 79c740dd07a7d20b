"""GET /api/v1/alerts: every alert rule's state (viewer): identifiers, counts and money, no content;
and the NATS connection gauge the shipped Prometheus rules use (deploy/prometheus/ficus-alerts.yml)."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router import alerts
from router.store import Store


async def get_alerts(request: web.Request) -> web.Response:
    from router.api import CONFIG, STORE

    shown = await alerts.listing(request.app[STORE], request.app[CONFIG])
    return web.json_response({"alerts": shown})


class NatsCollector(Collector):
    """`ficus_nats_connected`: 1 while this instance's NATS connection is up (for Prometheus rules)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("ficus_nats_connected", "1 while the NATS connection is up, else 0")
        gauge.add_metric([], 1.0 if self.store.connected else 0.0)
        yield gauge
