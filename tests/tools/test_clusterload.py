"""The fault tests' load generator keeps loading past a slow fault when asked."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mterelay.protocol.errors import StateNotFound
from tests.helpers.clusterload import ClusterLoad


class AnsweringClient:
    """Every request answered at once, with a relay error (no network needed)."""

    def request(self, method: str, url: str) -> defer.Deferred:
        return defer.fail(StateNotFound("test"))


class AfterFaultTests(TestCase):
    def load(self, after_fault: float) -> defer.Deferred:
        load = ClusterLoad(AnsweringClient(), "http://127.0.0.1:1", bursts=3, size=2, gap=0.05)
        # The fault outlasts the 3 planned bursts (0.1 s) by far.
        return load.run(lambda: (time.sleep(0.4), "done")[1], at=0.0, after_fault=after_fault)

    @defer.inlineCallbacks
    def test_bursts_go_on_until_after_the_fault(self) -> Any:
        outcomes, fault = yield self.load(after_fault=0.2)
        self.assertEqual(fault, "done")
        self.assertGreater(max(o.start for o in outcomes), 0.55)
        self.assertEqual({o.status for o in outcomes}, {StateNotFound.code})
        self.assertEqual(len(outcomes) % 2, 0)

    @defer.inlineCallbacks
    def test_planned_bursts_only_without_it(self) -> Any:
        outcomes, _ = yield self.load(after_fault=0.0)
        self.assertEqual(len(outcomes), 6)
        self.assertLess(max(o.start for o in outcomes), 0.3)
