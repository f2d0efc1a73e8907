"""Forwarding plain HTTP requests to the upstream API.

A bare agent over one persistent pool (http/connections: the lean client)
is used rather than ``treq.HTTPClient``: treq's client keeps a cookie jar
(shared by every caller — a proxy would leak one client's cookies to the
next), follows redirects and transparently gunzips, all of which would make
the relay visible to its clients.  The agent is a parameter, so tests can hand
in ``treq.testing.RequestTraversalAgent`` or a real agent against a loopback
server.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import RequestNotSent, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IRequest, IResponse

from mterelay.http.connections import upstream_agent
from mterelay.http.failures import describe_failure
from mterelay.http.headers import HOP_BY_HOP, copy_end_to_end
from mterelay.http.observe import NO_METRICS, Metrics
from mterelay.http.timeouts import with_timeout

class UpstreamError(Exception):
    """The upstream could not be reached or did not answer (HTTP 502).

    ``not_sent`` is True only when not one byte of the request was written
    (no connection, or the pool's connection was found closed first): the
    one case in which a relay can promise its client ``upstreamReached: no``.
    """

    status = 502

    def __init__(self, message: str = "", not_sent: bool = False) -> None:
        super().__init__(message)
        self.not_sent = not_sent


class UpstreamTimeout(UpstreamError):
    """The upstream took longer than UPSTREAM_TIMEOUT (HTTP 504)."""

    status = 504


#: The production agent: persistent connections to UPSTREAM (http/connections).
make_agent = upstream_agent


@attrs.define
class ForwardedFor:
    """What the relay knows about the original client, for X-Forwarded-* headers."""

    client_ip: str | None
    proto: str
    host: bytes | None


def forwarded_for(request: IRequest) -> ForwardedFor:
    """What the request's connection says about the original client."""
    peer = request.getClientAddress()
    return ForwardedFor(
        client_ip=getattr(peer, "host", None),
        proto="https" if request.isSecure() else "http",
        host=request.getHeader(b"host"),
    )


@attrs.define
class UpstreamForwarder:
    """Sends one request to UPSTREAM and returns its response, or a typed error."""

    clock: IReactorTime
    agent: IAgent
    upstream: str
    timeout: float = 30.0
    extra_headers: tuple[tuple[str, str], ...] = ()
    #: Upstream answer times by role (the service's RelayMetrics).
    metrics: Metrics = NO_METRICS
    _base: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        self._base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    def url_for(self, path_and_query: bytes) -> bytes:
        """The upstream URL for a request target (``/path?query``), prefix path kept."""
        if not path_and_query.startswith(b"/"):
            path_and_query = b"/" + path_and_query
        return self._base.encode("ascii") + path_and_query

    def outgoing_headers(self, incoming: Headers, forwarded: ForwardedFor,
                         request_id: str | None = None) -> Headers:
        """End-to-end request headers plus X-Forwarded-* and the configured HEADERS.

        Host and Content-Length are dropped: the agent sets both from the URL
        and the body producer.
        """
        headers = Headers()
        copy_end_to_end(incoming, headers, drop=(b"host", b"content-length"))
        if forwarded.client_ip:
            prior = b", ".join(incoming.getRawHeaders(b"x-forwarded-for", []))
            chain = (prior + b", " if prior else b"") + forwarded.client_ip.encode("ascii")
            headers.setRawHeaders(b"x-forwarded-for", [chain])
        headers.setRawHeaders(b"x-forwarded-proto", [forwarded.proto.encode("ascii")])
        if forwarded.host:
            headers.setRawHeaders(b"x-forwarded-host", [forwarded.host])
        if request_id is not None:
            headers.setRawHeaders(b"x-request-id", [request_id.encode("ascii")])
        for name, value in self.extra_headers:
            headers.setRawHeaders(name.encode("ascii"), [value.encode("latin-1")])
        return headers

    def forward(
        self,
        method: bytes,
        path_and_query: bytes,
        headers: Headers,
        body: IBodyProducer | None,
        role: str = "passthrough",
    ) -> "Deferred[IResponse]":
        """Start the upstream request; fails with UpstreamError / UpstreamTimeout.

        The returned Deferred is cancellable (a client that goes away cancels
        its upstream request).
        """
        started = self.clock.seconds()
        requested = with_timeout(
            self.agent.request(method, self.url_for(path_and_query), headers, body),
            self.timeout, self.clock,
            lambda: UpstreamTimeout(f"no answer within {self.timeout:g} s"))

        def done(result: Any) -> Any:
            self.metrics.observe_upstream(role, self.clock.seconds() - started)
            if isinstance(result, Failure):
                if result.check(UpstreamTimeout, CancelledError):
                    return result
                raise UpstreamError(describe_failure(result, 200), not_sent=bool(result.check(*_NOT_SENT)))
            return result

        return requested.addBoth(done)


#: Agent failures that prove not one byte of the request was written.
_NOT_SENT = (ConnectError, DNSLookupError, RequestNotSent)


class StreamIdle(Exception):
    """A response body went STREAM_IDLE_TIMEOUT seconds without a byte."""


class BodyStreamer(Protocol):
    """Streams an upstream response body into a consumer (the client's request).

    The upstream transport is registered as the consumer's producer, so a slow
    client pauses reading from the upstream instead of buffering the body.
    With ``idle_timeout`` a body that sends nothing for that long is cut
    (the wait for the headers is UPSTREAM_TIMEOUT's; a live stream may
    legitimately be quiet, but not forever).  Time spent paused by a slow
    client does not count.
    """

    def __init__(self, consumer: Any, finished: "Deferred[None]",
                 clock: IReactorTime | None = None, idle_timeout: float | None = None) -> None:
        self.consumer = consumer
        self.finished = finished
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._timer: IDelayedCall | None = None
        self._stopped = False
        #: Inside ``deliverBody`` (stream_body): the clock starts once it returns.
        self._starting = False
        self._paused = False

    def connectionMade(self) -> None:
        self.consumer.registerProducer(_Watched(self), True)
        self._arm()

    def start_clock(self) -> None:
        """The body's delivery began (``deliverBody`` returned): start the idle clock.

        A small body usually is complete by then - it arrived with its
        headers and ``deliverBody`` handed it over at once - and then needs
        no timer at all (a timer made and cancelled per response was a
        visible part of the reactor's work).  Otherwise the clock starts now,
        at the same reactor time as before, unless the consumer paused it.
        """
        self._starting = False
        if not self._paused:
            self._arm()

    def _arm(self) -> None:
        if (self.clock is None or self.idle_timeout is None or self._stopped
                or self._starting):
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle_timeout)
        else:
            self._timer = self.clock.callLater(self.idle_timeout, self._idle)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle(self) -> None:
        self._timer = None
        self.stop(Failure(StreamIdle(f"no body byte within {self.idle_timeout:g} s")))

    def stop(self, reason: Failure) -> None:
        """Close the body's connection now; ``finished`` fails with ``reason``."""
        if self._stopped:
            return
        self._stopped = True
        self._disarm()
        if not self.finished.called:
            self.finished.errback(reason)
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        self._arm()
        self.consumer.write(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        self.consumer.unregisterProducer()
        if self.finished.called:
            return
        self._stopped = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


class _Watched:
    """The body's transport as the consumer's producer: a pause stops the idle clock."""

    def __init__(self, streamer: BodyStreamer) -> None:
        self._streamer = streamer

    def pauseProducing(self) -> None:
        self._streamer._paused = True
        self._streamer._disarm()
        self._streamer.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self._streamer._paused = False
        self._streamer.transport.resumeProducing()  # type: ignore[union-attr]
        self._streamer._arm()

    def stopProducing(self) -> None:
        self._streamer.stop(Failure(CancelledError("the consumer stopped the body")))


def stream_body(response: IResponse, consumer: Any, clock: IReactorTime | None = None,
                idle_timeout: float | None = None) -> "Deferred[None]":
    """Deliver ``response``'s body into ``consumer``; fires when it is complete.

    Cancelling the Deferred closes the body's connection (its sender sees the
    reader go away: an upstream stream is ended when its client is gone).
    """
    streamer: BodyStreamer

    def cancel(finished: "Deferred[None]") -> None:
        streamer.stop(Failure(CancelledError("body no longer wanted")))

    finished: Deferred[None] = Deferred(cancel)
    streamer = BodyStreamer(consumer, finished, clock, idle_timeout)
    streamer._starting = True
    try:
        response.deliverBody(streamer)
    finally:
        streamer.start_clock()
    return finished


__all__ = [
    "HOP_BY_HOP",
    "ForwardedFor",
    "ResponseFailed",
    "UpstreamError",
    "UpstreamForwarder",
    "UpstreamTimeout",
    "StreamIdle",
    "copy_end_to_end",
    "make_agent",
    "stream_body",
]
