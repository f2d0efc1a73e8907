"""A raw HTTP/1.1 upstream for the wiring tests: counts connections, closes idle ones, streams.

Raw (not twisted.web) so a test decides exactly when the server closes a
connection, what it sends and whether its writes are being held back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tests.helpers.transports import take_request


@implementer(IPushProducer)
class _Stream:
    """Writes ``total`` bytes in 64 KiB pieces, as fast as the transport takes them."""

    piece = b"s" * 65536

    def __init__(self, protocol: "RawHTTP", total: int) -> None:
        self.protocol = protocol
        self.left = total
        self.paused = False
        self.pauses = 0
        self.written = 0

    def start(self) -> None:
        self.protocol.transport.registerProducer(self, True)
        self._more()

    def _more(self) -> None:
        transport = self.protocol.transport
        while not self.paused and self.left > 0:
            piece = self.piece[:self.left]
            self.left -= len(piece)
            self.written += len(piece)
            transport.write(piece)
        if self.left == 0 and not self.paused:
            transport.unregisterProducer()

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        reactor.callLater(0, self._more)

    def stopProducing(self) -> None:  # noqa: N802
        self.left = 0


class RawHTTP(Protocol):
    factory: "RawUpstream"

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.made += 1
        self.factory.open.add(self)
        self.buffer = b""
        self.idle_timer: Any = None
        self._arm()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.factory.open.discard(self)
        self._disarm()

    def _arm(self) -> None:
        if self.factory.idle_close is not None:
            self.idle_timer = reactor.callLater(self.factory.idle_close,
                                                self.transport.loseConnection)

    def _disarm(self) -> None:
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._disarm()
        self.buffer += data
        while (request := take_request(self.buffer)) is not None:
            head, self.buffer = request
            self.factory.requests.append(head.split(b"\r\n", 1)[0])
            self.answer()

    def answer(self) -> None:
        factory = self.factory
        if factory.hang_up:
            self.transport.loseConnection()  # read the request, never answered
            return
        extra = b"".join(b"%b: %b\r\n" % pair for pair in factory.headers)
        if factory.stream:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n"
                                 % (factory.stream, extra))
            stream = _Stream(self, factory.stream)
            factory.streams.append(stream)
            stream.start()
            return
        body = factory.body
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b"
                             % (len(body), extra, body))
        self._arm()


class RawUpstream(Factory):
    """Counts what it saw; ``idle_close`` seconds after an answer the connection is closed."""

    protocol = RawHTTP

    def __init__(self, body: bytes = b"ok", idle_close: float | None = None,
                 headers: tuple[tuple[bytes, bytes], ...] = (), stream: int = 0,
                 hang_up: bool = False) -> None:
        self.body = body
        self.idle_close = idle_close
        self.headers = headers
        self.stream = stream
        self.hang_up = hang_up
        self.made = 0
        self.open: set[RawHTTP] = set()
        self.requests: list[bytes] = []
        self.streams: list[_Stream] = []
