"""The shipped Prometheus rules (deploy/prometheus/ficus-alerts.yml) and the latency histograms:
every rule is well formed as promtool wants it (groups, alert, expr, for, labels, annotations)
and every metric an expression names is on a real service's /metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router import simulate
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config
from tests.mllp_client import msa, send_one

RULES = Path(__file__).parent.parent / "deploy" / "prometheus" / "ficus-alerts.yml"
METRIC = re.compile(r"\bficus_[a-z0-9_]+\b")
DURATION = re.compile(r"^\d+[smhdwy]$")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    found: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        found.extend(group["rules"])
    return found


def test_rules_are_well_formed() -> None:
    names = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", rule["alert"]) and rule["alert"] not in names
        names.add(rule["alert"])
        assert DURATION.match(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]")
    assert {"FicusInterfaceSilent", "FicusDeadLettersRising", "FicusLegacyErrors", "FicusNatsDown",
            "FicusMllpAckP99High"} <= names


@pytest.mark.integration
async def test_every_metric_a_rule_names_is_exposed(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    cfg = make_config(nats_server.url, [{"name": "his-charges", "mapping": "hl7v2.dft_p03", "route": "modern"}],
                      state_dir=tmp_path,
                      sinks=[{"name": "erp", "url": "http://127.0.0.1:9/never",
                              "filter": {"types": ["org.ficus.revenue"]}}])
    async with service_factory(cfg) as svc, aiohttp.ClientSession() as http:
        port = svc.interfaces["his-charges"].listener.port
        assert msa(await send_one(port, simulate.dft(1)))[0] == "AA"
        text = await (await http.get(f"{svc.api_url}/metrics")).text()
    exposed = set(re.findall(r"^(ficus_[a-z0-9_]+)(?:\{| )", text, re.M))
    for rule in rules():
        for name in METRIC.findall(rule["expr"]):
            assert name in exposed, f"{rule['alert']}: {name} is not on /metrics"
    for histogram in ("ficus_mllp_ack_latency_seconds", "ficus_unit_commit_seconds"):
        assert all(histogram + suffix in exposed for suffix in HISTOGRAM_SUFFIXES), histogram
    count = re.search(r'^ficus_mllp_ack_latency_seconds_count\{interface="his-charges"\} (\S+)$', text, re.M)
    assert count is not None and float(count.group(1)) == 1.0
    commits = re.search(r'^ficus_unit_commit_seconds_count\{interface="his-charges"\} (\S+)$', text, re.M)
    assert commits is not None and float(commits.group(1)) >= 1.0
    assert "ficus_nats_connected 1.0" in text
