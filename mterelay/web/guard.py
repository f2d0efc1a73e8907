"""Connection policing against slow and numerous clients (slowloris).

Twisted's only defence is an idle timeout that every received byte resets,
so a client sending one header byte every few seconds holds a connection
(and a file descriptor) for ever; a thousand of them exhaust the process.
Three limits close that:

* a **header deadline**: the request line and all headers must arrive within
  ``header_timeout`` seconds of the connection opening (first request) or of
  the request's first byte (later requests on a keep-alive connection),
  however the bytes trickle in; past it the client gets a 408 and the
  connection is closed;
* a **body idle timeout**: while a request body is being read, more than
  ``body_timeout`` seconds without a byte closes the connection; time the
  relay itself holds the client back (back-pressure from the upstream) does
  not count;
* a **connection cap**: past ``max_connections`` open connections on a
  listener, new ones are closed at once, before any byte is read.

The checks ride on the channel's existing events (no wrapper protocol, no
per-byte timer), so they cost nothing measurable on the request path.
"""

from __future__ import annotations

import json
import resource
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.http import HTTPChannel

from mterelay.http.observe import NO_METRICS, Metrics
from mterelay.http.twistedinternals import NegotiatingChannelBase, inner_channel, schedule_abort

log = Logger(namespace="mterelay.guard")

#: File descriptors kept back from the cap for upstream, Redis, log and listening sockets.
FD_RESERVE = 64
DEFAULT_MAX_CONNECTIONS = 10_000


def default_max_connections(soft_limit: int | None = None) -> int:
    """The cap when MAX_CONNECTIONS is unset: what the fd limit allows, at most 10,000.

    Each client connection may need an upstream connection too, hence half
    of what is left after a reserve.  Beyond the limit ``accept()`` fails
    with EMFILE and the listener spins instead of refusing cleanly.
    """
    if soft_limit is None:
        soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, (soft_limit - FD_RESERVE) // 2))


@attrs.define
class ConnectionGuard:
    """The limits of one listener and the metrics they move."""

    header_timeout: float | None = 10.0
    body_timeout: float | None = 30.0
    max_connections: int | None = None
    metrics: Metrics = NO_METRICS
    #: True while the cap refuses connections (one warning per episode).
    _full: bool = False

    def admit(self, open_connections: int) -> bool:
        """May one more connection open, ``open_connections`` being open now?"""
        cap = self.max_connections
        if cap is None:
            return True
        if open_connections < cap:
            if self._full and open_connections < cap * 0.9:
                self._full = False
                log.info("Connection cap: below {cap} open connections again", cap=cap)
            return True
        if not self._full:
            self._full = True
            log.warn(
                "Connection cap of {cap} open connections reached: refusing new connections "
                "(counted in mterelay_connections_cut_total{{reason=\"connection_cap\"}})",
                cap=cap,
            )
        self.cut("connection_cap")
        return False

    def cut(self, reason: str) -> None:
        self.metrics.connection_cut(reason)


_TIMEOUT_BODY = json.dumps(
    {"error": "Request Timeout", "code": 408,
     "reason": "the request line and headers did not arrive in time"},
    separators=(",", ":")).encode("utf-8")
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json; charset=utf-8\r\n"
    b"cache-control: no-store\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n" % len(_TIMEOUT_BODY)) + _TIMEOUT_BODY


class GuardedHTTPChannel(HTTPChannel):
    """Twisted's HTTP/1.1 channel with the header deadline and the body idle timeout.

    The limits come from ``self.factory.guard`` (a :class:`ConnectionGuard`);
    a factory without one gets Twisted's behaviour.
    """

    #: The connection's header-deadline timer (kept, disarmed, between requests).
    _deadline: Any = None
    #: The deadline counts for the headers being read now.
    _armed = False
    #: Waiting for a request's headers (from connection start or its first byte).
    _awaiting_headers = True
    _header_bytes = 0
    _reading_body = False
    #: Headers are in and a body follows, but the body idle timeout is not set
    #: yet: :meth:`dataReceived` sets it once the bytes at hand are parsed,
    #: and only if the body is still incomplete then.
    _body_timer_due = False

    #: The factory's ConnectionGuard, looked up once per connection.
    _limits: ConnectionGuard | None = None

    #: Twisted's channel turns its idle timer off for every request it
    #: handles (``setTimeout(None)`` in ``allContentReceived``: a cancellation)
    #: and on again after the answer (a new timer).  Here the next such call
    #: only suspends the timer: it stays scheduled, firing is ignored while
    #: suspended, and the answer's ``setTimeout`` moves it on (a cheap reset).
    _suspend_next = False
    _timer_suspended = False

    # --- header deadline

    def connectionMade(self) -> None:
        self._limits = getattr(getattr(self, "factory", None), "guard", None)
        super().connectionMade()
        self._arm()

    def _arm(self) -> None:
        guard = self._limits
        if guard is None or not guard.header_timeout:
            return
        self._armed = True
        deadline = self._deadline
        if deadline is not None and deadline.active():
            # One timer per connection, moved on for each request: cheaper than
            # a new timer and a cancellation per request on a kept-alive connection.
            deadline.reset(guard.header_timeout)
        else:
            self._deadline = self.callLater(guard.header_timeout, self._headers_too_slow)

    def _cancel_deadline(self) -> None:
        self._armed = False
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_headers and data:
            self._header_bytes += len(data)
            if not self._armed and not self._handlingRequest:
                self._arm()  # a later request on a kept-alive connection
        super().dataReceived(data)
        if self._body_timer_due:
            # The body did not end in these bytes: from now on Twisted's idle
            # timer measures silence in it.  (A small body that came with its
            # headers - the usual request - never moves the timer: moving it
            # sooner costs the reactor a linear search of its timer heap.)
            self._body_timer_due = False
            guard = self._limits
            if self._reading_body and guard is not None:
                self._idle_timeout = self.timeOut
                self.setTimeout(guard.body_timeout)

    def allHeadersReceived(self) -> None:
        self._armed = False  # the timer stays, disarmed, for the next request
        self._awaiting_headers = False
        self._header_bytes = 0
        guard = self._limits
        if self.length != 0 and guard is not None and guard.body_timeout:
            # A body follows: Twisted's idle timer is to measure silence in
            # it, set when this segment is parsed (see dataReceived).
            self._reading_body = True
            self._body_timer_due = True
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._reading_body:
            self._reading_body = False
            if self._body_timer_due:
                self._body_timer_due = False  # never set: nothing to restore
            else:
                self.setTimeout(self._idle_timeout)
        # Twisted's first step is setTimeout(None) when there is an idle timeout.
        self._suspend_next = bool(self.timeOut)
        try:
            super().allContentReceived()
        finally:
            self._suspend_next = False

    def setTimeout(self, period: float | None) -> float | None:  # noqa: N802 (Twisted's)
        if period is None and self._suspend_next:
            self._suspend_next = False
            self._timer_suspended = True
            previous, self.timeOut = self.timeOut, None
            return previous
        self._suspend_next = False
        self._timer_suspended = False
        return super().setTimeout(period)

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            # The next request's deadline starts with its first byte (maybe
            # one already buffered, replayed by requestDone); until then the
            # connection is idle (Twisted's idle timeout).
            self._awaiting_headers = True
            self._header_bytes = 0
        super().requestDone(request)

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if not self._armed or self.transport is None or self.transport.disconnecting:
            return
        self._armed = False
        guard = self._limits
        seconds = guard.header_timeout if guard is not None else None
        peer = getattr(self.transport.getPeer(), "host", None)
        if self._header_bytes:
            if guard is not None:
                guard.cut("header_timeout")
            log.info(
                "Header deadline: {client} sent {bytes} byte(s) of headers in {seconds}s; "
                "answered 408 and closed the connection",
                client=peer, bytes=self._header_bytes, seconds=seconds,
            )
            self.transport.write(_TIMEOUT_RESPONSE)
        else:
            # Opened and never used (a browser's preconnect, a port scan).
            if guard is not None:
                guard.cut("idle_connection")
            log.debug("Header deadline: {client} sent nothing in {seconds}s; closed",
                      client=peer, seconds=seconds)
        self._close_with_abort()

    # --- body idle timeout

    def timeoutConnection(self) -> None:
        if self._timer_suspended:
            return  # a request is being handled: Twisted's timer would have been off
        if self._reading_body and self.requests:
            body = getattr(self.requests[-1], "body", None)
            if body is not None and getattr(body, "paused", False):
                # The relay holds the client back (upstream slower): not the
                # client's silence.  (The fired timer is gone: set a new one.)
                self.setTimeout(self.timeOut)
                return
            guard = self._limits
            if guard is not None:
                guard.cut("body_timeout")
            log.info(
                "Body idle timeout: {client} sent no body byte for {seconds}s; "
                "closed the connection",
                client=getattr(self.transport.getPeer(), "host", None),
                seconds=guard.body_timeout if guard is not None else self.timeOut,
            )
        super().timeoutConnection()

    def _close_with_abort(self) -> None:
        # A client that stops reading must not keep the socket: abort after
        # abortTimeout like Twisted's own idle timeout does.
        schedule_abort(self)
        self.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        self._body_timer_due = False  # a closed connection gets no new timer
        super().connectionLost(reason)


class NegotiatingChannel(NegotiatingChannelBase):
    """Twisted's protocol-negotiating wrapper, told when HTTP/2 takes over.

    With ALPN ``h2`` the wrapper replaces the HTTP/1.1 channel by an
    ``H2Connection`` on the first bytes; the replaced channel's header
    deadline, armed when the connection opened, must not fire later and
    close the connection the HTTP/2 channel now uses (it did: every h2
    connection was cut ``header_timeout`` seconds after it opened).  HTTP/2
    has its own guards: Twisted's idle timeout (any frame resets it) and
    the connection cap, which counts this wrapper like any connection.
    """

    def connectionLost(self, reason: Any) -> None:
        # A plain method, not proxyForInterface's data descriptor: assigning
        # ``connectionLost`` on the wrapper (RelaySite's bookkeeping hook) then
        # stays on the wrapper.  Through the descriptor it landed on the
        # HTTP/1.1 channel, which HTTP/2 replaces: the site never heard of the
        # close, and every h2 connection stayed counted for ever (the drain
        # waited out its grace, the connection cap filled up).
        inner_channel(self).connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        before = inner_channel(self)
        super().dataReceived(data)
        after = inner_channel(self)
        if after is not before:
            if isinstance(before, GuardedHTTPChannel):
                before._cancel_deadline()
            # Requests on it find the connection the site tracks (site._outer).
            after.mterelay_outer = getattr(before, "mterelay_outer", self)


def guarded_channel_factory(factory: Any = None) -> NegotiatingChannelBase:
    """``Site.protocol``: Twisted's protocol-negotiating wrapper around a guarded channel."""
    return NegotiatingChannel(GuardedHTTPChannel())


__all__ = [
    "ConnectionGuard",
    "GuardedHTTPChannel",
    "NegotiatingChannel",
    "default_max_connections",
    "guarded_channel_factory",
]
