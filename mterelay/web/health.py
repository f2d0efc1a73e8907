"""The operations listener: ``/metrics``, ``/healthz`` and ``/readyz``.

Served on its own listener, never on the public port: metrics and readiness
details are for the platform, not for whoever can reach the relay.  The routes:

* ``GET /metrics``: Prometheus text exposition of the relay's registry;
* ``GET /healthz``: 200 while the process runs (liveness: restart me if not);
* ``GET /readyz``: 200 when the relay can serve, 503 with reasons otherwise
  (readiness: stop sending me traffic) — draining, or the pair store not
  answering.

``Readiness`` coalesces concurrent probes into one store ping and bounds it
with a timeout, so a burst of probes (several kubelets, a load balancer, a
curl loop) costs Redis one PING and never hangs a probe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import (
    Deferred,
    TimeoutError,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mterelay.store.interface import IPairStore, StoreUnavailable
from mterelay.web.responses import error_body, json_body

if TYPE_CHECKING:  # types only: the service layer above passes them in
    from mterelay.service.metrics import RelayMetrics

__all__ = ["OperationsResource", "Readiness", "ReadinessCheck"]

log = Logger(namespace="mterelay.health")

METRICS_PATH = b"/metrics"
HEALTH_PATH = b"/healthz"
READY_PATH = b"/readyz"
ALLOW = b"GET, HEAD"
# Failure texts in a reason are cut here: enough to diagnose, never a dump.
MAX_WHY = 200


class ReadinessCheck(Protocol):
    """What ``OperationsResource`` needs: reasons not to serve, empty when ready."""

    def check(self) -> Deferred:
        """Fire a list of reason strings (never fail)."""


class Readiness:
    """Is this relay ready for traffic?  ``check()`` fires the reasons it is not.

    ``draining`` is set by the shutdown code: the reason is then "draining"
    and no ping is made (the store may already be stopping).  Setting it
    also sets the ``mterelay_draining`` gauge, so the two cannot disagree.

    Otherwise the store is pinged, at most one ping at a time: probes
    arriving while one is out share its answer.  A ping that fails, answers
    False or takes longer than ``timeout`` seconds gives "store unreachable:
    <why>".  Each answer also sets the store_reachable gauge, so the gauge
    moves even when no request touches the store.
    """

    def __init__(self, store: IPairStore, clock: IReactorTime, metrics: RelayMetrics,
                 timeout: float = 2.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._draining = False
        self._timeout = timeout
        self._waiters: list[Deferred] = []
        self._last: list[str] | None = None

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, draining: bool) -> None:
        self._draining = bool(draining)
        self._metrics.set_draining(self._draining)

    def check(self) -> Deferred:
        """Fire the list of reasons this relay is not ready ([] when ready); never fails."""
        if self.draining:
            return succeed(self._settled(["draining"]))
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._probe()
        return waiter

    def _probe(self) -> None:
        d = maybeDeferred(self._store.ping)
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._answered, self._failed)
        d.addCallback(self._deliver)
        d.addErrback(lambda failure: log.failure("readiness probe", failure))

    def _answered(self, answer: Any) -> list[str]:
        if answer is True:
            self._metrics.set_store_reachable(True)
            return []
        self._metrics.set_store_reachable(False)
        return ["store unreachable: ping failed"]

    def _failed(self, failure: Failure) -> list[str]:
        self._metrics.set_store_reachable(False)
        if failure.check(TimeoutError):
            why = f"no answer within {self._timeout:g} s"
        elif failure.check(StoreUnavailable):
            # the stores word these for operators and redact credentials
            why = failure.getErrorMessage() or "unavailable"
        else:
            log.failure("pair store ping failed", failure)
            why = failure.type.__name__
        return [f"store unreachable: {why[:MAX_WHY]}"]

    def _deliver(self, reasons: list[str]) -> None:
        if self.draining:  # began while the ping was out
            reasons = ["draining", *reasons]
        reasons = self._settled(reasons)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # a probe whose client left was cancelled
                waiter.callback(list(reasons))

    def _settled(self, reasons: list[str]) -> list[str]:
        """Log readiness changes once, not on every probe."""
        if reasons != self._last:
            if reasons:
                log.warn("Not ready: {reasons}", reasons="; ".join(reasons))
            elif self._last is not None:
                log.info("Ready again")
            self._last = reasons
        return reasons


class OperationsResource(Resource):
    """The whole operations listener: one leaf dispatching on the exact path."""

    isLeaf = True

    def __init__(self, metrics: RelayMetrics, readiness: ReadinessCheck) -> None:
        super().__init__()
        self.metrics = metrics
        self.readiness = readiness

    def render(self, request: IRequest) -> Any:
        path = request.path
        if path not in (METRICS_PATH, HEALTH_PATH, READY_PATH):
            return error_body(request, 404, "Not found",
                              "operations routes: /metrics, /healthz, /readyz")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", ALLOW)
            return error_body(request, 405, "Method not allowed",
                              f"{path.decode('ascii')} answers GET and HEAD")
        if path == METRICS_PATH:
            return self._render_metrics(request)
        if path == HEALTH_PATH:
            return json_body(request, 200, {"status": "ok"})
        return self._render_ready(request)

    def _render_metrics(self, request: IRequest) -> bytes:
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.exposition(
            accept.decode("latin-1") if accept else None)
        request.setResponseCode(200)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body

    def _render_ready(self, request: IRequest) -> Any:
        waiting: list[Deferred] = []
        gone: list[Failure] = []

        def left(failure: Failure) -> None:
            # the prober hung up: stop waiting (a shared ping goes on for the others)
            gone.append(failure)
            for pending in waiting:
                pending.cancel()

        def answer(reasons: list[str]) -> None:
            if gone:
                return
            if reasons:
                body = json_body(request, 503, {"status": "not ready", "reasons": reasons})
            else:
                body = json_body(request, 200, {"status": "ready"})
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if gone:
                return
            log.failure("readiness check failed", failure)
            request.write(json_body(request, 503, {"status": "not ready",
                                                   "reasons": ["readiness check failed"]}))
            request.finish()

        # registered first: a check answering at once finishes the request
        request.notifyFinish().addErrback(left)
        pending = self.readiness.check()
        waiting.append(pending)
        pending.addCallbacks(answer, failed)
        return NOT_DONE_YET
