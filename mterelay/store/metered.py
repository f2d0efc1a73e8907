"""A pair store wrapper that times every call and tracks whether the backend answers.

``MeteredStore`` sits between the relay and the real store (memory or Redis)
so the relay code stays free of metric calls around each store operation,
and both stores are measured the same way.  Results and failures pass
through unchanged: the wrapper only observes.

The ``mterelay_store_reachable`` gauge follows the calls themselves rather
than a separate poller: a ``StoreUnavailable`` failure (or a ping answering
False) sets it to 0, any answered call sets it to 1.  Failures that say
nothing about the backend (an invalid id, the caller cancelling) leave it
alone, and a cancellation is not counted as a store error either: it is the
caller giving up (a client disconnecting, a readiness timeout), not the store
failing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from mterelay.store.interface import IPairStore, PairExists, StoreLimits, StoreUnavailable

if TYPE_CHECKING:  # types only: the service layer above passes them in
    from mterelay.service.metrics import RelayMetrics

__all__ = ["MeteredStore"]


@implementer(IPairStore)
class MeteredStore:
    """``IPairStore`` by delegation to ``store``, timed with ``clock.seconds()``."""

    def __init__(self, store: IPairStore, metrics: RelayMetrics, clock: IReactorTime) -> None:
        self.store = store
        self._metrics = metrics
        self._clock = clock

    @property
    def limits(self) -> StoreLimits:
        return self.store.limits

    def start(self) -> Deferred:
        return self._timed("start", self.store.start)

    def stop(self) -> Deferred:
        return self._timed("stop", self.store.stop)

    def ping(self) -> Deferred:
        return self._timed("ping", self.store.ping)

    def create(self, client_id: str, pair_id: str, secrets: bytes) -> Deferred:
        return self._timed("create", self.store.create, client_id, pair_id, secrets)

    def get(self, client_id: str, pair_id: str) -> Deferred:
        return self._timed("get", self.store.get, client_id, pair_id)

    def accept(self, client_id: str, pair_id: str, seq: int, generation: str) -> Deferred:
        return self._timed("accept", self.store.accept, client_id, pair_id, seq, generation)

    def delete(self, client_id: str, pair_id: str, generation: str | None = None) -> Deferred:
        return self._timed("delete", self.store.delete, client_id, pair_id, generation)

    def _timed(self, op: str, call: Callable[..., Deferred], *args: Any) -> Deferred:
        started = self._clock.seconds()
        try:
            d = call(*args)
        except BaseException:
            # IPairStore methods return failed Deferreds; a store that raises
            # anyway keeps raising, counted like any other failure.
            self._metrics.observe_store(op, self._clock.seconds() - started, failed=True)
            raise

        # Bound methods with arguments rather than two closures per call:
        # ``accept`` is timed on every request.
        return d.addCallbacks(self._answered, self._failed, (op, started), None,
                              (op, started))

    def _answered(self, result: Any, op: str, started: float) -> Any:
        # ping reports an unreachable backend as False, not as a failure
        down = op == "ping" and result is False
        self._metrics.observe_store(op, self._clock.seconds() - started, failed=down)
        self._metrics.set_store_reachable(not down)
        return result

    def _failed(self, failure: Failure, op: str, started: float) -> Failure:
        if failure.check(CancelledError):
            return failure
        if failure.check(PairExists):
            self._answered(None, op, started)  # an answer (the id is taken), not a failing backend
            return failure
        self._metrics.observe_store(op, self._clock.seconds() - started, failed=True)
        if failure.check(StoreUnavailable):
            self._metrics.set_store_reachable(False)
        return failure
