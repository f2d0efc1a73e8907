"""Drainer: one graceful drain of a site, on a fake clock and a fake site."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.shutdown import Drainer, DrainSummary


class FakeSite:
    """The part of RelaySite the Drainer uses: ``start_draining``, ``when_drained``, ``undelivered``."""

    def __init__(self, active: int = 0) -> None:
        self.active: set[Any] = {object() for _ in range(active)}
        self.start_calls = 0
        self.idle_waiters: list[Deferred[None]] = []
        self.broken = False

    def start_draining(self) -> int:
        self.start_calls += 1
        if self.broken:
            raise RuntimeError("channel bookkeeping broke")
        return len(self.active)

    def undelivered(self) -> int:
        return len(self.active)

    def when_drained(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if not self.active:
            waiter.callback(None)
        else:
            self.idle_waiters.append(waiter)
        return waiter

    def finish_one(self) -> None:
        self.active.pop()
        if not self.active:
            waiters, self.idle_waiters = self.idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


class Calls:
    def __init__(self, result: Any = None) -> None:
        self.count = 0
        self.result = result

    def __call__(self) -> Any:
        self.count += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class DrainerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def drainer(self, site: FakeSite, grace: float = 25.0, stop: Any = None,
                on_draining: Any = None) -> Drainer:
        self.stop = stop if stop is not None else Calls()
        self.on_draining = on_draining if on_draining is not None else Calls()
        return Drainer(self.clock, site, grace, self.stop, self.on_draining)

    def logged(self, namespace: str = "mterelay.shutdown") -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == namespace]

    def test_not_draining_until_asked(self) -> None:
        site = FakeSite(1)
        drainer = self.drainer(site)
        self.assertFalse(drainer.draining)
        self.assertEqual((self.stop.count, self.on_draining.count, site.start_calls), (0, 0, 0))

    def test_idle_site_drains_at_once(self) -> None:
        site = FakeSite()
        drainer = self.drainer(site)
        summary = self.successResultOf(drainer.drain())
        self.assertTrue(drainer.draining)
        self.assertEqual(summary, DrainSummary(in_flight=0, completed=0, abandoned=0,
                                               seconds=0.0))
        self.assertEqual((self.stop.count, self.on_draining.count, site.start_calls), (1, 1, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_completes_when_idle(self) -> None:
        site = FakeSite(3)
        drained = self.drainer(site).drain()
        self.assertEqual((self.stop.count, self.on_draining.count), (1, 1))
        self.clock.advance(2)
        site.finish_one()
        site.finish_one()
        self.assertNoResult(drained)
        self.clock.advance(1.5)
        site.finish_one()
        summary = self.successResultOf(drained)
        self.assertEqual(summary, DrainSummary(in_flight=3, completed=3, abandoned=0,
                                               seconds=3.5))
        # The grace timer was cancelled.
        self.assertEqual(self.clock.getDelayedCalls(), [])
        [done] = [e for e in self.logged() if e["log_format"].startswith("Drained")]
        self.assertEqual(done["completed"], 3)

    def test_grace_over_abandons(self) -> None:
        site = FakeSite(4)
        drainer = self.drainer(site, grace=10)
        drained = drainer.drain()
        site.finish_one()
        self.clock.advance(9.999)
        self.assertNoResult(drained)
        self.clock.advance(0.001)
        summary = self.successResultOf(drained)
        self.assertEqual(summary, DrainSummary(in_flight=4, completed=1, abandoned=3,
                                               seconds=10.0))
        [warning] = [e for e in self.logged() if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning["abandoned"], 3)
        # Requests finishing after the grace change nothing.
        site.finish_one()
        site.finish_one()
        site.finish_one()
        self.assertEqual(self.successResultOf(drainer.drain()), summary)
        self.assertEqual(len([e for e in self.logged() if e["log_level"] == LogLevel.warn]), 1)

    def test_zero_grace(self) -> None:
        site = FakeSite(2)
        drained = self.drainer(site, grace=0).drain()
        self.assertNoResult(drained)  # the timer runs on the next turn
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(drained),
                         DrainSummary(in_flight=2, completed=0, abandoned=2, seconds=0.0))

    def test_zero_grace_idle(self) -> None:
        drained = self.drainer(FakeSite(), grace=0).drain()
        self.assertEqual(self.successResultOf(drained).abandoned, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_second_drain_same_outcome(self) -> None:
        site = FakeSite(1)
        drainer = self.drainer(site)
        first = drainer.drain()
        second = drainer.drain()
        self.assertIsNot(first, second)
        self.assertEqual((self.stop.count, self.on_draining.count, site.start_calls), (1, 1, 1))
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.clock.advance(4)
        site.finish_one()
        summary = self.successResultOf(first)
        self.assertEqual(self.successResultOf(second), summary)
        # And after it is over, too.
        self.assertEqual(self.successResultOf(drainer.drain()), summary)
        self.assertEqual((self.stop.count, self.on_draining.count, site.start_calls), (1, 1, 1))

    def test_callers_cannot_spoil_each_others_result(self) -> None:
        drainer = self.drainer(FakeSite())
        first = drainer.drain()
        first.addCallback(lambda _: "changed by a caller")
        self.assertIsInstance(self.successResultOf(drainer.drain()), DrainSummary)

    def test_order_of_steps(self) -> None:
        steps: list[str] = []
        site = FakeSite(1)
        original = site.start_draining
        site.start_draining = lambda: (steps.append("site"), original())[1]  # type: ignore
        drainer = self.drainer(site, stop=lambda: steps.append("stop"),
                               on_draining=lambda: steps.append("readiness"))
        drainer.drain()
        self.assertEqual(steps, ["readiness", "stop", "site"])

    def test_stop_accepting_deferred_not_waited_for(self) -> None:
        site = FakeSite()
        closing: Deferred[None] = Deferred()
        drained = self.drainer(site, stop=Calls(closing)).drain()
        self.successResultOf(drained)
        closing.callback(None)

    def test_stop_accepting_failure_logged_drain_proceeds(self) -> None:
        site = FakeSite(1)
        drained = self.drainer(site, stop=Calls(fail(OSError("port close failed")))).drain()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(site.start_calls, 1)
        site.finish_one()
        self.assertEqual(self.successResultOf(drained).completed, 1)

    def test_stop_accepting_raising_logged_drain_proceeds(self) -> None:
        site = FakeSite(1)
        drained = self.drainer(site, stop=Calls(RuntimeError("no port"))).drain()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((self.stop.count, site.start_calls), (1, 1))
        self.clock.advance(25)
        self.assertEqual(self.successResultOf(drained).abandoned, 1)

    def test_start_draining_raising_still_fires(self) -> None:
        site = FakeSite(2)
        site.broken = True
        drainer = self.drainer(site)
        drained = drainer.drain()
        summary = self.successResultOf(drained)
        self.assertEqual(summary, DrainSummary(in_flight=2, completed=0, abandoned=2,
                                               seconds=0.0))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(drainer.draining)
        # A second SIGTERM gets the same, fired, outcome; nothing runs twice.
        self.assertEqual(self.successResultOf(drainer.drain()), summary)
        self.assertEqual((self.stop.count, self.on_draining.count, site.start_calls), (1, 1, 1))

    def test_summary_rounds_seconds(self) -> None:
        site = FakeSite(1)
        drained = self.drainer(site).drain()
        self.clock.advance(1.23456)
        site.finish_one()
        self.assertEqual(self.successResultOf(drained).seconds, 1.235)
