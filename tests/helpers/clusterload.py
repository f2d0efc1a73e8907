"""Load through relay replicas while something happens to the Redis Cluster.

``ClusterLoad`` sends bursts of concurrent ``RelayClient`` requests (every
one to its own upstream path, so a duplicate is visible as a path the
upstream saw twice) and records, per request, when it started and ended and
how it was answered: an HTTP status, or the exception (a relay 55x not
recovered, a refused pairing, a timeout = a hang).  The fault tests and
``bench/cluster.py`` read the same records.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import attr
import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from mterelay.client.errors import PairingFailed
from mterelay.protocol.errors import RelayError

__all__ = ["ClusterLoad", "Outcome"]


@attr.s(slots=True)
class Outcome:
    index: int = attr.ib()
    path: str = attr.ib()
    start: float = attr.ib()
    end: float | None = attr.ib(default=None)
    #: an HTTP status (200, 503, ...), or a short name of what went wrong
    status: Any = attr.ib(default=None)


class ClusterLoad:
    """``bursts`` bursts of ``size`` concurrent requests, ``gap`` seconds apart."""

    def __init__(self, client: Any, url: str, *, bursts: int = 10, size: int = 50,
                 gap: float = 0.8, timeout: float = 30.0, prefix: str = "/api/item") -> None:
        self.client = client
        self.url = url
        self.bursts = bursts
        self.size = size
        self.gap = gap
        self.timeout = timeout
        self.prefix = prefix
        self.outcomes: list[Outcome] = []
        self.t0 = 0.0

    def run(self, during: Callable[[], Any] | None = None, at: float = 1.0,
            after_fault: float = 0.0) -> defer.Deferred:
        """Fire (outcomes, what ``during`` returned) once every request is answered.

        ``during`` (blocking; run in a thread) starts ``at`` seconds after the first burst.
        With ``after_fault``, bursts go on past ``bursts`` until one starts more than
        ``after_fault`` seconds after ``during`` returned (at most 4 × ``bursts``): on a
        loaded machine a failover can take longer than the planned load lasts, and a
        test of recovery needs requests after it.
        """
        self.t0 = reactor.seconds()
        fault: Any = defer.succeed(None)
        fault_end: list[float] = []
        if during is not None:
            from twisted.internet.threads import deferToThread

            fault = deferLater(reactor, at, deferToThread, during)

            def ended(result: Any) -> Any:
                fault_end.append(reactor.seconds())
                return result

            fault.addBoth(ended)
        calls: list[defer.Deferred] = []
        fired = defer.Deferred()

        def more(burst: int) -> bool:
            if burst < self.bursts:
                return True
            if not after_fault or burst >= 4 * self.bursts:
                return False
            return not fault_end or reactor.seconds() - fault_end[0] <= after_fault

        def fire(burst: int) -> None:
            calls.extend(self._burst(burst))
            if more(burst + 1):
                due = self.t0 + (burst + 1) * self.gap
                reactor.callLater(max(0.0, due - reactor.seconds()), fire, burst + 1)
            else:
                fired.callback(None)

        fire(0)
        d = fired.addCallback(lambda _: defer.gatherResults(calls))
        both = defer.gatherResults([d, fault])
        return both.addCallback(lambda results: (self.outcomes, results[1]))

    def _burst(self, burst: int) -> list[defer.Deferred]:
        return [self._one(burst * self.size + i) for i in range(self.size)]

    def _one(self, index: int) -> defer.Deferred:
        path = f"{self.prefix}/{index}"
        outcome = Outcome(index, path, reactor.seconds() - self.t0)
        self.outcomes.append(outcome)
        d = self.client.request("GET", self.url + path)
        d.addCallback(lambda response: treq.content(response).addCallback(
            lambda _: response.code))
        d.addTimeout(self.timeout, reactor)

        def done(result: Any) -> None:
            outcome.end = reactor.seconds() - self.t0
            if isinstance(result, int):
                outcome.status = result
            elif result.check(defer.TimeoutError, defer.CancelledError):
                outcome.status = "hang"
            elif result.check(PairingFailed):
                outcome.status = result.value.status
            elif result.check(RelayError):
                outcome.status = result.value.code
            else:
                outcome.status = type(result.value).__name__

        return d.addBoth(done)


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts by status, the failure window and the latency of the successes."""
    statuses = collections.Counter(o.status for o in outcomes)
    failed = [o for o in outcomes if o.status != 200]
    ok = sorted(o.end - o.start for o in outcomes if o.status == 200)
    result: dict[str, Any] = {"total": len(outcomes), "statuses": dict(statuses),
                              "failed": len(failed)}
    if failed:
        result["first_failure_start"] = round(min(o.start for o in failed), 3)
        result["last_failure_end"] = round(max(o.end for o in failed), 3)
    if ok:
        result["latency_ms"] = {
            "p50": round(1000 * ok[len(ok) // 2], 1),
            "p90": round(1000 * ok[int(len(ok) * 0.9)], 1),
            "p99": round(1000 * ok[min(len(ok) - 1, int(len(ok) * 0.99))], 1)}
    return result
