"""A lean HTTP/1.1 server channel on llhttp: the prototype measured for issue 18, Deliver 3.

NOT USED BY THE RELAY.  Issue 18 asked to measure a faster HTTP/1.1
channel under the existing twisted.web ``Site`` and to adopt it only if it
cut the CPU per answer by at least 20 %.  It does not (see
``bench/inprocess_channel.py`` and ``bench/measure_channel.py``): all of
twisted.web's HTTP/1.1 parsing costs about 7 us of the 50-60 us a request
takes in-process, so no channel can reach 20 %; this one saves 2-6 us.
It stays here, beside the two measurements, so the numbers can be
reproduced; it was not put through the smuggling-style strictness suite a
production channel would need, and must not be wired into a listener as is.

What it does: ``twisted.web.http.HTTPChannel``'s request parsing replaced
by ``httptools`` (llhttp, C speed), driving the same ``Request`` class the
same way (``gotLength``, ``handleContentChunk``, ``requestReceived``,
``requestDone``), so a ``Site``, its Resource tree and the relay's
``StreamingRequest`` run on it unchanged: one request at a time (a
pipelined request waits, parsed, until the one before it is done),
persistence by version and ``Connection: close``, ``Expect: 100-continue``,
the producer interface for streamed answers, the idle and abort timers and
the header deadline / body idle timeout of ``mterelay.web.guard``.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import httptools
from twisted.internet import interfaces
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.web.http import _NoPushProducer, _PullToPush
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request
from zope.interface import implementer

log = Logger(namespace="bench.lean_channel")

#: Request line plus header names and values, as Twisted's ``totalHeadersSize``.
MAX_HEAD_BYTES = 16384
#: Most headers in one request (Twisted allows 500).
MAX_HEADERS = 100
#: Pipelined bytes kept while a request is handled before the transport is paused.
EAGER_READ = 0x4000

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class BadRequest(Exception):
    """The client's request is not HTTP/1.1 as this channel accepts it (reason only)."""


class _AfterClose(Exception):
    """A byte after a request that closes the connection: dropped, never parsed."""


def _bad_request_response(reason: str) -> bytes:
    body = json.dumps({"error": "Bad Request", "code": 400, "reason": reason},
                      separators=(",", ":")).encode("utf-8")
    return (b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json; charset=utf-8\r\n"
            b"cache-control: no-store\r\n"
            b"connection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


_TIMEOUT_BODY = json.dumps(
    {"error": "Request Timeout", "code": 408,
     "reason": "the request line and headers did not arrive in time"},
    separators=(",", ":")).encode("utf-8")
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json; charset=utf-8\r\n"
    b"cache-control: no-store\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n" % len(_TIMEOUT_BODY)) + _TIMEOUT_BODY


class _Message:
    """One parsed request: its head, then body events, kept until its turn comes."""

    __slots__ = ("command", "path", "version", "headers", "length", "persistent",
                 "expect_continue", "chunks", "queued", "complete")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.queued = 0
        self.complete = False


@implementer(interfaces.ITransport, interfaces.IConsumer, interfaces.IPushProducer)
class LeanHTTPChannel(Protocol, TimeoutMixin):
    """An ``HTTPChannel`` stand-in whose request parsing is llhttp's."""

    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEAD_BYTES
    abortTimeout: float | None = 15
    requestFactory: Any = Request
    site: Any = None
    factory: Any = None
    timeOut: float | None = None
    persistent = True
    length: int | None = 0

    _abortingCall: Any = None
    _savedTimeOut: float | None = None
    _requestProducer: Any = None
    _requestProducerStreaming: bool | None = None
    _waitingForTransport = False
    _networkProducer: Any = None
    _limits: Any = None
    _deadline: Any = None
    _armed = False
    _reading_body = False
    _idle_timeout: float | None = None
    _closed = False
    #: The last message parsed closes the connection: nothing after it is read.
    _last = False
    #: A refusal of a pipelined request, sent once the requests before it are answered.
    _pending_refusal: str | None = None

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self._handlingRequest = False
        self._parser = httptools.HttpRequestParser(self)
        #: Parsed requests waiting for the one being handled (head of line).
        self._waiting: deque[_Message] = deque()
        self._waiting_bytes = 0
        #: The message the parser is filling now.
        self._message: _Message | None = None
        #: The message whose Request is live (its body goes straight to it).
        self._live: _Message | None = None
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = False
        self._header_bytes = 0
        self._dropping = False

    # --- connection

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        self.setTimeout(self.timeOut)
        self._networkProducer = interfaces.IPushProducer(transport, _NoPushProducer())
        self._networkProducer.registerProducer(self, True)
        self._limits = getattr(self.factory, "guard", None)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._dropping or self._closed:
            return
        self.resetTimeout()
        if not self._in_head and self._message is None:
            self._header_bytes = 0
            if not self._armed and not self._handlingRequest and self.requests == []:
                self._arm()  # a later request on a kept-alive connection
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._malformed("protocol upgrades are not supported")
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__ or error.__cause__
            if isinstance(cause, _AfterClose):
                self._dropping = True  # as Twisted does: ignored, the connection closes after
            elif isinstance(cause, BadRequest):
                self._malformed(str(cause))
            else:
                log.failure("Lean channel callback failed", None)
                self._malformed("the request could not be handled")
            return
        except httptools.HttpParserError as error:
            if self._last:
                self._dropping = True  # bytes after a closing request: dropped, as Twisted does
                return
            self._malformed(f"malformed request ({error})")
            return
        if self._in_head:
            self._header_bytes += len(data)
            self._head_bytes += len(data)
            if self._head_bytes > self.totalHeadersSize + 4096:
                self._refuse("request head too long")

    # --- llhttp callbacks

    def on_message_begin(self) -> None:
        if self._last:
            raise _AfterClose()
        self._message = _Message()
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        if len(headers) > self.maxHeaders:
            raise BadRequest("too many headers")

    def on_headers_complete(self) -> None:
        parser = self._parser
        message = self._message
        assert message is not None
        self._in_head = False
        self._armed = False  # the header deadline is met (the timer stays for the next request)
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise BadRequest("unsupported HTTP version")
        path = b"".join(self._url)
        if not path.startswith(b"/") and not (path == b"*"):
            raise BadRequest("the request target must be origin-form")
        size = len(path) + 16
        headers = Headers()
        length: int | None = 0
        chunked = False
        connection: bytes | None = None
        expect = None
        for name, value in self._headers:
            size += len(name) + len(value) + 2
            lower = name.lower()
            if lower == b"transfer-encoding":
                if value.lower() != b"chunked" or chunked:
                    raise BadRequest("unsupported Transfer-Encoding")
                chunked = True
                length = None
            elif lower == b"content-length":
                if not value.isdigit():
                    raise BadRequest("invalid Content-Length")
                length = int(value)
            elif lower == b"connection" and connection is None:
                connection = value
            elif lower == b"expect" and expect is None:
                expect = value
            headers.addRawHeader(name, value)
        if size > self.totalHeadersSize:
            raise BadRequest("request head too long")
        message.command = parser.get_method()
        message.path = path
        message.version = version
        message.headers = headers
        message.length = length
        persistent = version == b"HTTP/1.1" and not (
            connection is not None
            and b"close" in connection.lower().replace(b",", b" ").split())
        message.persistent = persistent
        message.expect_continue = (expect is not None and expect.lower() == b"100-continue"
                                   and version == b"HTTP/1.1")
        if not persistent:
            self._last = True  # nothing after it is parsed
        if self._live is None and not self.requests:
            self._start(message)
        else:
            self._waiting.append(message)

    def on_body(self, data: bytes) -> None:
        message = self._message
        if message is self._live:
            self.requests[-1].handleContentChunk(data)
            return
        assert message is not None
        message.chunks.append(data)
        message.queued += len(data)
        self._queue(len(data))

    def on_message_complete(self) -> None:
        message = self._message
        self._message = None
        assert message is not None
        message.complete = True
        if message is self._live:
            self._content_done(message)

    # --- requests, one at a time

    def _start(self, message: _Message) -> None:
        """Create the message's Request and hand it the head, as HTTPChannel does."""
        if not message.persistent:
            self.persistent = False
        factory = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._live = message
        request.requestHeaders = message.headers
        if not message.persistent and message.version == b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        self.length = message.length
        self._command, self._path, self._version = (message.command, message.path,
                                                    message.version)
        guard = self._limits
        if message.length != 0 and not message.complete and guard is not None \
                and guard.body_timeout:
            self._reading_body = True
            self._idle_timeout = self.timeOut
            self.setTimeout(guard.body_timeout)
        request.parseCookies()
        request.gotLength(message.length)
        if message.expect_continue and not message.complete:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.requests and self.requests[-1] is request and not self._closed:
            chunks, message.chunks = message.chunks, []
            if message.queued:
                self._unqueue(message.queued)
                message.queued = 0
            for chunk in chunks:
                request.handleContentChunk(chunk)
            if message.complete:
                self._content_done(message)

    def _content_done(self, message: _Message) -> None:
        if self._reading_body:
            self._reading_body = False
            self.setTimeout(self._idle_timeout)
        self.length = 0
        self._live = None
        command, path, version = self._command, self._path, self._version
        del self._command, self._path, self._version
        if self.timeOut:
            self._savedTimeOut = self.setTimeout(None)
        self._handlingRequest = True
        self.requests[-1].requestReceived(command, path, version)

    def requestDone(self, request: Any) -> None:
        """Called by the first request in the queue when it is done."""
        if not self.requests or request is not self.requests[0]:
            raise TypeError
        del self.requests[0]
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
        if self._waiting:
            self._start(self._waiting.popleft())
        elif self._pending_refusal is not None:
            self._refuse(self._pending_refusal)
        elif self._message is None:
            self._header_bytes = 0

    def _queue(self, size: int) -> None:
        self._waiting_bytes += size
        if self._waiting_bytes > EAGER_READ and not self._waitingForTransport:
            self._networkProducer.pauseProducing()

    def _unqueue(self, size: int) -> None:
        self._waiting_bytes -= size

    # --- refusing

    def _malformed(self, reason: str) -> None:
        """Refuse now, or (a pipelined request) once the answers before it are out."""
        self._dropping = True
        live = self._live
        if self.requests and (live is None or live is not self._message):
            # Requests before the bad one are served first, as Twisted does
            # (it parses pipelined bytes only after the answer before them).
            self._pending_refusal = reason
            return
        self._refuse(reason)

    def _refuse(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_deadline()
        log.info("Refused a malformed request from {client}: {reason}",
                 client=getattr(self.transport.getPeer(), "host", None), reason=reason)
        cut = getattr(self._limits, "cut", None)
        if cut is not None:
            cut("bad_request")
        self.transport.write(_bad_request_response(reason))
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 (Request calls it)
        self._refuse("bad request")

    # --- header deadline (web/guard semantics)

    def _arm(self) -> None:
        guard = self._limits
        if guard is None or not guard.header_timeout:
            return
        self._armed = True
        deadline = self._deadline
        if deadline is not None and deadline.active():
            deadline.reset(guard.header_timeout)
        else:
            self._deadline = self.callLater(guard.header_timeout, self._headers_too_slow)

    def _cancel_deadline(self) -> None:
        self._armed = False
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if not self._armed or self.transport is None or self.transport.disconnecting:
            return
        self._armed = False
        guard = self._limits
        seconds = guard.header_timeout if guard is not None else None
        peer = getattr(self.transport.getPeer(), "host", None)
        if self._header_bytes or self._in_head:
            if guard is not None:
                guard.cut("header_timeout")
            log.info(
                "Header deadline: {client} sent {bytes} byte(s) of headers in {seconds}s; "
                "answered 408 and closed the connection",
                client=peer, bytes=self._header_bytes, seconds=seconds)
            self.transport.write(_TIMEOUT_RESPONSE)
        else:
            if guard is not None:
                guard.cut("idle_connection")
            log.debug("Header deadline: {client} sent nothing in {seconds}s; closed",
                      client=peer, seconds=seconds)
        self._closed = True
        self._schedule_abort()
        self.loseConnection()

    # --- timeouts (TimeoutMixin)

    def timeoutConnection(self) -> None:
        if self._reading_body and self.requests:
            body = getattr(self.requests[-1], "body", None)
            if body is not None and getattr(body, "paused", False):
                self.setTimeout(self.timeOut)  # the relay holds the client back
                return
            guard = self._limits
            if guard is not None:
                guard.cut("body_timeout")
            log.info("Body idle timeout: {client} sent no body byte for {seconds}s; "
                     "closed the connection",
                     client=getattr(self.transport.getPeer(), "host", None),
                     seconds=guard.body_timeout if guard is not None else self.timeOut)
        else:
            log.info("Timing out client: {peer}", peer=str(self.transport.getPeer()))
        self._schedule_abort()
        self.loseConnection()

    def _schedule_abort(self) -> None:
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def forceAbortClient(self) -> None:  # noqa: N802 (HTTPChannel's name)
        log.info("Forcibly timing out client: {peer}", peer=str(self.transport.getPeer()))
        self._abortingCall = None
        self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self._closed = True
        self.setTimeout(None)
        self._cancel_deadline()
        for request in self.requests:
            request.connectionLost(reason)
        if self._abortingCall is not None:
            self._abortingCall.cancel()
            self._abortingCall = None

    # --- ITransport / IConsumer for the requests

    def isSecure(self) -> bool:  # noqa: N802
        return interfaces.ISSLTransport(self.transport, None) is not None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes,  # noqa: N802
                     headers: Any) -> None:
        if not isinstance(headers, Headers):
            sanitized = Headers()
            for name, value in headers:
                sanitized.addRawHeader(name, value)
            headers = sanitized
        sequence = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                sequence.extend((name, b": ", value, b"\r\n"))
        sequence.append(b"\r\n")
        self.transport.writeSequence(sequence)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writeSequence(self, iovec: list[bytes]) -> None:  # noqa: N802
        self.transport.writeSequence(iovec)

    def getPeer(self) -> Any:  # noqa: N802
        return self.transport.getPeer()

    def getHost(self) -> Any:  # noqa: N802
        return self.transport.getHost()

    def loseConnection(self) -> None:  # noqa: N802
        self._closed = True
        self._networkProducer.unregisterProducer()
        self.transport.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        if self._requestProducer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer "
                f"{self._requestProducer} was never unregistered.")
        if not streaming:
            producer = _PullToPush(producer, self)
        self._requestProducer = producer
        self._requestProducerStreaming = streaming
        if not streaming:
            producer.startStreaming()

    def unregisterProducer(self) -> None:  # noqa: N802
        if self._requestProducer is None:
            return
        if not self._requestProducerStreaming:
            self._requestProducer.stopStreaming()
        self._requestProducer = None
        self._requestProducerStreaming = None

    # --- IPushProducer, towards the transport

    def stopProducing(self) -> None:  # noqa: N802
        if self._requestProducer is not None:
            self._requestProducer.stopProducing()

    def pauseProducing(self) -> None:  # noqa: N802
        self._waitingForTransport = True
        if self._requestProducer is not None:
            self._requestProducer.pauseProducing()
        if not self._handlingRequest:
            self._networkProducer.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()
        if not self._handlingRequest:
            self._networkProducer.resumeProducing()


def lean_channel_factory(factory: Any = None) -> LeanHTTPChannel:
    """``Site.protocol`` for plain listeners: the lean channel, no negotiation."""
    return LeanHTTPChannel()


__all__ = ["BadRequest", "LeanHTTPChannel", "lean_channel_factory", "MAX_HEAD_BYTES",
           "MAX_HEADERS"]
