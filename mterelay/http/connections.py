"""Persistent HTTP connections for the relay's agents (upstream, remote relay, client).

Twisted's ``HTTPConnectionPool`` takes a connection back as soon as its
response has been parsed, without asking whether somebody already asked the
connection to close.  That happens whenever a body is dropped unread (the
relay's client hung up after the response headers arrived): dropping it calls
``loseConnection``, but when the rest of the body was already in the same
read, the response still completes and the pool keeps the closing
connection.  The next request written to it is flushed, then the socket
closes under it, and a POST — which is never retried — fails with
``ResponseNeverReceived(ConnectionDone)``.  :class:`RelayConnectionPool`
refuses such connections, so they are closed and never handed out again.

It also never resends a request by itself.  Twisted's pool retries an
idempotent request once when a reused connection is lost before the
response - also when the request had been written and the server was
working on it (a relay killed with ``kill -9``), so a GET ran twice at the
upstream and the caller never knew.  The protocol's rule (docs/protocol.md
section 10) is that only what certainly did not arrive may be sent again:
:class:`OriginAgent` resends a request once only when it failed with
``RequestNotSent`` (not one byte was written).

And it keeps a body's late failure to itself.  When the server answers
before the request body was fully sent (an upstream answering early, a
relay refusing a request), Twisted's client is in its
``TRANSMITTING_AFTER_RECEIVING_RESPONSE`` state and closes the connection;
if the body's producer then fails - the client that was uploading it went
away - Twisted logs "Error writing request, but not in valid state to
finalize request" at critical level - and the connection, still waiting
for its producer, was left to Twisted's error path.  :class:`_AnsweredBody`
stands between the body and Twisted: a failure after the response aborts
the connection (the server sees an incomplete request, never a complete
truncated one) and is logged at debug only.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import URI, HTTPConnectionPool, RequestNotSent
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from mterelay.http.nodelay import NoDelayEndpointFactory
from mterelay.http.twistedinternals import (RelayConnectionPool, check_method, client_request,
                                           is_closing)

log = Logger(namespace="mterelay.connections")


@implementer(IBodyProducer)
class _AnsweredBody:
    """A request body that goes quiet once the response has arrived.

    Twisted hands the response over before the body is done only when the
    server answered early; the connection is then closed, the rest of the
    body is not wanted, and its failure (the uploader hung up) is nobody's
    error.  Before that, everything passes through unchanged.
    """

    def __init__(self, inner: IBodyProducer) -> None:
        self.inner = inner
        self.length = inner.length
        self.answered = False
        #: The connection's transport, set when the request is sent on one.
        self.transport: Any = None

    def startProducing(self, consumer: Any) -> "Deferred[None]":  # noqa: N802 (interface)
        producing = self.inner.startProducing(consumer)
        result: Deferred[None] = Deferred(lambda _: producing.cancel())
        producing.addCallbacks(lambda _: self._settle(result, None), lambda failure: self._settle(
            result, failure))
        return result

    def _settle(self, result: "Deferred[None]", failure: Failure | None) -> None:
        if result.called:
            return
        if failure is not None and self.answered and self.transport is not None:
            log.debug("request body failed after the response: {why}",
                      why=failure.getErrorMessage()[:200])
            # Twisted is closing this connection and waits for the body;
            # end it now, as an incomplete request.
            self.transport.abortConnection()
            return
        if failure is None:
            result.callback(None)
        else:
            result.errback(failure)

    def pauseProducing(self) -> None:  # noqa: N802
        self.inner.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self.inner.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        self.inner.stopProducing()


def _answered(response: IResponse, body: _AnsweredBody) -> IResponse:
    body.answered = True
    return response


#: What Twisted's Agent accepts in a URL: visible ASCII, nothing else.
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")


class _Destination:
    """What a request to one origin needs besides its path, worked out once."""

    __slots__ = ("key", "endpoint", "host")

    def __init__(self, key: tuple[bytes, bytes, int], endpoint: IStreamClientEndpoint,
                 host: bytes) -> None:
        self.key = key
        self.endpoint = endpoint
        self.host = host


class _Target:
    """The request's URL, parsed only if somebody asks (``IClientRequest.absoluteURI``)."""

    __slots__ = ("uri",)

    def __init__(self, uri: bytes) -> None:
        self.uri = uri

    def toBytes(self) -> bytes:  # noqa: N802 (URI's interface)
        return self.uri


@implementer(IAgent)
class OriginAgent:
    """Twisted's ``Agent``, with each origin's endpoint and pool key kept.

    ``Agent.request`` parses the URL, builds a new endpoint and validates the
    method on every request; a relay sends every request to one or a few
    origins, so that work is done once per origin here and a request costs a
    split of its URL.  The checks stay the same: the URL must be visible
    ASCII, the method a token, the scheme http or https; a Host header is
    added (on a copy) unless the caller set one; the fragment is not sent.
    """

    #: Origins remembered; past it the table starts over (the client may talk to many).
    max_origins = 256

    def __init__(self, reactor: Any, pool: HTTPConnectionPool,
                 endpoints: IAgentEndpointFactory) -> None:
        self._reactor = reactor
        self._pool = pool
        self._endpoints = endpoints
        self._origins: dict[bytes, _Destination] = {}
        self._methods: set[bytes] = set()

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None  # noqa: N803 (IAgent)
                ) -> "Deferred[IResponse]":
        try:
            origin, path = self._split(method, uri)
        except Exception:
            return fail(Failure())
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"host"):
            headers = headers.copy()
            headers.addRawHeader(b"host", origin.host)
        pool = self._pool
        body = None if bodyProducer is None else _AnsweredBody(bodyProducer)
        request = client_request(method, path, headers, body, pool.persistent, _Target(uri))

        def send(protocol: Any) -> "Deferred[IResponse]":
            if body is not None:
                body.transport = getattr(protocol, "transport", None)
            return protocol.request(request)

        def not_sent(failure: Failure) -> "Deferred[IResponse]":
            # Nothing was written (the connection had closed under us): the
            # one case a resend cannot run the request twice.
            failure.trap(RequestNotSent)
            return pool.getConnection(origin.key, origin.endpoint).addCallback(send)

        sent = pool.getConnection(origin.key, origin.endpoint).addCallback(send).addErrback(
            not_sent)
        if body is not None:
            sent.addCallback(_answered, body)
        return sent

    def forget_origin(self, base: bytes) -> None:
        """Drop what was learnt of ``base`` (``scheme://host:port``), close its idle connections."""
        origin = self._origins.pop(base, None)
        if origin is not None and hasattr(self._pool, "close_idle"):
            self._pool.close_idle(origin.key)

    def _split(self, method: bytes, uri: bytes) -> tuple[_Destination, bytes]:
        if method not in self._methods:
            if not isinstance(method, bytes):
                raise TypeError(f"method={method!r} is {type(method)}, but must be bytes")
            check_method(method)
            self._methods.add(method)
        uri = uri.strip()
        if _VISIBLE_ASCII.fullmatch(uri) is None:
            # Never the URL itself: its query may hold secrets, and this
            # message ends up in a log line.
            raise ValueError("Invalid URI: not visible ASCII")
        start = uri.find(b"://")
        slash = uri.find(b"/", start + 3) if start > 0 else -1
        base, path = (uri, b"/") if slash < 0 else (uri[:slash], uri[slash:])
        path = path.split(b"#", 1)[0] or b"/"
        origin = self._origins.get(base)
        if origin is None:
            origin = self._learn(base)
        return origin, path

    def _learn(self, base: bytes) -> _Destination:
        parsed = URI.fromBytes(base)
        if parsed.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {parsed.scheme!r}")
        if not parsed.host:
            raise ValueError(f"no host in URL {base[:100]!r}")
        host = parsed.host
        shown = b"[" + host + b"]" if b":" in host else host
        if (parsed.scheme, parsed.port) not in ((b"http", 80), (b"https", 443)):
            shown = b"%b:%d" % (shown, parsed.port)
        origin = _Destination((parsed.scheme, host, parsed.port),
                         self._endpoints.endpointForURI(parsed), shown)
        if len(self._origins) >= self.max_origins:
            self._origins.clear()
        self._origins[base] = origin
        return origin


def persistent_agent(reactor: Any, size: int, idle_timeout: float,
                     connect_timeout: float) -> tuple[IAgent, RelayConnectionPool]:
    """An agent keeping up to ``size`` idle connections per host, with TCP_NODELAY."""
    pool = RelayConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = size
    pool.cachedConnectionTimeout = idle_timeout
    agent = OriginAgent(reactor, pool, NoDelayEndpointFactory(reactor, connect_timeout))
    return agent, pool


__all__ = ["OriginAgent", "RelayConnectionPool", "is_closing", "peer_agent", "persistent_agent",
           "upstream_agent", "POOL_SIZE", "CONNECT_TIMEOUT", "PEER_IDLE_TIMEOUT",
           "UPSTREAM_IDLE_TIMEOUT"]


#: Idle connections kept per origin.  Above the relay's concurrency every
#: extra request would open and close a connection of its own.
POOL_SIZE = 512
#: Seconds to wait for a TCP connection to UPSTREAM or a remote relay.
CONNECT_TIMEOUT = 10.0
#: Seconds an idle connection to UPSTREAM is kept.
UPSTREAM_IDLE_TIMEOUT = 90
#: Idle connections to a remote relay are closed by us before the load
#: balancers in front of it do (AWS ALB: 60 s), so a request is not sent on a
#: connection the other side is closing (not retried for POST: a 502).
PEER_IDLE_TIMEOUT = 50


def upstream_agent(reactor: Any, pool_size: int = POOL_SIZE,
                   connect_timeout: float = CONNECT_TIMEOUT) -> IAgent:
    """Persistent connections to UPSTREAM, reused across requests."""
    agent, _ = persistent_agent(reactor, pool_size, UPSTREAM_IDLE_TIMEOUT, connect_timeout)
    return agent


def peer_agent(reactor: Any, pool_size: int = POOL_SIZE,
               connect_timeout: float = CONNECT_TIMEOUT) -> IAgent:
    """Persistent connections to remote relays; a bare Agent: no cookies, no redirects."""
    agent, _ = persistent_agent(reactor, pool_size, PEER_IDLE_TIMEOUT, connect_timeout)
    return agent
