"""RelayMetrics: names, labels, cardinality guards, exposition and snapshots."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from mterelay import __version__
from mterelay.service.metrics import (
    CRYPTO_KINDS,
    LATENCY_BUCKETS,
    MAX_REASONS,
    ROLES,
    RelayMetrics,
    reason_slug,
    status_class,
)

FAMILIES = {
    # name as parsed from the text format (counters without _total): type
    "mterelay_requests": "counter",
    "mterelay_request_seconds": "histogram",
    "mterelay_outbound_proxy_seconds": "histogram",
    "mterelay_upstream_proxy_seconds": "histogram",
    "mterelay_request_encode_seconds": "histogram",
    "mterelay_request_decode_seconds": "histogram",
    "mterelay_response_encode_seconds": "histogram",
    "mterelay_response_decode_seconds": "histogram",
    "mterelay_pairs_created": "counter",
    "mterelay_relay_errors": "counter",
    "mterelay_store_operation_seconds": "histogram",
    "mterelay_store_errors": "counter",
    "mterelay_in_flight_requests": "gauge",
    "mterelay_store_reachable": "gauge",
    "mterelay_draining": "gauge",
    "mterelay_build_info": "gauge",
}


def families(metrics: RelayMetrics) -> dict:
    body, _ = metrics.exposition()
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


class StatusClassTests(SynchronousTestCase):
    def test_classes(self) -> None:
        for code, expected in ((100, "1xx"), (200, "2xx"), (204, "2xx"), (302, "3xx"),
                               (404, "4xx"), (499, "4xx"), (500, "5xx"), (559, "5xx"),
                               (569, "5xx"), (599, "5xx")):
            self.assertEqual(status_class(code), expected, code)

    def test_out_of_range_is_other(self) -> None:
        for code in (-1, 0, 99, 600, 999):
            self.assertEqual(status_class(code), "other", code)


class ReasonSlugTests(SynchronousTestCase):
    def test_normalised(self) -> None:
        self.assertEqual(reason_slug("Bad Request"), "bad_request")
        self.assertEqual(reason_slug("replay"), "replay")
        self.assertEqual(reason_slug("  x-mte-relay: missing!! "), "x_mte_relay_missing")
        self.assertEqual(reason_slug("Ünïcode"), "n_code")

    def test_truncated_to_40(self) -> None:
        slug = reason_slug("a" * 100)
        self.assertEqual(slug, "a" * 40)
        self.assertFalse(reason_slug("a" * 39 + "-b").endswith("_"))

    def test_empty_is_unknown(self) -> None:
        self.assertEqual(reason_slug(""), "unknown")
        self.assertEqual(reason_slug("!!!"), "unknown")


class RegistryTests(SynchronousTestCase):
    def test_every_family_exposed_with_its_type(self) -> None:
        found = families(RelayMetrics())
        for name, kind in FAMILIES.items():
            self.assertIn(name, found)
            self.assertEqual(found[name].type, kind, name)

    def test_own_registry_per_instance(self) -> None:
        first, second = RelayMetrics(), RelayMetrics()
        self.assertIsNot(first.registry, second.registry)
        first.request_started()
        first.request_finished("inbound", 200, 0.01)
        self.assertEqual(second.registry.get_sample_value(
            "mterelay_requests_total", {"role": "inbound", "status_class": "2xx"}), 0.0)
        self.assertIsNone(REGISTRY.get_sample_value("mterelay_build_info",
                                                    {"version": __version__}))

    def test_given_registry_used(self) -> None:
        registry = CollectorRegistry()
        metrics = RelayMetrics(registry)
        self.assertIs(metrics.registry, registry)
        self.assertEqual(registry.get_sample_value("mterelay_build_info",
                                                   {"version": __version__}), 1.0)

    def test_process_and_platform_collectors(self) -> None:
        found = families(RelayMetrics())
        self.assertIn("python_info", found)
        self.assertIn("process_cpu_seconds", found)  # Linux: /proc is readable

    def test_buckets_resolve_sub_millisecond(self) -> None:
        metrics = RelayMetrics()
        metrics.observe_crypto("request_decode", 0.00004)
        registry = metrics.registry
        bucket = registry.get_sample_value("mterelay_request_decode_seconds_bucket",
                                           {"le": "0.0001"})
        self.assertEqual(bucket, 1.0)
        self.assertEqual(LATENCY_BUCKETS[0], 0.0001)
        les = {s.labels["le"] for s in families(metrics)["mterelay_request_seconds"].samples
               if s.name.endswith("_bucket")}
        self.assertEqual(len(les), len(LATENCY_BUCKETS) + 1)  # + "+Inf"

    def test_fixed_label_sets_prebound(self) -> None:
        found = families(RelayMetrics())
        labels = {(s.labels["role"], s.labels["status_class"])
                  for s in found["mterelay_requests"].samples if s.name.endswith("_total")}
        self.assertEqual(labels, {(r, c) for r in ROLES for c in ("2xx", "3xx", "4xx", "5xx")})
        ops = {s.labels["op"] for s in found["mterelay_store_errors"].samples}
        self.assertEqual(ops, {"start", "stop", "ping", "create", "get", "accept", "delete"})

    def test_store_reachable_starts_at_one_draining_at_zero(self) -> None:
        registry = RelayMetrics().registry
        self.assertEqual(registry.get_sample_value("mterelay_store_reachable"), 1.0)
        self.assertEqual(registry.get_sample_value("mterelay_draining"), 0.0)
        self.assertEqual(registry.get_sample_value("mterelay_in_flight_requests"), 0.0)


class RequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = RelayMetrics()
        self.value = self.metrics.registry.get_sample_value

    def test_started_and_finished(self) -> None:
        self.metrics.request_started()
        self.metrics.request_started()
        self.assertEqual(self.value("mterelay_in_flight_requests"), 2.0)
        self.metrics.request_finished("inbound", 200, 0.25)
        self.metrics.request_finished("passthrough", 562, 0.5)
        self.assertEqual(self.value("mterelay_in_flight_requests"), 0.0)
        self.assertEqual(self.value("mterelay_requests_total",
                                    {"role": "inbound", "status_class": "2xx"}), 1.0)
        self.assertEqual(self.value("mterelay_requests_total",
                                    {"role": "passthrough", "status_class": "5xx"}), 1.0)
        self.assertEqual(self.value("mterelay_request_seconds_sum", {"role": "inbound"}), 0.25)
        self.assertEqual(self.value("mterelay_request_seconds_count", {"role": "passthrough"}), 1.0)

    def test_unknown_role_is_other(self) -> None:
        self.metrics.request_started()
        self.metrics.request_finished("bogus", 404, 0.1)
        self.assertEqual(self.value("mterelay_requests_total",
                                    {"role": "other", "status_class": "4xx"}), 1.0)
        self.assertIsNone(self.value("mterelay_requests_total",
                                     {"role": "bogus", "status_class": "4xx"}))

    def test_unusual_status_bound_lazily(self) -> None:
        for status in (101, 0, 700):
            self.metrics.request_started()
            self.metrics.request_finished("inbound", status, 0.0)
        self.assertEqual(self.value("mterelay_requests_total",
                                    {"role": "inbound", "status_class": "1xx"}), 1.0)
        self.assertEqual(self.value("mterelay_requests_total",
                                    {"role": "inbound", "status_class": "other"}), 2.0)
        self.metrics.request_started()
        self.metrics.request_finished("bogus", 999, 0.0)
        self.assertEqual(self.value("mterelay_requests_total",
                                    {"role": "other", "status_class": "other"}), 1.0)

    def test_negative_durations_clamped(self) -> None:
        # a wall clock stepping back must not make sums go down
        self.metrics.request_started()
        self.metrics.request_finished("inbound", 200, -3.0)
        self.metrics.observe_upstream("inbound", -1.0)
        self.metrics.observe_outbound(-1.0)
        self.metrics.observe_crypto("response_encode", -1.0)
        self.metrics.observe_store("get", -1.0)
        self.assertEqual(self.value("mterelay_request_seconds_sum", {"role": "inbound"}), 0.0)
        self.assertEqual(self.value("mterelay_upstream_proxy_seconds_sum",
                                    {"role": "inbound"}), 0.0)
        self.assertEqual(self.value("mterelay_outbound_proxy_seconds_sum"), 0.0)
        self.assertEqual(self.value("mterelay_response_encode_seconds_sum"), 0.0)
        self.assertEqual(self.value("mterelay_store_operation_seconds_sum", {"op": "get"}), 0.0)

    def test_upstream_and_outbound(self) -> None:
        self.metrics.observe_upstream("passthrough", 0.125)
        self.metrics.observe_upstream("nonsense", 1.0)
        self.metrics.observe_outbound(0.5)
        self.assertEqual(self.value("mterelay_upstream_proxy_seconds_sum",
                                    {"role": "passthrough"}), 0.125)
        self.assertEqual(self.value("mterelay_upstream_proxy_seconds_sum", {"role": "other"}), 1.0)
        self.assertEqual(self.value("mterelay_outbound_proxy_seconds_count"), 1.0)

    def test_crypto_kinds(self) -> None:
        for index, kind in enumerate(CRYPTO_KINDS):
            self.metrics.observe_crypto(kind, 0.001 * (index + 1))
            self.assertAlmostEqual(self.value(f"mterelay_{kind}_seconds_sum"), 0.001 * (index + 1))

    def test_unknown_crypto_kind_refused(self) -> None:
        error = self.assertRaises(ValueError, self.metrics.observe_crypto, "encode", 0.1)
        self.assertIn("request_encode", str(error))

    def test_pairs_created(self) -> None:
        self.metrics.pair_created("inbound", 5)
        self.metrics.pair_created("outbound")
        self.metrics.pair_created("weird")
        self.assertEqual(self.value("mterelay_pairs_created_total", {"role": "inbound"}), 5.0)
        self.assertEqual(self.value("mterelay_pairs_created_total", {"role": "outbound"}), 1.0)
        self.assertEqual(self.value("mterelay_pairs_created_total", {"role": "other"}), 1.0)

    def test_pairs_created_refuses_negative(self) -> None:
        self.assertRaises(ValueError, self.metrics.pair_created, "inbound", -1)

    def test_store_and_gauges(self) -> None:
        self.metrics.observe_store("accept", 0.002)
        self.metrics.observe_store("accept", 0.003, failed=True)
        self.metrics.observe_store("mystery", 0.001, failed=True)
        self.assertEqual(self.value("mterelay_store_operation_seconds_count",
                                    {"op": "accept"}), 2.0)
        self.assertEqual(self.value("mterelay_store_errors_total", {"op": "accept"}), 1.0)
        self.assertEqual(self.value("mterelay_store_errors_total", {"op": "other"}), 1.0)
        self.metrics.set_store_reachable(False)
        self.metrics.set_draining(True)
        self.assertEqual(self.value("mterelay_store_reachable"), 0.0)
        self.assertEqual(self.value("mterelay_draining"), 1.0)
        self.metrics.set_store_reachable(True)
        self.metrics.set_draining(False)
        self.assertEqual(self.value("mterelay_store_reachable"), 1.0)
        self.assertEqual(self.value("mterelay_draining"), 0.0)


class RelayErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = RelayMetrics()

    def errors(self) -> dict[tuple[str, str], float]:
        return {(s.labels["code"], s.labels["reason"]): s.value
                for s in families(self.metrics)["mterelay_relay_errors"].samples
                if s.name == "mterelay_relay_errors_total"}

    def test_counted_by_code_and_reason(self) -> None:
        self.metrics.relay_error(562, "replay")
        self.metrics.relay_error(562, "replay")
        self.metrics.relay_error(400, "Bad Request")
        self.assertEqual(self.errors(), {("562", "replay"): 2.0, ("400", "bad_request"): 1.0})

    def test_codes_outside_4xx_5xx_are_other(self) -> None:
        for code in (200, 399, 600, -5, 99999):
            self.metrics.relay_error(code, "x")
        self.metrics.relay_error(400, "x")
        self.metrics.relay_error(599, "x")
        self.assertEqual(self.errors(), {("other", "x"): 5.0, ("400", "x"): 1.0, ("599", "x"): 1.0})

    def test_reasons_capped(self) -> None:
        for index in range(MAX_REASONS + 10):
            self.metrics.relay_error(562, f"reason {index}")
        errors = self.errors()
        self.assertEqual(len({reason for _, reason in errors}), MAX_REASONS + 1)
        self.assertEqual(errors[("562", "other")], 10.0)
        # a reason seen before the cap keeps its own series
        self.metrics.relay_error(562, "reason 3")
        self.assertEqual(self.errors()[("562", "reason_3")], 2.0)
        # "other" passed explicitly does not use up a place
        self.metrics.relay_error(400, "other")
        self.assertEqual(self.errors()[("400", "other")], 1.0)

    def test_same_slug_from_different_spellings_shares_a_series(self) -> None:
        self.metrics.relay_error(566, "Invalid client id")
        self.metrics.relay_error(566, "invalid-client-id")
        self.assertEqual(self.errors(), {("566", "invalid_client_id"): 2.0})

    def test_many_raw_reasons_do_not_grow_without_bound(self) -> None:
        for index in range(5000):
            self.metrics.relay_error(562, f"id {index}")
        self.assertLessEqual(len(self.metrics._error_children), 1024)
        self.assertEqual(sum(self.errors().values()), 5000.0)


class ExpositionTests(SynchronousTestCase):
    def test_text_format_by_default(self) -> None:
        body, content_type = RelayMetrics().exposition()
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")
        self.assertIn(b"# TYPE mterelay_requests_total counter", body)
        self.assertIn(f'mterelay_build_info{{version="{__version__}"}} 1.0'.encode(), body)

    def test_openmetrics_when_asked(self) -> None:
        body, content_type = RelayMetrics().exposition(
            "application/openmetrics-text; version=1.0.0, text/plain;q=0.5")
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))


class SnapshotTests(SynchronousTestCase):
    def test_totals_summed_over_labels(self) -> None:
        metrics = RelayMetrics()
        for role, status, seconds in (("inbound", 200, 0.5), ("outbound", 502, 0.25),
                                      ("pairing", 200, 0.125)):
            metrics.request_started()
            metrics.request_finished(role, status, seconds)
        metrics.request_started()
        metrics.relay_error(562, "replay")
        metrics.relay_error(400, "bad")
        snapshot = metrics.snapshot(at=12.5)
        self.assertEqual(snapshot.at, 12.5)
        self.assertEqual(snapshot["mterelay_requests_total"], 3.0)
        self.assertEqual(snapshot["mterelay_request_seconds_sum"], 0.875)
        self.assertEqual(snapshot["mterelay_request_seconds_count"], 3.0)
        self.assertEqual(snapshot["mterelay_relay_errors_total"], 2.0)
        self.assertEqual(snapshot["mterelay_in_flight_requests"], 1.0)
        self.assertEqual(snapshot["mterelay_store_reachable"], 1.0)
        self.assertEqual(snapshot["no_such_sample"], 0.0)

    def test_no_buckets_or_process_metrics(self) -> None:
        names = RelayMetrics().snapshot(at=0).values
        self.assertFalse([n for n in names if n.endswith(("_bucket", "_created"))])
        self.assertFalse([n for n in names if not n.startswith("mterelay_")])

    def test_snapshot_is_a_copy(self) -> None:
        metrics = RelayMetrics()
        before = metrics.snapshot(at=0)
        metrics.request_started()
        metrics.request_finished("inbound", 200, 1.0)
        self.assertEqual(before["mterelay_requests_total"], 0.0)
