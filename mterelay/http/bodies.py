"""Small body helpers shared by the relay and the client (no reactor needed).

Both sides need the same three things around ``IResponse``/``IBodyProducer``:
send a body already in memory, read a small body with a hard cap (relay
errors, whole-message bodies), and get rid of a body nobody will read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

__all__ = ["BytesProducer", "Still", "abandon", "read_limited", "read_and_drop", "discard",
           "declared_length", "declares_body", "has_body"]

#: A body this short costs less to read and drop than a new connection.
DRAIN_LIMIT = 64 * 1024


class Still:
    """A producer with nothing to pause: the transport of a body already in hand."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer)
class BytesProducer(Still):
    """A body already in memory, written in one go (no cooperator, no reactor)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        consumer.write(self.body)
        return succeed(None)


class _CappedResponseReader(Protocol):
    """Reads a response body up to ``limit`` bytes; past it, keeps the head and
    drops the connection (contrast http/streaming's request-body collector,
    which refuses a request body past its limit)."""

    def __init__(self, limit: int, done: "Deferred[tuple[bytes, bool]]") -> None:
        self.limit = limit
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.limit:
            head = b"".join(self.parts)[:self.limit]
            self.parts = []
            self.done.callback((head, True))
            self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((b"".join(self.parts), False))
        else:
            self.done.errback(reason)


def read_limited(response: IResponse, limit: int) -> "Deferred[tuple[bytes, bool]]":
    """``(body, too_long)``: at most ``limit`` bytes; a longer body is cut off unread."""
    done: Deferred[tuple[bytes, bool]] = Deferred()
    response.deliverBody(_CappedResponseReader(limit, done))
    return done


class _ReadToEnd(Protocol):
    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        pass


def read_and_drop(response: IResponse) -> None:
    """Read and drop a (short or empty) body so its connection can be reused."""
    response.deliverBody(_ReadToEnd())


class _Dropper(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        pass


def discard(response: IResponse) -> None:
    """Drop a body we will not read: its connection is closed, not reused."""
    response.deliverBody(_Dropper())


def abandon(response: IResponse) -> None:
    """Get rid of a response nobody will read (its client hung up).

    A short body of known length is read and dropped, so its connection goes
    back to the pool; anything else closes the connection rather than wait
    for a body of unknown size.
    """
    length = response.length
    if isinstance(length, int) and length <= DRAIN_LIMIT:
        read_and_drop(response)
    else:
        discard(response)


def declares_body(headers: Headers) -> bool:
    """The message is framed with a body - Content-Length or Transfer-Encoding
    present - even an empty one (``Content-Length: 0``): what is forwarded as
    a body, however short."""
    return headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")


def has_body(headers: Headers) -> bool:
    """A body of at least one byte may follow: Content-Length > 0 or any Transfer-Encoding.

    The rule both sides use for the headers item's binding (spec 6.3), so an
    empty ``Content-Length: 0`` body counts as none.
    """
    if headers.hasHeader(b"transfer-encoding"):
        return True
    lengths = headers.getRawHeaders(b"content-length", [])
    return any(value.strip() not in (b"", b"0") for value in lengths)


def declared_length(headers: Headers) -> int | None:
    """The request's Content-Length when it has a single valid one."""
    values = headers.getRawHeaders(b"content-length", [])
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0].strip())
