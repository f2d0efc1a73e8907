"""The network between the processes: a round-robin balancer and an on-path rewriter.

Run as its own process::

    python -m fuzz.network BALANCER_PORT TAMPER_PORT BACKEND_PORT [BACKEND_PORT ...]

* The **balancer** (``BALANCER_PORT``) forwards each TCP connection to the
  next backend in turn, byte for byte, like a layer-4 load balancer: two
  requests of one pair land on different replicas.
* The **tamper proxy** (``TAMPER_PORT``) is an HTTP proxy in front of the
  balancer that plays the on-path attacker of issue 14: it adds a clear
  ``Connection: authorization, x-api-key`` to every request (header
  stripping) and a clear ``Set-Cookie`` to every response (header injection).
  Relay A is pointed at it; whatever the application then sees tells
  whether the relays let the rewrite through.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.client import FileBodyProducer
from io import BytesIO

INJECTED_COOKIE = b"mterelay-fuzz-injected=1"
STRIP_TOKENS = b"authorization, x-api-key"
_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"host"}


class _Pipe(Protocol):
    peer: "_Pipe | None" = None
    buffer: list[bytes]

    def connectionMade(self) -> None:
        self.buffer = []

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.buffer.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Front(_Pipe):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.pauseProducing()
        backend = next(self.factory.backends)
        factory = ClientFactory()
        factory.protocol = _Back
        factory.front = self
        reactor.connectTCP("127.0.0.1", backend, factory, timeout=5)


class _Back(_Pipe):
    def connectionMade(self) -> None:
        super().connectionMade()
        front = self.factory.front
        self.peer, front.peer = front, self
        for data in front.buffer:
            self.transport.write(data)
        front.buffer = []
        front.transport.resumeProducing()


class Balancer(Factory):
    protocol = _Front

    def __init__(self, backends: list[int]) -> None:
        self.backends = itertools.cycle(backends)


class Tamper(Resource):
    """Forwards to ``target``; adds the attacker's clear headers both ways."""

    isLeaf = True

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def render(self, request: Any) -> Any:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _FRAMING:
                headers.setRawHeaders(name, values)
        headers.setRawHeaders(b"connection", [STRIP_TOKENS])
        body = request.content.read()
        producer = FileBodyProducer(BytesIO(body)) if body else None
        d = self.agent.request(request.method, b"http://127.0.0.1:%d%s" % (self.target, request.uri),
                               headers, producer)

        def answer(response: Any) -> Any:
            request.setResponseCode(response.code)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in _FRAMING:
                    request.responseHeaders.setRawHeaders(name, values)
            request.responseHeaders.addRawHeader(b"set-cookie", INJECTED_COOKIE)
            return readBody(response).addCallback(done)

        def done(data: bytes) -> None:
            if not request._disconnected:
                request.write(data)
                request.finish()

        def failed(failure: Any) -> None:
            if not request._disconnected:
                request.setResponseCode(599)
                request.write(b"tamper proxy: " + str(failure.value).encode()[:200])
                request.finish()

        d.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


def main(argv: list[str]) -> None:
    balancer_port, tamper_port = int(argv[0]), int(argv[1])
    backends = [int(port) for port in argv[2:]]
    reactor.listenTCP(balancer_port, Balancer(backends), backlog=1024, interface="127.0.0.1")
    site = Site(Tamper(balancer_port))
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(tamper_port, site, backlog=1024, interface="127.0.0.1")
    print(f"fuzz network: balancer {balancer_port} -> {backends}, tamper {tamper_port}",
          flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
