"""Request bodies streamed through the relay instead of spooled.

twisted.web reads a whole request body (into memory, or a temp file past
100 KB) before it calls ``render``.  A relay forwarding a 1 GB upload would
then hold the client for the full upload before the upstream sees a byte, and
need the disk space.  :class:`StreamingRequest` starts processing as soon as
the headers are in and hands body bytes to one consumer through a
:class:`BodyPipe` as they arrive, pausing the client's socket whenever the
consumer (the upstream connection) is slower.

It relies on two details of Twisted's HTTP/1.1 channel, both covered by the
tests: the request line is on the channel when ``gotLength`` runs, and a
request's cleanup step (``HookedRequest.clean_up``) is what hands the connection to the next request.  On
an HTTP/2 stream (``H2Stream``) the request starts one reactor turn after its
HEADERS frame (the stream is registered with its connection only after
``gotLength``; by then a HEADERS frame with END_STREAM has also ended it, so
a body-less request is known as such), and the stream's own flow control
(``pauseProducing`` stops opening its window) is the back-pressure.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IRequest
from twisted.web.server import Request
from zope.interface import implementer

from mterelay.http.bodies import BytesProducer, declares_body
from mterelay.http.twistedinternals import (HookedRequest, h2_stream_reactor, is_disconnected,
                                           is_h2_stream, request_line)


_log = Logger(namespace="mterelay.web")


class BodyTooLarge(Exception):
    """A body read with :meth:`BodyPipe.read_all` passed its limit."""


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


@implementer(IBodyProducer)
class BodyPipe:
    """The client's body, delivered once, to one consumer, with back-pressure.

    Bytes that arrive before a consumer is attached wait in a small buffer;
    past ``high_water`` bytes the client's transport is paused.
    """

    high_water = 256 * 1024

    def __init__(self, length: int | object, transport: Any) -> None:
        self.length = length
        self._transport = transport
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._consumer: Any = None
        #: A consumer took the body (kept after ``_consumer`` is let go, see _let_go).
        self._taken = False
        self._finished: Deferred[None] = Deferred()
        self._outcome: Failure | None | bool = False  # False: body still arriving
        self._paused_by_us = False
        self._discarding = False
        self._stopped = False
        self.received = 0

    @property
    def complete(self) -> bool:
        return self._outcome is not False

    @property
    def paused(self) -> bool:
        """True while this pipe holds the client's socket back (its consumer is slower)."""
        return self._paused_by_us

    # --- fed by the request

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self._discarding:
            return
        if self._consumer is not None:
            self._consumer.write(data)
            return
        if self._taken:
            return  # the consumer has been told the body ended
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > self.high_water:
            self._pause()

    def finish(self) -> None:
        if self.complete:
            return
        self._outcome = None
        self._release()
        if self._consumer is not None and not self._stopped:
            self._finished.callback(None)
            self._let_go()

    def fail(self, reason: Failure) -> None:
        if self.complete:
            return
        self._outcome = reason
        self._release()
        if self._consumer is not None and not self._stopped:
            self._finished.errback(Failure(ClientGone(reason.getErrorMessage())))
            self._let_go()

    def _let_go(self) -> None:
        # The consumer (an opener, a collector) holds this pipe too: dropping
        # it once told the outcome frees both by reference counting, instead
        # of leaving a cycle per request for the garbage collector.
        self._consumer = None

    # --- IBodyProducer, for the agent sending it upstream

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        if self._taken or self._discarding:
            raise RuntimeError("a request body can be consumed only once")
        self._consumer = consumer
        self._taken = True
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        for chunk in buffered:
            consumer.write(chunk)
        finished = self._finished
        if self._outcome is None:
            finished.callback(None)
            self._let_go()
        elif isinstance(self._outcome, Failure):
            finished.errback(Failure(ClientGone(self._outcome.getErrorMessage())))
            self._let_go()
        else:
            self._release()
        return finished

    def pauseProducing(self) -> None:
        self._pause()

    def resumeProducing(self) -> None:
        self._release()

    def stopProducing(self) -> None:
        # The upstream request was abandoned: drop the rest, keep the client
        # flowing, and (IBodyProducer's contract) never fire the Deferred.
        self._stopped = True
        self.discard()

    # --- other ways to consume

    def discard(self) -> None:
        """Read and drop whatever is left (the response did not need the body)."""
        self._discarding = True
        self._buffer, self._buffered = [], 0
        self._release()

    def read_all(self, limit: int) -> "Deferred[bytes]":
        """The whole body, for routes that need it at once; refuses more than ``limit``.

        Fails with BodyTooLarge as soon as the limit is passed (the rest is
        read and dropped), not after the whole body has arrived.
        """
        result: Deferred[bytes] = Deferred()
        collector = _RequestBodyCollector(limit, self, result)
        self.startProducing(collector).addCallbacks(collector.done, collector.failed)
        return result

    # --- flow control on the client's socket

    def _pause(self) -> None:
        if not self._paused_by_us and self._transport is not None:
            self._paused_by_us = True
            self._transport.pauseProducing()

    def _release(self) -> None:
        if self._paused_by_us and self._transport is not None:
            self._paused_by_us = False
            self._transport.resumeProducing()


def _failed(error: Exception) -> "Deferred[Any]":
    failed: Deferred[Any] = Deferred()
    failed.errback(Failure(error))
    return failed


class _RequestBodyCollector:
    """The consumer behind :meth:`BodyPipe.read_all`; settles ``result`` once.

    Past ``limit`` it fails with BodyTooLarge and reads the rest to drop it
    (contrast http/bodies' response reader, which keeps the head).
    """

    def __init__(self, limit: int, pipe: BodyPipe, result: "Deferred[bytes]") -> None:
        self.limit, self.pipe, self.result = limit, pipe, result
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.result.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.chunks = []
            self.pipe.discard()
            self.result.errback(Failure(BodyTooLarge(self.limit)))
            return
        self.chunks.append(data)

    def done(self, _: object) -> None:
        if not self.result.called:
            self.result.callback(b"".join(self.chunks))

    def failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)


class StreamingRequest(HookedRequest):
    """A Request whose body is a :class:`BodyPipe` (``body``) when it has one."""

    body: BodyPipe | None = None
    _cleanup_pending = False

    def __repr__(self) -> str:
        # Twisted puts repr(request) in some of its log lines; the query
        # string may hold secrets and never goes into a log.
        path = getattr(self, "path", None) or b""
        return (f"<{type(self).__name__} at 0x{id(self):x} method="
                f"{self.method.decode('latin-1')} path={path.decode('latin-1')[:200]} "
                f"clientproto={self.clientproto.decode('latin-1')}>")

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if length != 0 and is_h2_stream(channel):
            self._stream_h2(channel, length)
            return
        line = None if length == 0 else request_line(channel)
        if line is None:
            super().gotLength(length)
            return
        self.content = BytesIO()
        self.body = BodyPipe(UNKNOWN_LENGTH if length is None else length, channel.transport)
        Request.requestReceived(self, *line)

    def _stream_h2(self, stream: Any, length: int | None) -> None:
        """HTTP/2: stream the body, start the request on the next reactor turn."""
        self.content = BytesIO()
        # The stream is its own flow control: paused, it stops opening its window.
        self.body = BodyPipe(UNKNOWN_LENGTH if length is None else length, stream)

        def start() -> None:
            if is_disconnected(self) or stream.command is None:
                return  # reset before it started
            Request.requestReceived(self, stream.command, stream.path, b"HTTP/2")

        h2_stream_reactor(stream).callLater(0, start)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is None:
            super().handleContentChunk(data)
        else:
            self.body.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body is None:
            super().requestReceived(command, path, version)
            return
        self.body.finish()
        if self._cleanup_pending:
            self._cleanup_pending = False
            super().clean_up()

    def finish(self) -> None:
        if self.body is not None and not self.body.complete:
            # Answered before the body was read (an error, say): read and drop
            # the rest so the connection stays in step for the next request.
            self.body.discard()
        super().finish()

    def clean_up(self) -> None:
        if self.body is not None and not self.body.complete and not is_disconnected(self):
            self._cleanup_pending = True
            return
        if self.producer:
            # Twisted would log this with the full URI, query included.
            _log.failure("", Failure(RuntimeError(
                f"Producer was not unregistered for {self.path.decode('latin-1')[:200]}")))
            self.unregisterProducer()
        super().clean_up()

    def connectionLost(self, reason: Failure) -> None:
        if self.body is not None:
            self.body.fail(reason)
        super().connectionLost(reason)


def streamed_body(request: Any) -> BodyPipe | None:
    """The request's :class:`BodyPipe` when its body streams in; None when
    twisted.web buffered it in ``request.content`` (a request that is not a
    :class:`StreamingRequest`, or an HTTP/1.1 body-less one)."""
    pipe = getattr(request, "body", None)
    return pipe if isinstance(pipe, BodyPipe) else None


def read_body(request: Any, limit: int) -> "Deferred[bytes]":
    """The whole request body (streamed or buffered), at most ``limit`` bytes."""
    pipe = streamed_body(request)
    if pipe is not None:
        return pipe.read_all(limit)
    content = request.content
    content.seek(0)
    data = content.read(limit + 1)
    if len(data) > limit:
        return _failed(BodyTooLarge(limit))
    return succeed(data)


SMALL_BODY = 256 * 1024


def request_body(request: IRequest) -> IBodyProducer | None:
    """The client's body as a producer: streamed when the request streams it."""
    pipe = streamed_body(request)
    if pipe is not None:
        return pipe
    if not declares_body(request.requestHeaders):
        return None
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    content.seek(0, 0)
    if size <= SMALL_BODY:
        return BytesProducer(content.read())
    producer = FileBodyProducer(content)
    if producer.length is UNKNOWN_LENGTH:  # pragma: no cover - files are seekable
        producer.length = size
    return producer
