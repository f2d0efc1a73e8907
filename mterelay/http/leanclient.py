"""A lean HTTP/1.1 client agent for the relay's two hot hops, on llhttp.

Twisted's ``Agent`` costs about 1 ms of CPU per request in the relay
(``_newclient``'s line parser, the pool, several Deferred layers); the
relay sends every request to one or a few origins over persistent
connections, so most of that is avoidable.  :class:`LeanAgent` is an
``IAgent`` whose responses are ``IResponse`` objects like Twisted's, so the
relay's code cannot tell them apart, with the parsing done by ``httptools``
(the llhttp bindings, C speed).

It keeps the pool rules :mod:`mterelay.http.connections` names:

* a connection that is closing (or received a byte it did not ask for) is
  never handed out again;
* a request is resent by the agent only when it failed with
  ``RequestNotSent`` - the connection was gone before one byte was written;
* a request body that fails after the response arrived aborts the
  connection (the server sees an incomplete request) and is logged at debug
  only.

And it is at least as strict as Twisted's parser about malformed answers:
llhttp in its strict mode refuses duplicate Content-Length, CL together with
Transfer-Encoding, bad chunk sizes and extensions, obs-fold, bare LF, NUL or
CR in values; on top of it this module refuses any Transfer-Encoding but
``chunked``, versions other than HTTP/1.0 and 1.1, upgrades, too long heads
or too many headers, and any byte after a response (the connection is
closed, never parsed as the next response).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import httptools
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (IConsumer, IHandshakeListener, IPushProducer,
                                         ISSLTransport, IStreamClientEndpoint)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (URI, RequestGenerationFailed, RequestNotSent, ResponseDone,
                                ResponseFailed, ResponseNeverReceived)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IBodyProducer,
                              IResponse)
from zope.interface import implementer

from mterelay.http.nodelay import NoDelayEndpointFactory
from mterelay.http.twistedinternals import (DataLoss, ParseError, WrongBodyLength, check_method,
                                           transport_aborting)

log = Logger(namespace="mterelay.http.leanclient")

#: Response headers about the connection, kept out of ``response.headers`` as Twisted does.
_CONNECTION_HEADERS = frozenset({b"content-length", b"connection", b"keep-alive", b"te",
                                 b"trailers", b"transfer-encoding", b"upgrade",
                                 b"proxy-connection"})

#: Largest status line plus header block accepted (Twisted: 16 KiB per line, no total).
MAX_HEAD_BYTES = 65536
#: Longest single header line (name + value), the same as Twisted's line limit.
MAX_HEADER_LINE = 16384
#: Most headers in one response.
MAX_HEADERS = 100
#: Seconds a pool's idle connections get to close cleanly at shutdown before being aborted.
CLOSE_GRACE = 2.0


class TLSHandshakeFailed(ConnectError):
    """The TLS handshake failed (an untrusted certificate, a wrong host name): nothing was sent.

    Twisted's TLS layer holds every application byte until the handshake is
    done, so a request on a connection whose handshake never finished
    certainly did not reach the server.  A ``ConnectError``, so callers
    report it as such (``upstreamReached: no``), as they do a refused connection.
    """


class BadResponse(ParseError):
    """The server's answer is not HTTP/1.1 as this client accepts it.

    Carries the reason only, never the offending bytes (they may hold a
    secret, and the message ends up in a log line).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, b"")

    def __str__(self) -> str:
        return self.args[0]


@implementer(IPushProducer)
class _BodyTransport:
    """What a response's body protocol sees as its transport.

    Pausing pauses reading from the socket (the relay's back-pressure);
    stopping means the body is not wanted, so the connection cannot be
    reused and is aborted.
    """

    disconnecting = False

    def __init__(self, connection: "LeanClientProtocol") -> None:
        self._connection: LeanClientProtocol | None = connection
        self._paused = False

    def pauseProducing(self) -> None:  # noqa: N802 (interface)
        if self._connection is not None and not self._paused:
            self._paused = True
            self._connection.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self._connection is not None and self._paused:
            self._paused = False
            self._connection.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon_body()

    #: ``readBody`` cancels by ``abortConnection``; a body not read to its end
    #: leaves the connection unusable either way.
    abortConnection = stopProducing
    loseConnection = stopProducing

    def _detach(self) -> None:
        """The body is complete: later pauses must not touch a connection serving others."""
        if self._paused:
            self.resumeProducing()
        self._connection = None


@implementer(IResponse)
class LeanResponse:
    """An ``IResponse`` like ``twisted.web._newclient.Response``.

    The body arriving before ``deliverBody`` is kept, and the socket paused
    until somebody takes it, as Twisted does.
    """

    previousResponse = None

    def __init__(self, version: tuple[bytes, int, int], code: int, phrase: bytes,
                 headers: Headers, length: int | object, request: Any,
                 transport: _BodyTransport) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self.request = request
        self._transport = transport
        self._protocol: Any = None
        self._buffer: list[bytes] = []
        self._finished: Failure | None = None
        self._paused = False

    def setPreviousResponse(self, response: IResponse) -> None:  # noqa: N802 (interface)
        self.previousResponse = response

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 (interface)
        if self._protocol is not None:
            raise RuntimeError("deliverBody called twice")
        self._protocol = protocol
        protocol.makeConnection(self._transport)
        buffered, self._buffer = self._buffer, []
        for data in buffered:
            protocol.dataReceived(data)
        if self._paused:
            self._paused = False
            self._transport.resumeProducing()
        if self._finished is not None:
            self._deliver_end(self._finished)

    def _data(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
            return
        self._buffer.append(data)
        if not self._paused:
            self._paused = True
            self._transport.pauseProducing()

    def _end(self, reason: Failure) -> None:
        if self._finished is not None:
            return
        self._finished = reason
        self._transport._detach()  # every byte is here (or never will be)
        if self._protocol is not None:
            self._deliver_end(reason)

    def _deliver_end(self, reason: Failure) -> None:
        protocol, self._protocol = self._protocol, _Done
        protocol.connectionLost(reason)


class _DoneProtocol:
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        pass


_Done = _DoneProtocol()


class _Request:
    """What one request needs on the wire (Twisted's ``IClientRequest`` attributes too)."""

    __slots__ = ("method", "uri", "absoluteURI", "headers", "bodyProducer", "head")

    def __init__(self, method: bytes, path: bytes, uri: bytes, headers: Headers,
                 body: IBodyProducer | None) -> None:
        self.method = method
        self.uri = path
        self.absoluteURI = uri
        self.headers = headers
        self.bodyProducer = body
        lines = [b"%b %b HTTP/1.1\r\n" % (method, path)]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.append(b"%b: %b\r\n" % (name, value))
        if body is not None:
            if body.length is UNKNOWN_LENGTH:
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                lines.append(b"Content-Length: %d\r\n" % body.length)
        elif method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: 0\r\n")
        lines.append(b"\r\n")
        self.head = b"".join(lines)


@implementer(IConsumer)
class _BodyWriter:
    """The consumer a request's body producer writes to: frames and counts the bytes."""

    def __init__(self, transport: Any, length: Any, producer: Any,
                 overrun: Callable[["_BodyWriter"], None]) -> None:
        self._transport = transport
        self._overrun = overrun
        self._chunked = length is UNKNOWN_LENGTH
        self._length = length
        self._producer = producer
        self.written = 0
        self.closed = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        pass  # the connection registered the body producer itself, as Twisted does

    def unregisterProducer(self) -> None:  # noqa: N802
        pass

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if not self._chunked and self.written + len(data) > self._length:
            # Never on the wire: the server would take the excess as the next
            # request.  Like Twisted: stop the producer, fail the request now.
            self.closed = True
            try:
                self._producer.stopProducing()
            finally:
                self._overrun(self)
            return
        self.written += len(data)
        if self._chunked:
            self._transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._transport.write(data)


@implementer(IHandshakeListener)
class LeanClientProtocol(Protocol):
    """One HTTP/1.1 connection: one request at a time, responses parsed by llhttp."""

    #: Set by Twisted's TLS layer once the handshake succeeded (plain TCP: never asked).
    handshake_done = False
    #: Seconds the server said it keeps this connection idle (``Keep-Alive: timeout=``).
    server_idle: float | None = None

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        self.handshake_done = True

    def __init__(self, on_idle: Callable[["LeanClientProtocol"], None] | None = None) -> None:
        self._on_idle = on_idle
        self._parser: Any = None
        self._request: _Request | None = None
        self._deferred: Deferred[IResponse] | None = None
        self._response: LeanResponse | None = None
        self._writer: _BodyWriter | None = None
        self._body_sending = False
        self._answered = False
        self._message_done = False
        self._reusable = True
        self._closed = False
        self._lost: Failure | None = None
        self._received = False
        self._head_bytes = 0
        self._head_size = 0
        self._head_failure: Failure | None = None
        self._raw: list[tuple[bytes, bytes]] = []
        self._phrase: list[bytes] = []
        self._chunked = False
        self._informational = False
        self._connection_header: list[bytes] = []
        self._keep_alive = False
        self._pending_end = False
        self._producing: Deferred[None] | None = None
        self._since_body = 0
        self._trailers = 0
        self.key: Any = None

    # ----------------------------------------------------------- state
    @property
    def busy(self) -> bool:
        return self._request is not None

    def is_closing(self) -> bool:
        """True once the connection was lost or asked to close (never reuse it)."""
        transport = self.transport
        return (self._closed or not self._reusable or transport is None
                or bool(getattr(transport, "disconnecting", False)
                        or getattr(transport, "disconnected", False)
                        or transport_aborting(transport)))

    def close(self) -> None:
        """Close the connection (cleanly) and never hand it out again."""
        self._reusable = False
        if self.transport is not None and not self._closed:
            self.transport.loseConnection()

    def abort(self) -> None:
        self._reusable = False
        if self.transport is not None and not self._closed:
            self.transport.abortConnection()

    def abandon_body(self) -> None:
        """The response's body is not wanted: this connection's bytes are lost with it."""
        self.abort()  # connectionLost ends the body with ResponseFailed, as Twisted's does

    # ----------------------------------------------------------- sending
    def request(self, request: _Request) -> "Deferred[IResponse]":
        """Send ``request``; fire with its response once its head has arrived."""
        if self._request is not None:
            return fail(RequestNotSent())  # a caller's bug; never pipeline
        if self._closed or self.is_closing():
            return fail(RequestNotSent())
        self._request = request
        deferred: Deferred[IResponse] = Deferred(self._cancel)
        self._deferred = deferred
        self._response = None
        self._answered = False
        self._message_done = False
        self._received = False
        self._head_bytes = 0
        self._head_size = 0
        self._since_body = 0
        self._trailers = 0
        self._producing = None
        self._raw = []
        self._phrase = []
        self._chunked = False
        self._informational = False
        self._connection_header: list[bytes] = []
        self._keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        transport = self.transport
        body = request.bodyProducer
        transport.write(request.head)
        if body is not None and body.length != 0:
            self._send_body(body, transport)
        return deferred

    def _cancel(self, deferred: "Deferred[IResponse]") -> None:
        """The caller gave up: drop the connection, fail as Twisted's client does."""
        if deferred is not self._deferred:
            return
        self._deferred = None
        self._reusable = False
        reasons = [Failure(CancelledError())]
        writer, self._writer = self._writer, None
        if self._body_sending and writer is not None:
            self._body_sending = False
            writer.closed = True
            self._unregister()
            producing, self._producing = self._producing, None
            if producing is not None and not producing.called:
                producing.cancel()
            failure = Failure(RequestGenerationFailed(reasons))
        elif self._received:
            failure = Failure(ResponseFailed(reasons))
        else:
            failure = Failure(ResponseNeverReceived(reasons))
        self.abort()
        deferred.errback(failure)

    def _send_body(self, body: IBodyProducer, transport: Any) -> None:
        writer = self._writer = _BodyWriter(
            transport, body.length, body,
            lambda w: self._body_failed(Failure(WrongBodyLength("too many bytes written")), w))
        self._body_sending = True
        transport.registerProducer(body, True)
        try:
            producing = body.startProducing(writer)
        except BaseException:
            producing = fail(Failure())
        self._producing = producing
        producing.addCallbacks(self._body_sent, self._body_failed,
                               callbackArgs=(body, writer), errbackArgs=(writer,))

    def _body_sent(self, _: object, body: IBodyProducer, writer: _BodyWriter) -> None:
        if writer is not self._writer:
            return
        self._body_sending = False
        self._unregister()
        if body.length is not UNKNOWN_LENGTH and writer.written != body.length:
            self._body_failed(Failure(WrongBodyLength(
                f"the body producer wrote {writer.written} bytes of {body.length}")), writer)
            return
        writer.closed = True
        if body.length is UNKNOWN_LENGTH and not self._closed:
            self.transport.write(b"0\r\n\r\n")
        if self._answered:
            self._after_answer()

    def _body_failed(self, failure: Failure, writer: _BodyWriter) -> None:
        if writer is not self._writer:
            return
        self._body_sending = False
        writer.closed = True
        self._writer = None  # what the producer does next is nobody's concern
        self._unregister()
        self._reusable = False
        if self._answered:
            log.debug("request body failed after the response: {why}",
                      why=failure.getErrorMessage()[:200])
            self.abort()
            return
        deferred, self._deferred = self._deferred, None
        self.abort()  # the server must see an incomplete request, not a shorter one
        if deferred is not None:
            deferred.errback(Failure(RequestGenerationFailed([failure])))

    def _unregister(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.unregisterProducer()

    # ----------------------------------------------------------- receiving
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._request is None or self._message_done:
            # Nobody asked for these bytes: never parse them as a response.
            self._reusable = False
            self.abort()
            return
        self._received = True
        if self._response is None:
            self._head_bytes += len(data)
        elif self._chunked:
            self._since_body += len(data)
        try:
            self._parser.feed_data(data)
            if self._response is None and self._head_bytes > MAX_HEAD_BYTES:
                raise BadResponse(f"response head longer than {MAX_HEAD_BYTES} bytes")
            if self._since_body > MAX_HEAD_BYTES and not self._message_done:
                # Chunk framing or trailers only, for longer than any head may be.
                raise BadResponse(f"chunk framing or trailers longer than {MAX_HEAD_BYTES} bytes")
        except httptools.HttpParserUpgrade:
            self._fail(Failure(BadResponse("upgrade refused")))
            return
        except Exception as error:
            if self._head_failure is not None:
                failure, self._head_failure = self._head_failure, None
            elif isinstance(error, httptools.HttpParserError):
                failure = Failure(BadResponse(f"malformed response: {error}"))
            else:
                failure = Failure()
            self._fail(failure)
            return
        if self._pending_end:
            self._finish_response()

    def _finish_response(self) -> None:
        """Give the connection back first, then end the body (as Twisted orders it).

        The body's end runs the caller's code, which often sends the next
        request at once: the connection must be in the pool by then.  It runs
        only after the parser returned, so a byte after the response has
        been seen (and the connection condemned) before anybody can reuse it.
        """
        self._pending_end = False
        response = self._response
        self._after_answer()
        if response is not None:
            response._end(Failure(ResponseDone()))

    def _fail(self, failure: Failure) -> None:
        """A malformed answer: fail whoever waits, close the connection."""
        self._reusable = False
        response = self._response
        if response is None:
            deferred, self._deferred = self._deferred, None
            if deferred is not None:
                deferred.errback(Failure(ResponseFailed([failure])))
        elif self._pending_end:
            # The response was whole; what followed it was not: close, never parse it.
            self._pending_end = False
            log.info("closing a connection: {why}", why=failure.getErrorMessage())
            self.abort()
            response._end(Failure(ResponseDone()))
            return
        elif not self._message_done:
            self._message_done = True
            response._end(Failure(ResponseFailed([failure], response)))
        self.abort()

    # llhttp callbacks (through httptools); raising stops the parser.
    def on_message_begin(self) -> None:
        if self._message_done:
            self._reusable = False
            raise self._stop(BadResponse("bytes after the response"))

    def on_status(self, status: bytes) -> None:
        self._phrase.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._response is not None:
            # Trailers of a chunked body: ignored, within the limits of a head.
            self._trailers += 1
            if len(name) + len(value) + 2 > MAX_HEADER_LINE or self._trailers > MAX_HEADERS:
                raise self._stop(BadResponse("trailers too long"))
            return
        if len(name) + len(value) + 2 > MAX_HEADER_LINE:
            raise self._stop(BadResponse(f"header line longer than {MAX_HEADER_LINE} bytes"))
        raw = self._raw
        if len(raw) >= MAX_HEADERS:
            raise self._stop(BadResponse(f"more than {MAX_HEADERS} headers"))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES:
            raise self._stop(BadResponse(f"response head longer than {MAX_HEAD_BYTES} bytes"))
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        code = parser.get_status_code()
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise self._stop(BadResponse("not an HTTP/1.x response"))
        if 100 <= code < 200:
            if code == 101:
                raise self._stop(BadResponse("upgrade refused"))
            self._informational = True  # ignored, as Twisted does; the real answer follows
            self._raw = []
            self._phrase = []
            return
        headers = Headers()
        length: int | object = UNKNOWN_LENGTH
        request = self._request
        head = request.method == b"HEAD" if request is not None else False
        transfer: list[bytes] = []
        for name, value in self._raw:
            lower = name.lower()
            if lower in _CONNECTION_HEADERS and not (head and lower == b"content-length"):
                if lower == b"content-length":
                    length = int(value.strip())
                elif lower == b"transfer-encoding":
                    transfer.append(value)
                elif lower == b"connection":
                    self._connection_header.append(value)
                elif lower == b"keep-alive":
                    self.server_idle = _keep_alive_timeout(value, self.server_idle)
                continue
            headers.addRawHeader(name, value)
        if transfer:
            if len(transfer) != 1 or transfer[0].strip().lower() != b"chunked":
                raise self._stop(BadResponse("unsupported Transfer-Encoding"))
            self._chunked = True
        self._keep_alive = _keep_alive(version, self._connection_header)
        if self._body_sending:
            # Answered before the body was sent: the server may take the rest
            # of the body as the next request.  Twisted closes these too.
            self._reusable = False
        no_body = head or code in (204, 304)
        if no_body:
            length = 0
        self._raw = []
        self._body = _BodyTransport(self)
        response = self._response = LeanResponse(
            (b"HTTP", 1, 1 if version == "1.1" else 0), code, b"".join(self._phrase),
            headers, length, request, self._body)
        self._answered = True
        deferred, self._deferred = self._deferred, None
        if no_body or length == 0:
            self._message_complete()
        if deferred is not None:
            deferred.callback(response)

    def on_body(self, data: bytes) -> None:
        if self._message_done:
            self._reusable = False
            raise self._stop(BadResponse("bytes after the response"))
        self._since_body = 0
        self._response._data(data)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._message_done:
            self._message_complete()

    def _message_complete(self) -> None:
        self._message_done = True
        if not self._keep_alive:
            self._reusable = False
        self._pending_end = True

    def _stop(self, error: BadResponse) -> BadResponse:
        self._head_failure = Failure(error)
        return error

    def _after_answer(self) -> None:
        """The response is complete: give the connection back, or close it."""
        if self._body_sending:
            return  # the request body is still being written; it decides
        if self._request is not None and self._response is not None and self._answered \
                and self._message_done:
            self._request = None
            self._response = None
            self._writer = None
            self._parser = None
            if not self._reusable or self.is_closing():
                self.close()
            elif self._on_idle is not None:
                self._on_idle(self)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: N802
        self._closed = True
        self._reusable = False
        self._lost = reason
        self._unregister_quietly()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.closed = True
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            if self._received:
                deferred.errback(Failure(ResponseFailed([reason])))
            elif not self.handshake_done and ISSLTransport.providedBy(self.transport):
                deferred.errback(Failure(TLSHandshakeFailed(
                    string=f"TLS handshake failed: {reason.getErrorMessage()[:300]}")))
            else:
                deferred.errback(Failure(ResponseNeverReceived([reason])))
        response = self._response
        if response is not None and not self._message_done:
            self._message_done = True
            if self._parser is not None and not self._chunked and response.length is \
                    UNKNOWN_LENGTH:
                # A body without a length ends with the connection, as HTTP/1.0's did.
                response._end(Failure(PotentialDataLoss()))
            else:
                response._end(Failure(ResponseFailed([reason, Failure(DataLoss())], response)))
        self._request = None
        self._response = None
        if self._on_idle is not None:
            self._on_idle(self)  # the pool forgets it

    def _unregister_quietly(self) -> None:
        transport = self.transport
        if transport is not None and getattr(transport, "producer", None) is not None:
            try:
                transport.unregisterProducer()
            except Exception:  # pragma: no cover - already gone
                pass


def _keep_alive_timeout(value: bytes, previous: float | None) -> float | None:
    """The ``timeout=`` of a ``Keep-Alive`` header (RFC 2068 19.7.1.1), or ``previous``."""
    for part in value.split(b","):
        name, _, number = part.partition(b"=")
        if name.strip().lower() == b"timeout":
            try:
                seconds = float(number.strip().strip(b'"'))
            except ValueError:
                return previous
            if seconds != seconds or seconds < 0:  # NaN, negative: not a hint
                return previous
            return seconds
    return previous


def idle_limit(idle_timeout: float, server_idle: float | None) -> float:
    """How long an idle connection is kept: ours, or shorter when the server said it closes first.

    A server closing an idle connection just as a request is written to it
    fails that request after it was sent (never resent: it may have
    arrived).  Closing ours first - a second, or half the server's time when
    that is shorter, before the server would - leaves no such moment.
    """
    if server_idle is None:
        return idle_timeout
    return min(idle_timeout, server_idle - min(1.0, server_idle / 2))


def _keep_alive(version: str, connection: list[bytes]) -> bool:
    """HTTP/1.1 keeps the connection unless told to close; 1.0 only when told to keep it."""
    if not connection:
        return version == "1.1"
    if len(connection) == 1:
        # The usual answers (nginx: ``keep-alive``; a closing server: ``close``),
        # decided without splitting into a set of tokens.
        only = connection[0].strip().lower()
        if only == b"keep-alive":
            return True
        if only == b"close":
            return False
    tokens = {token.strip().lower() for value in connection for token in value.split(b",")}
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


class _ConnectionFactory(Factory):
    def __init__(self, on_idle: Callable[[LeanClientProtocol], None]) -> None:
        self._on_idle = on_idle

    def buildProtocol(self, addr: Any) -> LeanClientProtocol:  # noqa: N802
        return LeanClientProtocol(self._on_idle)


class LeanPool:
    """Idle persistent connections per origin key, each with an idle timer.

    Keeps at most ``size`` idle connections per origin (busy ones are not
    limited, as with Twisted's pool); a connection is put back only when it
    is not closing, and is closed after ``idle_timeout`` seconds unused.
    """

    def __init__(self, reactor: Any, size: int = 2, idle_timeout: float = 240) -> None:
        self._reactor = reactor
        self.size = size
        self.idle_timeout = idle_timeout
        self._idle: dict[Any, deque[LeanClientProtocol]] = {}
        self._timers: dict[LeanClientProtocol, Any] = {}
        #: When each idle connection's idle spell ends (its timer may fire earlier, see _returned).
        self._until: dict[LeanClientProtocol, float] = {}
        self._all: set[LeanClientProtocol] = set()

    def get(self, key: Any, endpoint: IStreamClientEndpoint) -> "Deferred[LeanClientProtocol]":
        connection = self.take_idle(key)
        if connection is not None:
            return succeed(connection)
        return self.connect(key, endpoint)

    def take_idle(self, key: Any) -> LeanClientProtocol | None:
        """An idle connection to ``key`` that is not closing, taken out of the pool; or None.

        Synchronous, so the agent's common case (a warm connection) needs no
        Deferred of its own.
        """
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used: its TCP state is warmest
            # Its idle timer keeps running (see _returned); out of the idle
            # deque, the connection is not expired by it.
            if not idle:
                del self._idle[key]
            if not connection.is_closing():
                return connection
            self._cancel(connection)
            connection.close()
            idle = self._idle.get(key)
        return None

    def connect(self, key: Any, endpoint: IStreamClientEndpoint
                ) -> "Deferred[LeanClientProtocol]":
        """A new connection to ``key`` (counted by the pool once connected)."""

        def connected(connection: LeanClientProtocol) -> LeanClientProtocol:
            connection.key = key
            self._all.add(connection)
            return connection

        return endpoint.connect(_ConnectionFactory(self._returned)).addCallback(connected)

    def _returned(self, connection: LeanClientProtocol) -> None:
        key = connection.key
        if connection.is_closing() or connection.busy:
            self._forget(connection)
            return
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= self.size:
            connection.close()
            self._forget(connection)
            if not idle:
                del self._idle[key]
            return
        limit = idle_limit(self.idle_timeout, connection.server_idle)
        if limit <= 0:
            connection.close()
            self._forget(connection)
            if not idle:
                del self._idle[key]
            return
        idle.append(connection)
        # One timer per connection, kept across its requests: a new timer and
        # a cancellation for every request cost the reactor more than the
        # request's own bookkeeping.  A timer still running from an earlier
        # idle spell fires early and waits out the rest (_expire); only a
        # spell shorter than that (the server's Keep-Alive hint shrank) moves it.
        until = self._reactor.seconds() + limit
        self._until[connection] = until
        timer = self._timers.get(connection)
        if timer is None or not timer.active():
            self._timers[connection] = self._reactor.callLater(limit, self._expire, connection)
        elif timer.getTime() > until:
            timer.reset(limit)

    def _expire(self, connection: LeanClientProtocol) -> None:
        self._timers.pop(connection, None)
        idle = self._idle.get(connection.key)
        if idle is None or connection not in idle:
            return  # busy (taken since this timer was set): _returned arms it again
        remaining = self._until.get(connection, 0.0) - self._reactor.seconds()
        if remaining > 0:
            self._timers[connection] = self._reactor.callLater(remaining, self._expire,
                                                               connection)
            return
        self._forget(connection)
        connection.close()

    def _cancel(self, connection: LeanClientProtocol) -> None:
        self._until.pop(connection, None)
        timer = self._timers.pop(connection, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _forget(self, connection: LeanClientProtocol) -> None:
        self._cancel(connection)
        idle = self._idle.get(connection.key)
        if idle is not None:
            try:
                idle.remove(connection)
            except ValueError:
                pass
            if not idle:
                del self._idle[connection.key]
        if connection._closed:
            self._all.discard(connection)

    def idle_count(self, key: Any) -> int:
        return len(self._idle.get(key, ()))

    def idle_connections(self, key: Any) -> tuple[LeanClientProtocol, ...]:
        """The idle connections kept for ``key``, most recently used last (for tests, metrics)."""
        return tuple(self._idle.get(key, ()))

    def origins(self) -> list[Any]:
        """The keys that have idle connections now."""
        return list(self._idle)

    def close_idle(self, key: Any) -> None:
        """Close the idle connections kept for ``key`` (an origin not used again)."""
        for connection in list(self._idle.pop(key, ())):
            self._cancel(connection)
            connection.close()

    def closeCachedConnections(self, grace: float = CLOSE_GRACE  # noqa: N802 (Twisted's name)
                               ) -> "Deferred[None]":
        """Close every idle connection; fire when they are gone (shutdown).

        A clean TLS close waits for the server's close_notify; a server that
        never sends it must not hold the relay's shutdown, so what is still
        open after ``grace`` seconds is aborted.
        """
        waits = []
        closing = []
        for key in list(self._idle):
            for connection in self._idle.pop(key):
                self._cancel(connection)
                done: Deferred[None] = Deferred()
                waits.append(done)
                closing.append(connection)
                connection._on_idle = lambda _c, d=done: d.called or d.callback(None)
                connection.close()
        if not waits:
            return succeed(None)
        pending = [c for c in closing if not c._closed]
        if not pending:
            return gatherResults(waits).addCallback(lambda _: None)

        def abort_rest() -> None:
            for connection in pending:
                if not connection._closed and connection.transport is not None:
                    connection.transport.abortConnection()

        timer = self._reactor.callLater(grace, abort_rest)

        def gone(_: object) -> None:
            if timer.active():
                timer.cancel()

        return gatherResults(waits).addCallback(gone)


class _Origin:
    __slots__ = ("key", "endpoint", "host")

    def __init__(self, key: tuple[bytes, bytes, int], endpoint: IStreamClientEndpoint,
                 host: bytes) -> None:
        self.key = key
        self.endpoint = endpoint
        self.host = host


@implementer(IAgent)
class LeanAgent:
    """An ``IAgent`` on :class:`LeanPool`, for the few origins a relay talks to.

    Same checks as Twisted's ``Agent``: the URL must be visible ASCII, the method
    a token, the scheme http or https; a Host header is added unless the
    caller set one; the fragment is not sent; each origin's endpoint (TLS
    with certificate checks for https, from ``endpoints``) is made once.
    """

    max_origins = 256

    def __init__(self, reactor: Any, endpoints: IAgentEndpointFactory,
                 pool: LeanPool | None = None) -> None:
        self._reactor = reactor
        self._endpoints = endpoints
        self.pool = pool if pool is not None else LeanPool(reactor)
        self._origins: dict[bytes, _Origin] = {}
        self._methods: set[bytes] = set()

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None  # noqa: N803 (IAgent)
                ) -> "Deferred[IResponse]":
        try:
            origin, path = self._split(method, uri)
        except Exception:
            return fail(Failure())
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"host"):
            headers = headers.copy()
            headers.addRawHeader(b"host", origin.host)
        request = _Request(method, path, uri, headers, bodyProducer)
        pool = self.pool

        def send(connection: LeanClientProtocol) -> "Deferred[IResponse]":
            return connection.request(request)

        def not_sent(failure: Failure) -> "Deferred[IResponse]":
            # Not one byte was written (the connection had closed): the one
            # case where sending again cannot run the request twice.
            failure.trap(RequestNotSent)
            return pool.get(origin.key, origin.endpoint).addCallback(send)

        take_idle = getattr(pool, "take_idle", None)  # a LeanPool's; any pool has get()
        connection = take_idle(origin.key) if take_idle is not None else None
        if connection is None:
            sent = pool.get(origin.key, origin.endpoint).addCallback(send)
        else:
            # A warm connection: send at once, without a Deferred for the
            # connection chained to the response's (the same outcome as
            # ``succeed(connection).addCallback(send)``, a few µs cheaper).
            try:
                sent = connection.request(request)
            except Exception:
                sent = fail(Failure())
        return sent.addErrback(not_sent)

    def forget_origin(self, base: bytes) -> None:
        """Drop what was learnt of ``base`` (``scheme://host:port``), close its idle connections."""
        origin = self._origins.pop(base, None)
        if origin is not None:
            self.pool.close_idle(origin.key)

    def _split(self, method: bytes, uri: bytes) -> tuple[_Origin, bytes]:
        if method not in self._methods:
            if not isinstance(method, bytes):
                raise TypeError(f"method={method!r} is {type(method)}, but must be bytes")
            check_method(method)
            self._methods.add(method)
        uri = uri.strip()
        if not uri or any(b < 0x21 or b > 0x7e for b in uri):
            raise ValueError("Invalid URI: not visible ASCII")
        start = uri.find(b"://")
        slash = uri.find(b"/", start + 3) if start > 0 else -1
        base, path = (uri, b"/") if slash < 0 else (uri[:slash], uri[slash:])
        path = path.split(b"#", 1)[0] or b"/"
        origin = self._origins.get(base)
        if origin is None:
            origin = self._learn(base)
        return origin, path

    def _learn(self, base: bytes) -> _Origin:
        parsed = URI.fromBytes(base)
        if parsed.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {parsed.scheme!r}")
        if not parsed.host:
            raise ValueError(f"no host in URL {base[:100]!r}")
        host = parsed.host
        shown = b"[" + host + b"]" if b":" in host else host
        if (parsed.scheme, parsed.port) not in ((b"http", 80), (b"https", 443)):
            shown = b"%b:%d" % (shown, parsed.port)
        origin = _Origin((parsed.scheme, host, parsed.port),
                         self._endpoints.endpointForURI(parsed), shown)
        if len(self._origins) >= self.max_origins:
            self._origins.clear()
        self._origins[base] = origin
        return origin


def lean_agent(reactor: Any, size: int, idle_timeout: float,
               connect_timeout: float) -> tuple[LeanAgent, LeanPool]:
    """An agent and its pool; the relay's agents are made by :mod:`mterelay.http.connections`."""
    pool = LeanPool(reactor, size, idle_timeout)
    return LeanAgent(reactor, NoDelayEndpointFactory(reactor, connect_timeout), pool), pool


__all__ = ["BadResponse", "CLOSE_GRACE", "LeanAgent", "LeanClientProtocol", "LeanPool",
           "LeanResponse", "MAX_HEADERS", "MAX_HEADER_LINE", "MAX_HEAD_BYTES", "TLSHandshakeFailed",
           "idle_limit", "lean_agent"]
