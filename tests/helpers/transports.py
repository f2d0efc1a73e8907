"""Stand-ins at the transport boundary, shared by the unit and integration tests.

``FakeTransport`` records what a protocol or producer does to its transport
(bytes written, close, pause/resume/stop), so one fake serves a Twisted
producer test, a body-pipe test and the benchmark's asyncio upstream alike.
``RawClient`` is a client protocol that keeps every byte it receives, for
tests that send hand-written HTTP over a real socket.
"""

from __future__ import annotations

from twisted.internet import protocol

__all__ = ["FakeTransport", "RawClient"]


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.paused = 0
        self.resumed = 0
        self.stopped = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped = True


class RawClient(protocol.Protocol):
    def connectionMade(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
