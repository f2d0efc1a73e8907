"""Stopwatch / crypto_stopwatch: per-request crypto time, summed and reported once.

``perf_counter`` is replaced by a fake that advances only when told, so the
sums are exact and nothing depends on how fast this machine is.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mterelay.http import timing
from mterelay.http.observe import NO_METRICS
from mterelay.service.metrics import RelayMetrics
from mterelay.http.timing import Stopwatch, crypto_stopwatch


class FakeCounter:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class StopwatchCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.counter = FakeCounter()
        self.patch(timing, "perf_counter", self.counter)
        self.observed: list[float] = []

    def taking(self, seconds: float, result: Any = None) -> Any:
        def work(*args: Any, **kwargs: Any) -> Any:
            self.counter.now += seconds
            return result if result is not None else (args, kwargs)
        return work


class StopwatchTests(StopwatchCase):
    def test_returns_the_result_and_passes_arguments(self) -> None:
        watch = Stopwatch(self.observed.append)
        self.assertEqual(watch.time(self.taking(0.5), 1, 2, key="v"), ((1, 2), {"key": "v"}))

    def test_sums_every_piece(self) -> None:
        watch = Stopwatch(self.observed.append)
        watch.time(self.taking(0.25))
        self.counter.now += 10  # time between pieces is not counted
        watch.time(self.taking(0.5))
        watch.time(self.taking(0.125))
        self.assertEqual(watch.total, 0.875)
        self.assertEqual(self.observed, [])
        watch.report()
        self.assertEqual(self.observed, [0.875])

    def test_reports_once(self) -> None:
        watch = Stopwatch(self.observed.append)
        watch.time(self.taking(1.0))
        watch.report()
        watch.report()
        watch.time(self.taking(1.0))  # late pieces are summed but never reported
        watch.report()
        self.assertEqual(self.observed, [1.0])
        self.assertEqual(watch.total, 2.0)

    def test_nothing_timed_nothing_reported(self) -> None:
        watch = Stopwatch(self.observed.append)
        watch.report()
        self.assertEqual(self.observed, [])
        self.assertEqual(watch.total, 0.0)

    def test_nowhere_to_report(self) -> None:
        watch = Stopwatch(None)
        watch.time(self.taking(0.5))
        watch.report()
        self.assertEqual(watch.total, 0.5)

    def test_exception_still_counted(self) -> None:
        def broken() -> None:
            self.counter.now += 0.75
            raise ValueError("bad tag")

        watch = Stopwatch(self.observed.append)
        with self.assertRaises(ValueError):
            watch.time(broken)
        self.assertEqual(watch.total, 0.75)
        watch.time(self.taking(0.25))
        watch.report()
        self.assertEqual(self.observed, [1.0])

    def test_exception_alone_reported(self) -> None:
        watch = Stopwatch(self.observed.append)

        def broken() -> None:
            self.counter.now += 0.5
            raise KeyError("x")

        self.assertRaises(KeyError, watch.time, broken)
        watch.report()
        self.assertEqual(self.observed, [0.5])


class CryptoStopwatchTests(StopwatchCase):
    def histogram(self, metrics: RelayMetrics, kind: str) -> tuple[float | None, float | None]:
        name = f"mterelay_{kind}_seconds"
        return (metrics.registry.get_sample_value(f"{name}_count"),
                metrics.registry.get_sample_value(f"{name}_sum"))

    def test_reports_into_the_kind(self) -> None:
        metrics = RelayMetrics()
        watch = crypto_stopwatch(metrics, "request_decode")
        watch.time(self.taking(0.002))
        watch.time(self.taking(0.003))
        watch.report()
        count, total = self.histogram(metrics, "request_decode")
        self.assertEqual(count, 1.0)
        self.assertAlmostEqual(total, 0.005)
        for other in ("request_encode", "response_encode", "response_decode"):
            self.assertEqual(self.histogram(metrics, other), (0.0, 0.0), other)

    def test_one_observation_per_request(self) -> None:
        metrics = RelayMetrics()
        for _ in range(3):
            watch = crypto_stopwatch(metrics, "response_encode")
            watch.time(self.taking(0.001))
            watch.report()
            watch.report()
        self.assertEqual(self.histogram(metrics, "response_encode")[0], 3.0)

    def test_nothing_timed_no_observation(self) -> None:
        metrics = RelayMetrics()
        crypto_stopwatch(metrics, "response_decode").report()
        self.assertEqual(self.histogram(metrics, "response_decode"), (0.0, 0.0))

    def test_without_metrics(self) -> None:
        watch = crypto_stopwatch(NO_METRICS, "request_encode")
        self.assertEqual(watch.time(self.taking(0.5, result="sealed")), "sealed")
        watch.report()
        self.assertEqual(watch.total, 0.5)
