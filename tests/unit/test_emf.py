"""CloudWatch EMF: the pure document builder and the interval reporter."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import jsonschema
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.emf import (
    METRIC_UNITS,
    EmfReporter,
    emf_dimensions,
    emf_document,
    emf_line,
    line_writer,
)
from mterelay.service.metrics import RelayMetrics

# The EMF specification's constraints on a document, as a JSON Schema.
UNITS = ("Seconds|Microseconds|Milliseconds|Bytes|Kilobytes|Megabytes|Gigabytes|Terabytes|"
         "Bits|Kilobits|Megabits|Gigabits|Terabits|Percent|Count|Bytes/Second|"
         "Kilobytes/Second|Megabytes/Second|Gigabytes/Second|Terabytes/Second|Bits/Second|"
         "Kilobits/Second|Megabits/Second|Gigabits/Second|Terabits/Second|Count/Second|None")
NAME = {"type": "string", "minLength": 1, "maxLength": 255}
EMF_SCHEMA = {
    "type": "object",
    "required": ["_aws"],
    "properties": {"_aws": {
        "type": "object",
        "required": ["Timestamp", "CloudWatchMetrics"],
        "properties": {
            "Timestamp": {"type": "integer", "minimum": 0},
            "CloudWatchMetrics": {"type": "array", "items": {
                "type": "object",
                "required": ["Namespace", "Dimensions", "Metrics"],
                "additionalProperties": False,
                "properties": {
                    "Namespace": NAME,
                    "Dimensions": {"type": "array", "minItems": 1, "items": {
                        "type": "array", "maxItems": 30, "items": NAME}},
                    "Metrics": {"type": "array", "maxItems": 100, "items": {
                        "type": "object", "required": ["Name"], "additionalProperties": False,
                        "properties": {"Name": NAME,
                                       "Unit": {"type": "string", "pattern": f"^({UNITS})$"}}}},
                },
            }},
        },
    }},
}

DIMENSIONS = {"Service": "mterelay", "Role": "inbound"}


def check_emf(test: SynchronousTestCase, document: dict[str, Any]) -> None:
    """Schema, plus the cross references a schema cannot express."""
    jsonschema.validate(document, EMF_SCHEMA)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for name in dimension_set:
                test.assertIsInstance(document.get(name), str, name)
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            test.assertIsInstance(value, (int, float), metric["Name"])
            test.assertNotIsInstance(value, bool)
            test.assertTrue(math.isfinite(value))


def metric_names(document: dict[str, Any]) -> list[str]:
    return [m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]]


def serve(metrics: RelayMetrics, role: str, status: int, seconds: float) -> None:
    metrics.request_started()
    metrics.request_finished(role, status, seconds)


class DocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = RelayMetrics()

    def document(self, previous: Any, current: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("dimensions", DIMENSIONS)
        document = emf_document(previous, current, timestamp_ms=1_700_000_000_123, **kwargs)
        check_emf(self, document)
        return document

    def test_structure(self) -> None:
        start = self.metrics.snapshot(at=100.0)
        serve(self.metrics, "inbound", 200, 0.010)
        document = self.document(start, self.metrics.snapshot(at=160.0))
        aws = document["_aws"]
        self.assertEqual(aws["Timestamp"], 1_700_000_000_123)
        (directive,) = aws["CloudWatchMetrics"]
        self.assertEqual(directive["Namespace"], "MTERelay")
        self.assertEqual(directive["Dimensions"], [["Service", "Role"]])
        self.assertEqual(document["Service"], "mterelay")
        self.assertEqual(document["Role"], "inbound")
        for metric in directive["Metrics"]:
            self.assertEqual(metric["Unit"], METRIC_UNITS[metric["Name"]])
        # nothing at the root but _aws, dimensions and metrics
        self.assertEqual(set(document), {"_aws", "Service", "Role", *metric_names(document)})

    def test_always_present_metrics(self) -> None:
        document = self.document(self.metrics.snapshot(at=0), self.metrics.snapshot(at=60))
        self.assertEqual(metric_names(document), [
            "RequestsProcessed", "RequestsPerSecond", "PairsCreated", "RelayErrors",
            "InFlightRequests", "StoreReachable"])
        self.assertEqual(document["RequestsProcessed"], 0)
        self.assertEqual(document["RequestsPerSecond"], 0)
        self.assertEqual(document["StoreReachable"], 1)

    def test_averages_over_the_interval(self) -> None:
        serve(self.metrics, "inbound", 200, 5.0)  # before the interval: not averaged
        start = self.metrics.snapshot(at=0)
        serve(self.metrics, "inbound", 200, 0.010)
        serve(self.metrics, "passthrough", 502, 0.030)
        self.metrics.observe_outbound(0.004)
        self.metrics.observe_upstream("inbound", 0.002)
        self.metrics.observe_upstream("passthrough", 0.004)
        self.metrics.observe_crypto("request_encode", 0.0001)
        self.metrics.observe_crypto("request_encode", 0.0003)
        self.metrics.observe_crypto("request_decode", 0.00005)
        self.metrics.observe_crypto("response_encode", 0.001)
        self.metrics.observe_crypto("response_decode", 0.002)
        document = self.document(start, self.metrics.snapshot(at=10))
        expected = {"RequestTime": 20.0, "OutboundProxyTime": 4.0, "UpstreamProxyTime": 3.0,
                    "RequestEncodeTime": 0.2, "RequestDecodeTime": 0.05,
                    "ResponseEncodeTime": 1.0, "ResponseDecodeTime": 2.0}
        for name, milliseconds in expected.items():
            self.assertAlmostEqual(document[name], milliseconds, places=4, msg=name)
            self.assertIn(name, metric_names(document))
        self.assertEqual(document["RequestsProcessed"], 2)
        self.assertAlmostEqual(document["RequestsPerSecond"], 0.2)

    def test_times_omitted_without_observations(self) -> None:
        serve(self.metrics, "inbound", 200, 0.5)
        self.metrics.observe_crypto("request_decode", 0.001)
        start = self.metrics.snapshot(at=0)
        serve(self.metrics, "inbound", 200, 0.5)  # a request, but no crypto in the interval
        document = self.document(start, self.metrics.snapshot(at=60))
        self.assertIn("RequestTime", document)
        for name in ("OutboundProxyTime", "UpstreamProxyTime", "RequestEncodeTime",
                     "RequestDecodeTime", "ResponseEncodeTime", "ResponseDecodeTime"):
            self.assertNotIn(name, document)
            self.assertNotIn(name, metric_names(document))

    def test_counts_are_interval_deltas(self) -> None:
        for _ in range(5):
            serve(self.metrics, "inbound", 200, 0.001)
        self.metrics.pair_created("inbound", 10)
        self.metrics.relay_error(562, "replay")
        first = self.metrics.snapshot(at=60)
        for _ in range(3):
            serve(self.metrics, "outbound", 200, 0.001)
        self.metrics.pair_created("outbound", 2)
        self.metrics.relay_error(560, "unknown_pair")
        self.metrics.relay_error(400, "bad_request")
        self.metrics.request_started()  # still in flight at the end
        document = self.document(first, self.metrics.snapshot(at=120))
        self.assertEqual(document["RequestsProcessed"], 3)
        self.assertEqual(document["PairsCreated"], 2)
        self.assertEqual(document["RelayErrors"], 2)
        self.assertEqual(document["InFlightRequests"], 1)
        self.assertAlmostEqual(document["RequestsPerSecond"], 0.05)

    def test_gauges_are_current_values(self) -> None:
        start = self.metrics.snapshot(at=0)
        self.metrics.set_store_reachable(False)
        document = self.document(start, self.metrics.snapshot(at=1))
        self.assertEqual(document["StoreReachable"], 0)

    def test_without_previous_counts_totals_and_no_rate(self) -> None:
        serve(self.metrics, "inbound", 200, 0.002)
        document = self.document(None, self.metrics.snapshot(at=60))
        self.assertEqual(document["RequestsProcessed"], 1)
        self.assertNotIn("RequestsPerSecond", document)
        self.assertNotIn("RequestsPerSecond", metric_names(document))
        self.assertAlmostEqual(document["RequestTime"], 2.0)

    def test_zero_length_interval_has_no_rate(self) -> None:
        document = self.document(self.metrics.snapshot(at=5), self.metrics.snapshot(at=5))
        self.assertNotIn("RequestsPerSecond", document)

    def test_counts_never_negative(self) -> None:
        busy = RelayMetrics()
        serve(busy, "inbound", 200, 1.0)
        document = self.document(busy.snapshot(at=0), self.metrics.snapshot(at=1))
        self.assertEqual(document["RequestsProcessed"], 0)
        self.assertNotIn("RequestTime", document)

    def test_region_only_when_set(self) -> None:
        snapshot = self.metrics.snapshot(at=0)
        without = self.document(None, snapshot, dimensions=emf_dimensions("outbound"))
        self.assertEqual(without["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
                         [["Service", "Role"]])
        self.assertNotIn("Region", without)
        self.assertEqual(emf_dimensions("outbound", ""),
                         {"Service": "mterelay", "Role": "outbound"})
        regional = self.document(None, snapshot,
                                 dimensions=emf_dimensions("outbound", "eu-west-1"))
        self.assertEqual(regional["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
                         [["Service", "Role", "Region"]])
        self.assertEqual(regional["Region"], "eu-west-1")
        self.assertEqual(regional["Role"], "outbound")

    def test_namespace(self) -> None:
        document = self.document(None, self.metrics.snapshot(at=0), namespace="Custom/Relay")
        self.assertEqual(document["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Custom/Relay")

    def test_invalid_dimensions_refused(self) -> None:
        snapshot = self.metrics.snapshot(at=0)
        for dimensions in ({"Role": ""}, {"Role": 5}, {"": "x"}, {"_aws": "x"},
                           {"RequestsProcessed": "x"}, {"Role": "x" * 1025},
                           {f"D{i}": "x" for i in range(31)}):
            self.assertRaises(ValueError, emf_document, None, snapshot, timestamp_ms=0,
                              dimensions=dimensions)
        for namespace in ("", "n" * 256):
            self.assertRaises(ValueError, emf_document, None, snapshot, timestamp_ms=0,
                              namespace=namespace, dimensions=DIMENSIONS)

    def test_integral_timestamp(self) -> None:
        document = emf_document(None, self.metrics.snapshot(at=0), timestamp_ms=1.9e12 + 0.7,
                                dimensions=DIMENSIONS)
        self.assertIsInstance(document["_aws"]["Timestamp"], int)

    def test_line(self) -> None:
        line = emf_line(self.document(None, self.metrics.snapshot(at=0)))
        self.assertTrue(line.endswith("\n"))
        self.assertNotIn("\n", line[:-1])
        self.assertNotIn(" ", line)
        check_emf(self, json.loads(line))

    def test_slow_rates_keep_their_precision(self) -> None:
        start = self.metrics.snapshot(at=0)
        serve(self.metrics, "inbound", 200, 0.0000123456789)
        document = self.document(start, self.metrics.snapshot(at=300))
        self.assertEqual(document["RequestsPerSecond"], 0.00333333)
        self.assertEqual(document["RequestTime"], 0.0123457)

    def test_line_refuses_non_finite(self) -> None:
        self.assertRaises(ValueError, emf_line, {"x": float("nan")})


class ReporterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = RelayMetrics()
        self.lines: list[str] = []
        self.reporter = EmfReporter(self.metrics, self.clock, self.lines.append, 60,
                                    emf_dimensions("inbound", "us-east-1"))

    def documents(self) -> list[dict[str, Any]]:
        documents = []
        for line in self.lines:
            self.assertTrue(line.endswith("\n"))
            self.assertNotIn("\n", line[:-1])
            document = json.loads(line)
            check_emf(self, document)
            documents.append(document)
        return documents

    def test_one_line_per_interval(self) -> None:
        self.reporter.startService()
        self.addCleanup(self.reporter.stopService)
        self.assertEqual(self.lines, [])
        serve(self.metrics, "inbound", 200, 0.010)
        serve(self.metrics, "inbound", 200, 0.030)
        self.clock.advance(59)
        self.assertEqual(self.lines, [])
        self.clock.advance(1)
        serve(self.metrics, "inbound", 502, 0.5)
        self.clock.advance(60)
        self.clock.advance(60)  # an idle interval
        first, second, third = self.documents()
        self.assertEqual(first["_aws"]["Timestamp"], 1_700_000_060_000)
        self.assertEqual(second["_aws"]["Timestamp"], 1_700_000_120_000)
        self.assertEqual(first["RequestsProcessed"], 2)
        self.assertAlmostEqual(first["RequestTime"], 20.0)
        self.assertEqual(first["RequestsPerSecond"], 0.0333333)
        self.assertEqual(second["RequestsProcessed"], 1)
        self.assertAlmostEqual(second["RequestTime"], 500.0)
        self.assertEqual(third["RequestsProcessed"], 0)
        self.assertNotIn("RequestTime", third)
        for document in (first, second, third):
            self.assertEqual(document["Region"], "us-east-1")
            self.assertEqual(document["Service"], "mterelay")

    def test_counts_before_start_not_reported(self) -> None:
        serve(self.metrics, "inbound", 200, 0.010)
        self.reporter.startService()
        self.addCleanup(self.reporter.stopService)
        self.clock.advance(60)
        (document,) = self.documents()
        self.assertEqual(document["RequestsProcessed"], 0)

    def test_final_flush_on_stop(self) -> None:
        self.reporter.startService()
        self.clock.advance(60)
        serve(self.metrics, "pairing", 200, 0.004)
        self.clock.advance(15)
        self.reporter.stopService()
        self.assertEqual(len(self.lines), 2)
        last = self.documents()[-1]
        self.assertEqual(last["RequestsProcessed"], 1)
        self.assertEqual(last["RequestsPerSecond"], 0.0666667)
        self.assertEqual(last["_aws"]["Timestamp"], 1_700_000_075_000)
        # stopped: no timers left, no more lines
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(600)
        self.assertEqual(len(self.lines), 2)

    def test_stop_without_start_writes_nothing(self) -> None:
        self.reporter.stopService()
        self.assertEqual(self.lines, [])

    def test_failed_write_folds_into_next_interval(self) -> None:
        attempts: list[str] = []

        def flaky(line: str) -> None:
            attempts.append(line)
            if len(attempts) == 1:
                raise OSError("stdout closed")
            self.lines.append(line)

        reporter = EmfReporter(self.metrics, self.clock, flaky, 10, emf_dimensions("inbound"))
        reporter.startService()
        self.addCleanup(reporter.stopService)
        serve(self.metrics, "inbound", 200, 0.1)
        self.clock.advance(10)
        serve(self.metrics, "inbound", 200, 0.3)
        self.clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        (document,) = self.documents()
        self.assertEqual(document["RequestsProcessed"], 2)  # both intervals, counted once
        self.assertAlmostEqual(document["RequestTime"], 200.0)
        self.assertAlmostEqual(document["RequestsPerSecond"], 0.1)
        # and the loop is still running
        self.clock.advance(10)
        self.assertEqual(len(self.lines), 2)

    def test_invalid_arguments(self) -> None:
        for interval in (0, -1, float("inf"), float("nan"), "60"):
            self.assertRaises(ValueError, EmfReporter, self.metrics, self.clock,
                              self.lines.append, interval, DIMENSIONS)
        self.assertRaises(ValueError, EmfReporter, self.metrics, self.clock, self.lines.append,
                          60, {"Role": ""})

    def test_line_writer_flushes(self) -> None:
        class Stream(io.StringIO):
            flushes = 0

            def flush(self) -> None:
                Stream.flushes += 1
                super().flush()

        stream = Stream()
        write = line_writer(stream)
        write('{"a":1}\n')
        self.assertEqual(stream.getvalue(), '{"a":1}\n')
        self.assertEqual(Stream.flushes, 1)
