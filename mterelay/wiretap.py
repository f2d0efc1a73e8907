"""A recording TCP forwarder: what an on-path observer or a load balancer would see.

It listens on loopback and forwards each connection to the next backend port
(round-robin, like a load balancer in front of relay replicas), keeping the
bytes it carries: ``upstream`` is what clients sent, ``downstream`` what the
backends answered.  ``make demo`` puts one between two relays to show that
what travels between them is encrypted; the tests use it to check that no
plaintext crosses the wire, to replay captured requests and to spread
connections over replicas.  ``record = False`` stops capturing, so a bulk
transfer does not pile up in memory.
"""

from __future__ import annotations

import string
from typing import Any

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.protocols.portforward import Proxy

__all__ = ["WireTap", "hexdump"]

_PRINTABLE = frozenset((string.ascii_letters + string.digits + string.punctuation + " ").encode())


class _ServerSide(Proxy):
    """Bytes from a backend back to the client."""

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
        endpoint = TCP4ClientEndpoint(tap.reactor, "127.0.0.1", port)
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
    """Listen on 127.0.0.1; forward each connection to the next backend port.

    ``reactor`` defaults to the global one (imported only then).
    """

    protocol = _ClientSide
    noisy = False

    def __init__(self, backends: list[int], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
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
        """Everything the clients sent, in order."""
        return b"".join(self.upstream)

    def received(self) -> bytes:
        """Everything the backends answered, in order."""
        return b"".join(self.downstream)

    def clear(self) -> None:
        self.upstream, self.downstream = [], []

    async def listen(self) -> int:
        """Start listening on a free loopback port; returns it."""
        self.port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(self)
        return self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"


def hexdump(data: bytes, lines: int = 4, width: int = 16) -> list[str]:
    """The first ``lines`` rows of a classic hex + ASCII dump of ``data``."""
    rows = []
    for offset in range(0, min(len(data), lines * width), width):
        chunk = data[offset:offset + width]
        hexes = " ".join(f"{byte:02x}" for byte in chunk)
        text = "".join(chr(byte) if byte in _PRINTABLE else "." for byte in chunk)
        rows.append(f"{offset:08x}  {hexes:<{width * 3 - 1}}  {text}")
    return rows
