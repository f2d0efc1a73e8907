"""The Site: request ids, the access log, request metrics and draining.

Everything that concerns a request as a whole, whatever route it takes,
lives here: the request id every log line of the request carries, one
access-log line, the request counter and timer, and the bookkeeping that
lets a stopping relay close idle connections and wait for busy ones.
"""

from __future__ import annotations

from time import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.web.resource import IResource
from twisted.web.server import Site

from mterelay.http.twistedinternals import inner_channel
from mterelay.http.headers import REQUEST_ID_HEADER, request_id_for
from mterelay.http.logfields import TEXT
from mterelay.http.observe import Metrics
from mterelay.http.nodelay import set_no_delay
from mterelay.web.guard import ConnectionGuard, guarded_channel_factory
from mterelay.http.h2 import busy, close_gracefully, is_h2_connection, is_h2_request
from mterelay.web.request import RelayRequest

log = Logger(namespace="mterelay.access")
ACCESS_FORMAT = "{" + TEXT + "}"
_INFO = LogLevel.info



class RelaySite(Site):
    """Logs method, path (no query: it may hold secrets), status and duration."""

    noisy = False
    displayTracebacks = False
    protocol = guarded_channel_factory

    def __init__(self, resource: IResource, clock: IReactorTime,
                 metrics: Metrics, *, echo_request_id: bool = False,
                 guard: ConnectionGuard | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("requestFactory", RelayRequest)
        super().__init__(resource, **kwargs)
        self.clock = clock
        self.metrics = metrics
        #: Header deadline, body idle timeout, connection cap (mterelay.web.guard);
        #: a guard passed in reports to its own metrics (the service gives both the same).
        self.guard = guard if guard is not None else ConnectionGuard(metrics=metrics)
        self.echo_request_id = echo_request_id
        self.active: set[Any] = set()
        self.channels: set[Any] = set()
        self.draining = False
        self._idle_waiters: list[Deferred[None]] = []
        self._drained_waiters: list[Deferred[None]] = []
        # Answered while draining, connection not closed yet: the answer may
        # still sit in the transport's write buffer (channel -> requests).
        self._flushing: dict[Any, set[Any]] = {}

    # --- connections

    def buildProtocol(self, addr: Any) -> Any:
        if not self.guard.admit(len(self.channels)):
            return None  # the listener closes the socket at once
        channel = super().buildProtocol(addr)
        if channel is None:
            return None
        channels = self.channels
        channels.add(channel)
        metrics = self.metrics
        metrics.set_open_connections(len(channels))
        # Requests see the inner HTTP/1.1 channel; remember the one tracked here.
        _http11(channel).mterelay_outer = channel
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> None:
            channels.discard(channel)
            metrics.set_open_connections(len(channels))
            # Closed after loseConnection: Twisted wrote the whole buffer first.
            self._flushing.pop(channel, None)
            lost(reason)
            self._check_drained()

        channel.connectionLost = connection_lost
        # A connection accepted just before the port closed while draining
        # gets one answer with Connection: close (getResourceFor); marking the
        # channel non-persistent here would make Twisted drop its request.
        return channel

    # --- requests

    def getResourceFor(self, request: RelayRequest) -> IResource:
        request.started_at = self.clock.seconds()
        channel = request.channel
        if not getattr(channel, "mterelay_no_delay", False):
            # Once per connection: Nagle off for the answers (see mterelay.http.nodelay).
            set_no_delay(channel.transport)
            channel.mterelay_no_delay = True
        request_id = request_id_for(request.requestHeaders.getRawHeaders(REQUEST_ID_HEADER, [None])[0])
        request.request_id = request_id
        if self.echo_request_id:
            request.echo_request_id = True  # RelayRequest sends it with the headers
        if self.draining and not is_h2_request(request):
            # (HTTP/2 forbids Connection; the GOAWAY of the drain says it.)
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            _http11(request.channel).persistent = False
        request.site_channel = _outer(channel)
        self.active.add(request)
        self.metrics.request_started()
        request.notifyFinish().addBoth(self._request_done, request)
        return super().getResourceFor(request)

    def _request_done(self, result: Any, request: RelayRequest) -> None:
        self.active.discard(request)
        if not request.access_logged:
            # The client went away before the answer was complete: no access
            # line was written, but the request still counts (as 499, nginx's
            # "client closed request").
            self._observe(request, 499)
        if self.draining:
            channel = request.site_channel
            if channel in self.channels:
                # finish() only queued the bytes; they are out when the
                # connection closes (non-persistent while draining).
                self._flushing.setdefault(channel, set()).add(request)
        if not self.active and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self._check_drained()

    def _observe(self, request: RelayRequest, status: int) -> float:
        started = request.started_at
        if started is None:
            # Never reached getResourceFor: Twisted answers "OPTIONS *" and
            # "GET *" itself.  Counted in and out here so the in-flight gauge
            # stays balanced.
            self.metrics.request_started()
            seconds = 0.0
        else:
            seconds = self.clock.seconds() - started
        self.metrics.request_finished(request.role, status, seconds)
        refusal = request.refusal
        if refusal is not None:
            self.metrics.relay_error(status, refusal)
        return seconds

    def log(self, request: RelayRequest) -> None:
        request.access_logged = True
        seconds = self._observe(request, request.code)
        peer = request.getClientAddress()
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")[:300]
        duration_ms = round(seconds * 1000, 3)
        # Rendered here, once: Twisted's formatter costs more than the rest
        # of the line's bookkeeping (see mterelay.service.logs.TEXT).  The
        # event is the one ``log.info(ACCESS_FORMAT, ...)`` would emit, built
        # directly: Logger.emit re-checks its constant level against every
        # LogLevel and builds the dict twice (kwargs, then update).
        log.observer({
            TEXT: f"{method} {path} {request.code} {duration_ms:.1f}ms",
            "method": method,
            "path": path,
            "status": request.code,
            "duration_ms": duration_ms,
            "bytes": request.sentLength,
            "client": getattr(peer, "host", None),
            "request_id": request.request_id,
            "log_logger": log,
            "log_level": _INFO,
            "log_namespace": log.namespace,
            "log_source": log.source,
            "log_format": ACCESS_FORMAT,
            "log_time": time(),
        })

    # --- draining

    def start_draining(self) -> int:
        """Close idle connections, make busy ones close after their answer.

        Returns how many requests are still in flight.
        """
        self.draining = True
        for channel in list(self.channels):
            close_gracefully(_http11(channel))
        for request in self.active:
            if not request.startedWriting and not is_h2_request(request):
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        in_flight = len(self.active)
        self._check_drained()
        return in_flight

    def undelivered(self) -> int:
        """Requests in flight plus answers not known to be flushed to their client."""
        return len(self.active) + sum(len(requests) for requests in self._flushing.values())

    def when_drained(self) -> Deferred[None]:
        """Fires once draining left no request in flight and no connection open.

        A request counts as done when ``finish()`` ran, but its answer may
        still be in the transport's write buffer, and stopping the reactor
        drops that buffer: the client gets a closed connection and no bytes.
        Waiting for every connection to close waits for those buffers, since
        Twisted flushes a transport before it closes it.
        """
        waiter: Deferred[None] = Deferred()
        self._drained_waiters.append(waiter)
        self._check_drained()
        return waiter

    def _check_drained(self) -> None:
        if not self.draining or self.active or not self._drained_waiters:
            return
        streams_open = False
        for channel in list(self.channels):
            inner = _http11(channel)
            # Idle now (opened during the drain and never used, or done): close
            # it after whatever it still has to write.
            if not busy(inner) and not _closing(inner):
                close_gracefully(inner)
            elif is_h2_connection(inner) and busy(inner):
                streams_open = True
        if streams_open:
            # An HTTP/2 stream leaves its connection's table only after its
            # request finished (which brought us here): look again next turn.
            self.clock.callLater(0, self._check_drained)
        if not self.channels:
            waiters, self._drained_waiters = self._drained_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once no request is in flight (at once when none is)."""
        waiter: Deferred[None] = Deferred()
        if not self.active:
            waiter.callback(None)
        else:
            self._idle_waiters.append(waiter)
        return waiter


def _http11(channel: Any) -> Any:
    """The HTTP/1.1 channel inside twisted.web's protocol-negotiating wrapper."""
    return inner_channel(channel)


def _outer(channel: Any) -> Any:
    """The protocol the site built (and tracks in ``channels``) for ``channel``.

    For an HTTP/2 request ``channel`` is its ``H2Stream``; the connection
    (which the negotiating wrapper marked) is the stream's ``_conn``.
    """
    outer = getattr(channel, "mterelay_outer", None)
    if outer is not None:
        return outer
    connection = getattr(channel, "_conn", None)
    if connection is None:
        return channel
    outer = getattr(connection, "mterelay_outer", None)
    if outer is not None:
        return outer
    # Before the wrapper could mark it: the TLS protocol wraps the wrapper.
    return getattr(connection.transport, "wrappedProtocol", channel)


def _closing(channel: Any) -> bool:
    transport = getattr(channel, "transport", None)
    return transport is None or bool(getattr(transport, "disconnecting", False))
