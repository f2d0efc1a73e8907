"""An on-path HTTP rewriter: a tiny real proxy that adds or changes clear headers both ways.

It stands where a hostile network, or a TLS-terminating load balancer an
attacker controls, stands between relay A (or a RelayClient) and relay B:
it receives each request on 127.0.0.1, lets the test edit its headers and
its body (``body_edits``: the tampering of a sealed body on the way),
forwards it to the target, lets the test edit the response's headers (and
body: ``response_body_edits``) and passes the response back.  Bodies are passed through byte for byte (read
whole: the tests send small ones).  What it forwarded and received is kept
(``requests``, ``responses``) so a test can check what travelled in clear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from twisted.internet import reactor

from mterelay.http.bodies import BytesProducer
from mterelay.http.connections import persistent_agent
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder
from mterelay.web.root import RelayRoot
from mterelay.web.site import RelaySite
from mterelay.service.metrics import RelayMetrics
from tests.helpers.support import relay_config

__all__ = ["Rewriter", "RewiredRelays", "add"]

#: This hop's own headers, never passed on as they are (RFC 9110 7.6.1).
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade", b"host", b"content-length"})

Edit = Callable[[Headers], None]
#: ``(request headers as forwarded, body) -> body to forward``.
BodyEdit = Callable[[Headers, bytes], bytes]


class Rewriter(Resource):
    """Forward every request to ``target`` (``http://127.0.0.1:port``), editing headers.

    ``request_edits`` and ``response_edits`` are callables run on the
    outgoing request headers and on the response headers, in order.
    """

    isLeaf = True

    def __init__(self, reactor: Any, target: str) -> None:
        super().__init__()
        self.reactor = reactor
        self.target = target.rstrip("/").encode("ascii")
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)
        self.request_edits: list[Edit] = []
        self.response_edits: list[Edit] = []
        self.body_edits: list[BodyEdit] = []
        #: ``(request uri, response headers, body) -> body to pass back``.
        self.response_body_edits: list[Callable[[bytes, Headers, bytes], bytes]] = []
        self.requests: list[tuple[bytes, bytes, Headers]] = []
        self.responses: list[tuple[int, Headers]] = []
        self.port: Any = None

    async def listen(self) -> str:
        """Listen on a free loopback port; returns the rewriter's URL."""
        self.port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            Site(self))
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def close(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
        await self.pool.closeCachedConnections()

    def render(self, request: Any) -> Any:
        ensureDeferred(self._forward(request))
        return NOT_DONE_YET

    async def _forward(self, request: Any) -> None:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _HOP:
                headers.setRawHeaders(name, list(values))
        for edit in self.request_edits:
            edit(headers)
        body = request.content.read()
        for body_edit in self.body_edits:
            body = body_edit(headers, body)
        framed = (request.requestHeaders.hasHeader(b"content-length")
                  or request.requestHeaders.hasHeader(b"transfer-encoding"))
        self.requests.append((request.method, request.uri, headers))
        try:
            response = await self.agent.request(request.method, self.target + request.uri,
                                                headers, BytesProducer(body) if framed else None)
            content = await readBody(response)
        except Exception:
            request.setResponseCode(502)
            request.finish()
            return
        answer = Headers()
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _HOP:
                answer.setRawHeaders(name, list(values))
        for edit in self.response_edits:
            edit(answer)
        for response_body_edit in self.response_body_edits:
            content = response_body_edit(request.uri, answer, content)
        self.responses.append((response.code, answer))
        request.setResponseCode(response.code, response.phrase)
        for name, values in answer.getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, list(values))
        if request.method != b"HEAD" and response.code not in (204, 304):
            request.setHeader(b"content-length", b"%d" % len(content))
            request.write(content)
        request.finish()


def add(name: bytes, value: bytes) -> Edit:
    """An edit adding one header line."""
    return lambda headers: headers.addRawHeader(name, value)


class RewiredRelays:
    """TestCase mixin: relay B (in process, memory store) behind a :class:`Rewriter`.

    ``rewire(upstream_factory)`` listens the upstream and relay B on loopback
    and puts the on-path rewriter in front of B (``self.rewriter``); ports,
    agents and the rewriter are cleaned up with the test.
    """

    async def rewire(self, upstream_factory: Any) -> None:
        port = await self.listen(upstream_factory)
        b = await self.listen(self.relay_site(relay_config(UPSTREAM=f"http://127.0.0.1:{port}"),
                                              self.agent()))
        self.rewriter = Rewriter(reactor, f"http://127.0.0.1:{b}")
        await self.rewriter.listen()
        self.addCleanup(lambda: ensureDeferred(self.rewriter.close()))

    def listen(self, factory: Any) -> "Deferred[int]":
        """Listen ``factory`` on a free loopback port; fires the port number."""

        def listening(port: Any) -> int:
            self.addCleanup(port.stopListening)
            return port.getHost().port

        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        return endpoint.listen(factory).addCallback(listening)

    def agent(self) -> Any:
        agent, pool = persistent_agent(reactor, 8, 30, 5)
        self.addCleanup(pool.closeCachedConnections)
        return agent

    def relay_site(self, config: Any, outbound_agent: Any) -> RelaySite:
        forwarder = UpstreamForwarder(reactor, self.agent(), config.upstream, 10.0)
        store = MemoryPairStore(reactor, store_limits(config))
        metrics = RelayMetrics()
        return RelaySite(RelayRoot(config, forwarder, reactor, store,
                                   outbound_agent=outbound_agent, metrics=metrics),
                         reactor, metrics)
