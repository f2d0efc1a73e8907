"""Graceful shutdown: stop accepting, let in-flight requests finish, then stop.

Orchestrators (Kubernetes, ECS, systemd) send SIGTERM and wait a grace period
before SIGKILL.  A relay that stops at once cuts every request in flight,
including uploads the application cannot replay.  The drain closes the port,
fails readiness so the load balancer stops sending, closes idle keep-alive
connections, answers busy ones with ``Connection: close`` and waits up to
SHUTDOWN_GRACE seconds for them.  A request counts as completed only once its
connection has closed, which Twisted does after the last byte of the answer
left the write buffer: ``request.finish()`` alone only queues the bytes, and
stopping the reactor right after it sent some clients nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger(namespace="mterelay.shutdown")


@attrs.frozen
class DrainSummary:
    """What a drain achieved, for the log line and the tests."""

    in_flight: int
    completed: int
    abandoned: int
    seconds: float


class Drainer:
    """Runs one drain of a :class:`~mterelay.web.site.RelaySite`.

    The site provides ``start_draining()``, ``when_drained()`` (no request in
    flight and no connection open) and ``undelivered()`` (requests whose
    answer is not known to have left the process).

    ``stop_accepting`` closes the listening port (a Deferred or None);
    ``on_draining`` flips readiness and the draining gauge.
    """

    def __init__(self, clock: IReactorTime, site: Any, grace: float,
                 stop_accepting: Callable[[], Any],
                 on_draining: Callable[[], None] = lambda: None) -> None:
        self.clock = clock
        self.site = site
        self.grace = grace
        self.stop_accepting = stop_accepting
        self.on_draining = on_draining
        self._drain: Deferred[DrainSummary] | None = None

    @property
    def draining(self) -> bool:
        return self._drain is not None

    def drain(self) -> Deferred[DrainSummary]:
        """Start draining (once); later calls get the same outcome."""
        if self._drain is None:
            try:
                self._drain = self._run()
            except Exception:
                # Never leave the process running because draining broke.
                log.failure("Draining failed; stopping now")
                pending = self.site.undelivered()
                self._drain = succeed(DrainSummary(pending, 0, pending, 0.0))
        result: Deferred[DrainSummary] = Deferred()
        self._drain.addBoth(lambda outcome: (result.callback(outcome), outcome)[1])
        return result

    def _run(self) -> Deferred[DrainSummary]:
        started = self.clock.seconds()
        self.on_draining()
        stopped = maybeDeferred(self.stop_accepting)
        stopped.addErrback(lambda failure: log.failure("Closing the listening port failed", failure))
        in_flight = self.site.start_draining()
        log.info(
            "Shutting down: no new connections; waiting up to {grace}s for {in_flight} "
            "in-flight request(s)",
            grace=self.grace,
            in_flight=in_flight,
        )
        done: Deferred[DrainSummary] = Deferred()

        def finish(_: Any = None) -> None:
            if done.called:
                return
            if timer.active():
                timer.cancel()
            abandoned = self.site.undelivered()
            summary = DrainSummary(in_flight, max(0, in_flight - abandoned), abandoned,
                                   round(self.clock.seconds() - started, 3))
            if abandoned:
                log.warn(
                    "Shutdown grace of {grace}s over: {completed} of {in_flight} in-flight "
                    "request(s) completed, abandoning {abandoned}",
                    grace=self.grace, completed=summary.completed, in_flight=in_flight,
                    abandoned=abandoned,
                )
            else:
                log.info(
                    "Drained: {completed} in-flight request(s) completed in {seconds}s",
                    completed=summary.completed, seconds=summary.seconds,
                )
            done.callback(summary)

        timer = self.clock.callLater(self.grace, finish)
        self.site.when_drained().addCallback(finish)
        return done
