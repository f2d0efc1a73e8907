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


def take_request(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(request head, what follows its Content-Length body) once a whole request is in
    ``buffer``; None while it is still arriving.  For the tests' raw HTTP/1.1 upstreams."""
    if b"\r\n\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(rest) < length:
        return None
    return head, rest[length:]


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
