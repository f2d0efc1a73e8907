"""docs/grafana/mterelay.json: importable, one data source variable, only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.metrics import RelayMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "mterelay.json"
DATASOURCE = "${datasource}"
METRIC = re.compile(r"\bmterelay_[a-z0-9_]+")

# seed panel title -> the metric family its queries must read
SEED_PANELS = {
    "Requests Processed [req/s]": "mterelay_requests_total",
    "Request Time [ms]": "mterelay_request_seconds_bucket",
    "Outbound Proxy Time [ms]": "mterelay_outbound_proxy_seconds_bucket",
    "Upstream Proxy Time [ms]": "mterelay_upstream_proxy_seconds_bucket",
    "Average Request Encode Time [ms]": "mterelay_request_encode_seconds_sum",
    "Average Request Decode Time [ms]": "mterelay_request_decode_seconds_sum",
    "Average Response Encode Time [ms]": "mterelay_response_encode_seconds_sum",
    "Average Response Decode Time [ms]": "mterelay_response_decode_seconds_sum",
}
OPERATIONS_PANELS = {
    "Relay errors": "mterelay_relay_errors_total",
    "Pairs created": "mterelay_pairs_created_total",
    "In-flight": "mterelay_in_flight_requests",
    "Store reachable": "mterelay_store_reachable",
    "Store operation latency": "mterelay_store_operation_seconds_bucket",
}
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exposed_names() -> set[str]:
    """Every series name a fresh RelayMetrics can expose, children bound or not."""
    names = set()
    for family in RelayMetrics().registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


class DashboardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        self.panels = self.dashboard["panels"]

    def targets(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for panel in self.panels:
            for target in panel["targets"]:
                yield panel, target

    def panel(self, title_start: str) -> dict[str, Any]:
        matches = [p for p in self.panels if p["title"].startswith(title_start)]
        self.assertEqual(len(matches), 1, title_start)
        return matches[0]

    def test_importable_shape(self) -> None:
        self.assertGreaterEqual(self.dashboard["schemaVersion"], 36)
        self.assertIsNone(self.dashboard["id"])  # Grafana assigns one on import
        self.assertTrue(self.dashboard["uid"])
        self.assertTrue(self.dashboard["title"])
        ids = [panel["id"] for panel in self.panels]
        self.assertEqual(len(ids), len(set(ids)))

    def test_datasource_variable(self) -> None:
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        variable = variables["datasource"]
        self.assertEqual(variable["type"], "datasource")
        self.assertEqual(variable["query"], "prometheus")
        for name, other in variables.items():
            if other["type"] == "query":
                self.assertEqual(other["datasource"]["uid"], DATASOURCE, name)

    def test_every_panel_and_target_uses_the_variable(self) -> None:
        for panel in self.panels:
            self.assertEqual(panel["datasource"], {"type": "prometheus", "uid": DATASOURCE},
                             panel["title"])
            self.assertTrue(panel["targets"], panel["title"])
        for panel, target in self.targets():
            self.assertEqual(target["datasource"]["uid"], DATASOURCE, panel["title"])

    def test_only_existing_metrics(self) -> None:
        exposed = exposed_names()
        referenced = set()
        for panel, target in self.targets():
            names = METRIC.findall(target["expr"])
            self.assertTrue(names, f"{panel['title']}: no mterelay metric")
            referenced.update(names)
            for name in names:
                self.assertIn(name, exposed, f"{panel['title']}: {name}")
        for variable in self.dashboard["templating"]["list"]:
            for name in METRIC.findall(json.dumps(variable.get("query", ""))):
                self.assertIn(name, exposed, variable["name"])
        self.assertGreaterEqual(len(referenced), 15)

    def test_expressions_well_formed(self) -> None:
        for panel, target in self.targets():
            expr = target["expr"]
            self.assertEqual(expr.count("("), expr.count(")"), panel["title"])
            self.assertEqual(expr.count("{"), expr.count("}"), panel["title"])
            if "rate(" in expr:
                self.assertIn("[$__rate_interval]", expr, panel["title"])
            if "histogram_quantile" in expr:
                self.assertIn("_bucket", expr, panel["title"])
                self.assertRegex(expr, r"sum by \(le\b", panel["title"])
                self.assertTrue(expr.endswith("* 1000"), panel["title"])
            refs = [t["refId"] for t in panel["targets"]]
            self.assertEqual(len(refs), len(set(refs)), panel["title"])

    def test_seed_metrics_have_panels(self) -> None:
        for title, metric in SEED_PANELS.items():
            panel = self.panel(title)
            self.assertEqual(panel["title"], title)
            self.assertEqual(panel["type"], "timeseries")
            exprs = " ".join(t["expr"] for t in panel["targets"])
            self.assertIn(metric, exprs, title)
            if title.endswith("[ms]"):
                self.assertEqual(panel["fieldConfig"]["defaults"]["unit"], "ms", title)

    def test_request_rate_by_role(self) -> None:
        (target,) = self.panel("Requests Processed")["targets"]
        self.assertTrue(target["expr"].startswith("sum by (role) (rate(mterelay_requests_total"))

    def test_latency_panels_show_three_quantiles(self) -> None:
        for title in ("Request Time", "Outbound Proxy Time", "Upstream Proxy Time"):
            exprs = [t["expr"] for t in self.panel(title)["targets"]]
            quantiles = sorted(float(re.match(r"histogram_quantile\(([0-9.]+),", e).group(1))
                               for e in exprs)
            self.assertEqual(quantiles, [0.5, 0.9, 0.99], title)

    def test_average_panels_divide_sum_by_count(self) -> None:
        for title in SEED_PANELS:
            if title.startswith("Average"):
                (target,) = self.panel(title)["targets"]
                metric = SEED_PANELS[title][: -len("_sum")]
                self.assertIn(f"rate({metric}_sum", target["expr"])
                self.assertIn(f"rate({metric}_count", target["expr"])
                self.assertTrue(target["expr"].endswith("* 1000"))

    def test_operations_panels(self) -> None:
        for title, metric in OPERATIONS_PANELS.items():
            exprs = " ".join(t["expr"] for t in self.panel(title)["targets"])
            self.assertIn(metric, exprs, title)

    def test_panels_do_not_overlap(self) -> None:
        cells: set[tuple[int, int]] = set()
        for panel in self.panels:
            pos = panel["gridPos"]
            self.assertLessEqual(pos["x"] + pos["w"], 24, panel["title"])
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}
            self.assertFalse(cells & mine, panel["title"])
            cells |= mine
