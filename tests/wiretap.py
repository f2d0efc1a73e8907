"""A TCP forwarder for tests: records the bytes it carries, spreads connections.

It stands where an on-path observer or a load balancer would: between a
client and one or more relays.  ``captured`` holds everything sent by the
client (``upstream`` bytes) and by the relays (``downstream``), so a test can
check that no plaintext crossed the wire, replay a captured request, or
check that connections alternated between relay replicas.  Capture can be
switched off for bulk transfers (``record=False``) so a 200 MB test does not
keep 200 MB in the test process.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.protocols.portforward import Proxy


class _ServerSide(Proxy):
    """Bytes from a backend (relay) back to the client."""

    def dataReceived(self, data: bytes) -> None:
        tap: WireTap = self.factory.tap  # type: ignore[attr-defined]
        if tap.record:
            tap.downstream.append(data)
        Proxy.dataReceived(self, data)


class _ServerSideFactory(protocol.ClientFactory):
    protocol = _ServerSide

    def __init__(self, tap: "WireTap", client: "_ClientSide") -> None:
        self.tap = tap
        self.client = client

    def buildProtocol(self, addr: Any) -> _ServerSide:
        proto = self.protocol()
        proto.factory = self
        proto.setPeer(self.client)
        return proto


class _ClientSide(Proxy):
    """Bytes from the client on to a backend chosen round-robin."""

    def connectionMade(self) -> None:
        tap: WireTap = self.factory.tap  # type: ignore[attr-defined]
        self.transport.pauseProducing()
        port = tap.next_backend()
        tap.connections.append(port)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        endpoint.connect(_ServerSideFactory(tap, self)).addCallbacks(
            self._connected, lambda _: self.transport.loseConnection())

    def _connected(self, server: _ServerSide) -> None:
        self.setPeer(server)
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        tap: WireTap = self.factory.tap  # type: ignore[attr-defined]
        if tap.record:
            tap.upstream.append(data)
        Proxy.dataReceived(self, data)


class WireTap(protocol.Factory):
    """Listen on 127.0.0.1; forward each connection to the next backend port."""

    protocol = _ClientSide

    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)
        self.connections: list[int] = []
        self.upstream: list[bytes] = []
        self.downstream: list[bytes] = []
        self.record = True
        self._next = 0
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> _ClientSide:
        proto = self.protocol()
        proto.factory = self
        proto.tap = self
        return proto

    def next_backend(self) -> int:
        port = self.backends[self._next % len(self.backends)]
        self._next += 1
        return port

    @property
    def tap(self) -> "WireTap":
        return self

    def sent(self) -> bytes:
        """Everything the client sent, in order."""
        return b"".join(self.upstream)

    def received(self) -> bytes:
        return b"".join(self.downstream)

    def clear(self) -> None:
        self.upstream, self.downstream = [], []

    async def listen(self) -> int:
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self)
        return self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"
