"""The Site: one access-log line per request, through twisted.logger."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site

from mterelay.web.streaming import StreamingRequest

log = Logger(namespace="mterelay.access")


class RelaySite(Site):
    """Logs method, path (no query: it may hold secrets), status and duration."""

    noisy = False
    displayTracebacks = False

    def __init__(self, resource: IResource, clock: IReactorTime, **kwargs: Any) -> None:
        kwargs.setdefault("requestFactory", StreamingRequest)
        super().__init__(resource, **kwargs)
        self.clock = clock

    def getResourceFor(self, request: Any) -> IResource:
        request.mterelay_started = self.clock.seconds()
        return super().getResourceFor(request)

    def log(self, request: Any) -> None:
        started = getattr(request, "mterelay_started", None)
        duration = (self.clock.seconds() - started) * 1000 if started is not None else 0.0
        peer = request.getClientAddress()
        log.info(
            "{method} {path} {status} {duration_ms:.1f}ms",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1")[:300],
            status=request.code,
            duration_ms=round(duration, 3),
            bytes=request.sentLength,
            client=getattr(peer, "host", None),
        )
