"""MeteredStore: delegation, timing, error counting and the store_reachable gauge."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mterelay.service.metrics import RelayMetrics
from mterelay.protocol.replay import Verdict
from mterelay.store.interface import (IPairStore, PairExists, StoreLimits, StoreUnavailable,
                                      pair_generation)
from mterelay.store.memory import MemoryPairStore
from mterelay.store.metered import MeteredStore

CID = "2f1c6f3e-4d0a-4b7e-9a51-3f5d2c1b0a99.ab12"
PID = "pair_AAAAAAAAAAAAAAAAAAAAAA"
GEN = pair_generation(b"secrets")


@implementer(IPairStore)
class ScriptedStore:
    """A store whose calls wait until the test fires them (or fail/raise as told)."""

    def __init__(self) -> None:
        self.limits = StoreLimits(max_messages=7)
        self.calls: list[tuple[str, tuple, defer.Deferred]] = []
        self.raise_error: Exception | None = None

    def _call(self, name: str, *args: Any) -> defer.Deferred:
        if self.raise_error is not None:
            raise self.raise_error
        d: defer.Deferred = defer.Deferred()
        self.calls.append((name, args, d))
        return d

    def start(self) -> defer.Deferred:
        return self._call("start")

    def stop(self) -> defer.Deferred:
        return self._call("stop")

    def ping(self) -> defer.Deferred:
        return self._call("ping")

    def create(self, client_id: str, pair_id: str, secrets: bytes) -> defer.Deferred:
        return self._call("create", client_id, pair_id, secrets)

    def get(self, client_id: str, pair_id: str) -> defer.Deferred:
        return self._call("get", client_id, pair_id)

    def accept(self, client_id: str, pair_id: str, seq: int, generation: str
               ) -> defer.Deferred:
        return self._call("accept", client_id, pair_id, seq, generation)

    def delete(self, client_id: str, pair_id: str, generation: str | None = None
               ) -> defer.Deferred:
        return self._call("delete", client_id, pair_id, generation)


def result_of(d: defer.Deferred) -> list:
    """[result] or [Failure], without letting a failure go unhandled."""
    out: list = []
    d.addBoth(out.append)
    return out


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = RelayMetrics()

    def value(self, name: str, op: str | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"op": op} if op else {})

    def seconds(self, op: str) -> tuple[float | None, float | None]:
        return (self.value("mterelay_store_operation_seconds_count", op),
                self.value("mterelay_store_operation_seconds_sum", op))

    def errors(self, op: str) -> float | None:
        return self.value("mterelay_store_errors_total", op)

    def reachable(self) -> float | None:
        return self.value("mterelay_store_reachable")


class WithMemoryStore(Base):
    def setUp(self) -> None:
        super().setUp()
        self.inner = MemoryPairStore(self.clock, StoreLimits(max_messages=3))
        self.store = MeteredStore(self.inner, self.metrics, self.clock)

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IPairStore, self.store))

    def test_limits_pass_through(self) -> None:
        self.assertIs(self.store.limits, self.inner.limits)

    def test_delegates_everything(self) -> None:
        self.assertIsNone(self.successResultOf(self.store.start()))
        self.assertIs(self.successResultOf(self.store.ping()), True)
        self.assertIsNone(self.successResultOf(self.store.create(CID, PID, b"secrets")))
        self.assertEqual(self.successResultOf(self.store.get(CID, PID)), b"secrets")
        self.assertIs(self.successResultOf(self.store.accept(CID, PID, 0, GEN)),
                      Verdict.ACCEPTED)
        self.assertIs(self.successResultOf(self.store.accept(CID, PID, 0, GEN)),
                      Verdict.REPLAYED)
        self.assertIsNone(self.successResultOf(self.store.delete(CID, PID)))
        self.assertIsNone(self.successResultOf(self.store.get(CID, PID)))
        self.assertIs(self.successResultOf(self.store.accept(CID, PID, 1, GEN)),
                      Verdict.UNKNOWN)
        self.assertIsNone(self.successResultOf(self.store.stop()))
        for op, count in (("start", 1), ("ping", 1), ("create", 1), ("get", 2), ("accept", 3),
                          ("delete", 1), ("stop", 1)):
            self.assertEqual(self.seconds(op), (count, 0.0), op)
            self.assertEqual(self.errors(op), 0.0, op)
        self.assertEqual(self.reachable(), 1.0)

    def test_invalid_arguments_fail_unchanged_and_count(self) -> None:
        failure = self.failureResultOf(self.store.create("bad:id", PID, b"x"), ValueError)
        self.assertIn("client id", str(failure.value))
        self.failureResultOf(self.store.accept(CID, PID, -1, GEN), ValueError)
        self.assertEqual(self.errors("create"), 1.0)
        self.assertEqual(self.errors("accept"), 1.0)
        self.assertEqual(self.seconds("create")[0], 1.0)
        # a caller's mistake says nothing about the backend
        self.assertEqual(self.reachable(), 1.0)


class WithScriptedStore(Base):
    def setUp(self) -> None:
        super().setUp()
        self.inner = ScriptedStore()
        self.store = MeteredStore(self.inner, self.metrics, self.clock)

    def test_limits_pass_through(self) -> None:
        self.assertEqual(self.store.limits.max_messages, 7)

    def test_arguments_passed_unchanged(self) -> None:
        self.store.create(CID, PID, b"s")
        self.store.get(CID, PID)
        self.store.accept(CID, PID, 42, GEN)
        self.store.delete(CID, PID)
        self.store.delete(CID, PID, GEN)
        self.assertEqual([(name, args) for name, args, _ in self.inner.calls], [
            ("create", (CID, PID, b"s")), ("get", (CID, PID)),
            ("accept", (CID, PID, 42, GEN)), ("delete", (CID, PID, None)),
            ("delete", (CID, PID, GEN))])

    def test_duration_is_the_clock_time_until_the_answer(self) -> None:
        d = self.store.get(CID, PID)
        self.clock.advance(0.25)
        self.assertNoResult(d)
        self.inner.calls[0][2].callback(b"blob")
        self.clock.advance(10)  # after the answer: not counted
        self.assertEqual(self.successResultOf(d), b"blob")
        self.assertEqual(self.seconds("get"), (1.0, 0.25))

    def test_same_deferred_chain_for_the_caller(self) -> None:
        d = self.store.accept(CID, PID, 1, GEN)
        seen = result_of(d)
        self.inner.calls[0][2].callback(Verdict.TOO_OLD)
        self.assertEqual(seen, [Verdict.TOO_OLD])

    def test_store_unavailable_propagated_counted_and_gauge_down(self) -> None:
        d = self.store.accept(CID, PID, 1, GEN)
        self.clock.advance(1.5)
        error = StoreUnavailable("no connection to Redis at redis://h:6379/0")
        self.inner.calls[0][2].errback(error)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIs(failure.value, error)
        self.assertEqual(self.errors("accept"), 1.0)
        self.assertEqual(self.seconds("accept"), (1.0, 1.5))
        self.assertEqual(self.reachable(), 0.0)

    def test_any_success_brings_the_gauge_back(self) -> None:
        self.metrics.set_store_reachable(False)
        d = self.store.get(CID, PID)
        self.inner.calls[0][2].callback(None)  # unknown pair is still an answer
        self.successResultOf(d)
        self.assertEqual(self.reachable(), 1.0)

    def test_other_failures_counted_gauge_untouched(self) -> None:
        self.metrics.set_store_reachable(False)
        d = self.store.create(CID, PID, b"s")
        self.inner.calls[0][2].errback(RuntimeError("bug"))
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.errors("create"), 1.0)
        self.assertEqual(self.reachable(), 0.0)
        self.metrics.set_store_reachable(True)
        d = self.store.delete(CID, PID)
        self.inner.calls[1][2].errback(RuntimeError("bug"))
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.reachable(), 1.0)

    def test_pair_exists_is_an_answer_not_a_store_error(self) -> None:
        self.metrics.set_store_reachable(False)
        d = self.store.create(CID, PID, b"s")
        self.inner.calls[0][2].errback(PairExists("pair exists"))
        self.failureResultOf(d, PairExists)
        self.assertEqual(self.errors("create"), 0.0)
        self.assertEqual(self.seconds("create")[0], 1.0)
        self.assertEqual(self.reachable(), 1.0)

    def test_ping_false_means_unreachable(self) -> None:
        d = self.store.ping()
        self.inner.calls[0][2].callback(False)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.reachable(), 0.0)
        self.assertEqual(self.errors("ping"), 1.0)
        self.assertEqual(self.seconds("ping")[0], 1.0)
        d = self.store.ping()
        self.inner.calls[1][2].callback(True)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.reachable(), 1.0)
        self.assertEqual(self.errors("ping"), 1.0)

    def test_start_failure(self) -> None:
        d = self.store.start()
        self.inner.calls[0][2].errback(StoreUnavailable("not reachable within 5 s; still trying"))
        self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(self.errors("start"), 1.0)
        self.assertEqual(self.reachable(), 0.0)

    def test_cancellation_is_not_a_store_error(self) -> None:
        d = self.store.get(CID, PID)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.errors("get"), 0.0)
        self.assertEqual(self.seconds("get")[0], 0.0)
        self.assertEqual(self.reachable(), 1.0)

    def test_synchronous_raise_propagates_and_counts(self) -> None:
        self.inner.raise_error = TypeError("wrong arguments")
        self.assertRaises(TypeError, self.store.get, CID, PID)
        self.assertEqual(self.errors("get"), 1.0)
        self.assertEqual(self.seconds("get")[0], 1.0)
        self.assertEqual(self.reachable(), 1.0)
