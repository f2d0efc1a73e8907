"""The operations listener (/metrics, /healthz, /readyz) and Readiness, in memory."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.metrics import RelayMetrics
from mterelay.store.interface import StoreLimits, StoreUnavailable
from mterelay.store.memory import MemoryPairStore
from mterelay.web.health import OperationsResource, Readiness


class PingStore:
    """Only ``ping`` matters here: answers as scripted, or hangs until fired."""

    limits = StoreLimits()

    def __init__(self, answer: Any = "hang") -> None:
        self.answer = answer
        self.pings: list[defer.Deferred] = []

    def ping(self) -> defer.Deferred:
        if isinstance(self.answer, BaseException):
            if isinstance(self.answer, RuntimeError):
                raise self.answer  # a store that raises instead of failing
            d = defer.fail(self.answer)
        elif self.answer == "hang":
            d = defer.Deferred()
        else:
            d = defer.succeed(self.answer)
        self.pings.append(d)
        return d


class Harness:
    """An OperationsResource with a fake clock, driven by StubTreq."""

    def __init__(self, store: Any = None, timeout: float = 2.0) -> None:
        self.clock = task.Clock()
        self.metrics = RelayMetrics()
        self.store = store if store is not None else MemoryPairStore(self.clock)
        self.readiness = Readiness(self.store, self.clock, self.metrics, timeout=timeout)
        self.client = StubTreq(OperationsResource(self.metrics, self.readiness))

    def send(self, method: str, path: str, **kwargs: Any) -> defer.Deferred:
        d = self.client.request(method, "http://ops.test" + path, **kwargs)
        self.client.flush()
        return d

    def reachable(self) -> float | None:
        return self.metrics.registry.get_sample_value("mterelay_store_reachable")


class Base(SynchronousTestCase):
    def answer(self, d: defer.Deferred, harness: Harness) -> tuple[Any, bytes]:
        response = self.successResultOf(d)
        body = self.successResultOf(harness.client.content(response))
        return response, body

    def call(self, harness: Harness, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        return self.answer(harness.send(method, path, **kwargs), harness)

    def assertJson(self, response: Any, body: bytes, status: int, payload: Any) -> None:
        self.assertEqual(response.code, status)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json; charset=utf-8"])
        self.assertEqual(json.loads(body), payload)


class RouteTests(Base):
    def setUp(self) -> None:
        self.ops = Harness()

    def test_healthz(self) -> None:
        response, body = self.call(self.ops, "GET", "/healthz")
        self.assertJson(response, body, 200, {"status": "ok"})
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_healthz_even_when_draining_and_store_down(self) -> None:
        ops = Harness(PingStore(StoreUnavailable("down")))
        ops.readiness.draining = True
        response, body = self.call(ops, "GET", "/healthz")
        self.assertJson(response, body, 200, {"status": "ok"})
        self.assertEqual(ops.store.pings, [])

    def test_metrics(self) -> None:
        self.ops.metrics.request_started()
        self.ops.metrics.request_finished("inbound", 200, 0.01)
        response, body = self.call(self.ops, "GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.assertIn("mterelay_build_info", families)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for s in families["mterelay_requests"].samples}
        key = ("mterelay_requests_total", (("role", "inbound"), ("status_class", "2xx")))
        self.assertEqual(samples[key], 1.0)

    def test_metrics_openmetrics_negotiated(self) -> None:
        response, body = self.call(
            self.ops, "GET", "/metrics",
            headers={"accept": ["application/openmetrics-text; version=1.0.0"]})
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0]
                        .startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_head(self) -> None:
        for path in ("/healthz", "/metrics", "/readyz"):
            response, body = self.call(self.ops, "HEAD", path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(body, b"", path)

    def test_query_string_ignored(self) -> None:
        response, body = self.call(self.ops, "GET", "/healthz?verbose=1")
        self.assertJson(response, body, 200, {"status": "ok"})

    def test_unknown_paths_404(self) -> None:
        for path in ("/", "/metrics/", "/health", "/readyz/x", "/api/mte-echo", "/METRICS"):
            response, body = self.call(self.ops, "GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body)["code"], 404, path)
        # an unknown path is 404 whatever the method
        response, _ = self.call(self.ops, "POST", "/nope", data=b"x")
        self.assertEqual(response.code, 404)

    def test_bad_methods_405_with_allow(self) -> None:
        ops = Harness(PingStore(True))
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            for path in ("/metrics", "/healthz", "/readyz"):
                response, body = self.call(ops, method, path)
                self.assertEqual(response.code, 405, (method, path))
                self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
                self.assertEqual(json.loads(body)["code"], 405)
        self.assertEqual(ops.store.pings, [])  # refused before any probe


class ReadyzTests(Base):
    def test_ready_with_memory_store(self) -> None:
        ops = Harness()
        response, body = self.call(ops, "GET", "/readyz")
        self.assertJson(response, body, 200, {"status": "ready"})
        self.assertEqual(ops.reachable(), 1.0)

    def test_draining(self) -> None:
        ops = Harness(PingStore(True))
        ops.readiness.draining = True
        response, body = self.call(ops, "GET", "/readyz")
        self.assertJson(response, body, 503, {"status": "not ready", "reasons": ["draining"]})
        self.assertEqual(ops.store.pings, [])

    def test_store_unavailable(self) -> None:
        ops = Harness(PingStore(StoreUnavailable("no connection to Redis at redis://r:6379/0")))
        response, body = self.call(ops, "GET", "/readyz")
        self.assertJson(response, body, 503, {
            "status": "not ready",
            "reasons": ["store unreachable: no connection to Redis at redis://r:6379/0"]})
        self.assertEqual(ops.reachable(), 0.0)

    def test_ping_false(self) -> None:
        ops = Harness(PingStore(False))
        response, body = self.call(ops, "GET", "/readyz")
        self.assertJson(response, body, 503, {
            "status": "not ready", "reasons": ["store unreachable: ping failed"]})
        self.assertEqual(ops.reachable(), 0.0)

    def test_unexpected_ping_error_named_not_dumped(self) -> None:
        ops = Harness(PingStore(RuntimeError("secret internals")))
        response, body = self.call(ops, "GET", "/readyz")
        self.assertJson(response, body, 503, {
            "status": "not ready", "reasons": ["store unreachable: RuntimeError"]})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_hanging_store_times_out(self) -> None:
        store = PingStore("hang")
        ops = Harness(store, timeout=2.0)
        d = ops.send("GET", "/readyz")
        ops.clock.advance(1.999)
        ops.client.flush()
        self.assertNoResult(d)
        ops.clock.advance(0.001)
        ops.client.flush()
        response, body = self.answer(d, ops)
        self.assertJson(response, body, 503, {
            "status": "not ready", "reasons": ["store unreachable: no answer within 2 s"]})
        self.assertEqual(ops.reachable(), 0.0)
        # the store answering late is ignored (no AlreadyCalledError), gauge unchanged
        store.pings[0].callback(True)
        self.assertEqual(ops.reachable(), 0.0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_recovers(self) -> None:
        store = PingStore(StoreUnavailable("down"))
        ops = Harness(store)
        response, _ = self.call(ops, "GET", "/readyz")
        self.assertEqual(response.code, 503)
        store.answer = True
        response, body = self.call(ops, "GET", "/readyz")
        self.assertJson(response, body, 200, {"status": "ready"})
        self.assertEqual(ops.reachable(), 1.0)

    def test_prober_hanging_up_is_harmless(self) -> None:
        store = PingStore("hang")
        ops = Harness(store)
        gone = ops.send("GET", "/readyz")
        waiting = ops.send("GET", "/readyz")
        self.assertEqual(len(store.pings), 1)
        gone.cancel()
        ops.client.flush()
        self.failureResultOf(gone)
        store.pings[0].callback(True)
        ops.client.flush()
        # the other prober still gets its answer; no finish-after-disconnect error
        response, body = self.answer(waiting, ops)
        self.assertJson(response, body, 200, {"status": "ready"})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_failing_readiness_object(self) -> None:
        class Broken:
            def check(self) -> defer.Deferred:
                return defer.fail(ZeroDivisionError())

        metrics = RelayMetrics()
        client = StubTreq(OperationsResource(metrics, Broken()))
        d = client.get("http://ops.test/readyz")
        client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(client.content(response))
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body), {"status": "not ready",
                                            "reasons": ["readiness check failed"]})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ReadinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.metrics = RelayMetrics()
        self.store = PingStore("hang")
        self.readiness = Readiness(self.store, self.clock, self.metrics, timeout=2.0)

    def reachable(self) -> float | None:
        return self.metrics.registry.get_sample_value("mterelay_store_reachable")

    def test_timeout_must_be_positive(self) -> None:
        for timeout in (0, -1, float("nan")):
            self.assertRaises(ValueError, Readiness, self.store, self.clock, self.metrics,
                              timeout=timeout)

    def test_memory_store_answers_at_once(self) -> None:
        readiness = Readiness(MemoryPairStore(self.clock), self.clock, self.metrics)
        self.assertEqual(self.successResultOf(readiness.check()), [])

    def test_concurrent_probes_share_one_ping(self) -> None:
        checks = [self.readiness.check() for _ in range(50)]
        self.assertEqual(len(self.store.pings), 1)
        for d in checks:
            self.assertNoResult(d)
        self.store.pings[0].callback(True)
        results = [self.successResultOf(d) for d in checks]
        self.assertEqual(results, [[]] * 50)
        # each prober gets its own list
        results[0].append("mutated")
        self.assertEqual(results[1], [])
        # the next probe after the answer pings again
        self.readiness.check()
        self.assertEqual(len(self.store.pings), 2)

    def test_shared_failure_reaches_every_prober(self) -> None:
        checks = [self.readiness.check() for _ in range(3)]
        self.store.pings[0].errback(StoreUnavailable("Redis get failed: ConnectionError: x"))
        expected = ["store unreachable: Redis get failed: ConnectionError: x"]
        self.assertEqual([self.successResultOf(d) for d in checks], [expected] * 3)
        self.assertEqual(self.reachable(), 0.0)

    def test_timeout_shared_and_single(self) -> None:
        checks = [self.readiness.check() for _ in range(3)]
        self.clock.advance(2)
        expected = ["store unreachable: no answer within 2 s"]
        self.assertEqual([self.successResultOf(d) for d in checks], [expected] * 3)
        self.assertEqual(len(self.store.pings), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_cancels_the_timeout(self) -> None:
        d = self.readiness.check()
        self.store.pings[0].callback(True)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_prober_does_not_break_the_others(self) -> None:
        first, second = self.readiness.check(), self.readiness.check()
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.store.pings[0].callback(True)
        self.assertEqual(self.successResultOf(second), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_gauge_follows_both_ways(self) -> None:
        self.store.answer = False
        self.successResultOf(self.readiness.check())
        self.assertEqual(self.reachable(), 0.0)
        self.store.answer = True
        self.successResultOf(self.readiness.check())
        self.assertEqual(self.reachable(), 1.0)

    def test_draining_begun_during_ping(self) -> None:
        d = self.readiness.check()
        self.readiness.draining = True
        self.store.pings[0].errback(StoreUnavailable("down"))
        self.assertEqual(self.successResultOf(d), ["draining", "store unreachable: down"])

    def test_draining_then_not(self) -> None:
        gauge = self.metrics.registry.get_sample_value
        self.assertIs(self.readiness.draining, False)
        self.assertEqual(gauge("mterelay_draining"), 0.0)
        self.readiness.draining = True
        self.assertEqual(gauge("mterelay_draining"), 1.0)
        self.assertEqual(self.successResultOf(self.readiness.check()), ["draining"])
        self.assertEqual(self.store.pings, [])
        self.readiness.draining = False
        self.assertEqual(gauge("mterelay_draining"), 0.0)
        self.store.answer = True
        self.assertEqual(self.successResultOf(self.readiness.check()), [])

    def test_long_store_messages_cut(self) -> None:
        self.store.answer = StoreUnavailable("x" * 1000)
        (reason,) = self.successResultOf(self.readiness.check())
        self.assertEqual(reason, "store unreachable: " + "x" * 200)

    def test_empty_store_message(self) -> None:
        self.store.answer = StoreUnavailable()
        self.assertEqual(self.successResultOf(self.readiness.check()),
                         ["store unreachable: unavailable"])

    def test_changes_logged_once(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.store.answer = False
        for _ in range(3):
            self.readiness.check()
        self.store.answer = True
        for _ in range(3):
            self.readiness.check()
        mine = [(e["log_level"], e["log_format"]) for e in events
                if e.get("log_namespace") == "mterelay.health"]
        self.assertEqual(mine, [(LogLevel.warn, "Not ready: {reasons}"),
                                (LogLevel.info, "Ready again")])
