"""HTTP/2 (TLS listeners, ALPN ``h2``): the few places where it is not HTTP/1.1.

Twisted's ``_GenericHTTPChannelProtocol`` swaps its HTTP/1.1 channel for an
``H2Connection`` when ALPN chose ``h2``.  The relay's code was written against
the HTTP/1.1 channel; an ``H2Connection`` has no ``loseConnection``,
``requests`` or ``persistent``, its requests' ``channel`` is an ``H2Stream``
(no transport), a response must not carry ``Connection``, and a request body
has no ``Content-Length`` or ``Transfer-Encoding`` when the client streams
it.  This module holds those differences, each one pinned by
tests/integration/test_http2_integration.py.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from mterelay.http.bodies import declares_body
from mterelay.http.streaming import streamed_body

log = Logger(namespace="mterelay.h2")

HTTP2 = b"HTTP/2"


def is_h2_connection(channel: Any) -> bool:
    """The negotiated connection is HTTP/2 (an ``H2Connection``)."""
    return hasattr(channel, "conn") and hasattr(channel, "streams")


def is_h2_request(request: Any) -> bool:
    """The request arrived on an HTTP/2 stream."""
    return getattr(request, "clientproto", None) == HTTP2 or hasattr(
        getattr(request, "channel", None), "streamID")


def busy(channel: Any) -> bool:
    """Requests are open on the connection (HTTP/1.1 or HTTP/2)."""
    if is_h2_connection(channel):
        return bool(channel.streams)
    return bool(getattr(channel, "requests", None))


def close_gracefully(channel: Any) -> None:
    """No new requests on ``channel``; close it now if idle (the caller comes back later).

    HTTP/1.1: non-persistent, closed when idle.  HTTP/2: once its streams
    are done, a GOAWAY (NO_ERROR, naming the last stream taken), then the
    transport closes after what is left to write.  Not earlier: the ``h2``
    state machine refuses to send anything after a GOAWAY, so the answers
    still in progress would be lost.  Streams a client opens meanwhile are
    served; the drain's grace period bounds it all.
    """
    if is_h2_connection(channel):
        if channel.streams or channel.transport is None:
            return
        try:
            channel.conn.close_connection(last_stream_id=channel.conn.highest_inbound_stream_id)
            channel.transport.write(channel.conn.data_to_send())
        except Exception:  # already closed by the client: nothing to say
            log.debug("GOAWAY not sent: the HTTP/2 connection is closing")
        # The H2Connection is the TLS transport's registered producer, and a
        # TLS transport with a producer postpones its close until the producer
        # leaves: without this the connection stayed open to the end of the grace.
        transport = channel.transport
        try:
            transport.unregisterProducer()
            transport.loseConnection()
        except Exception:
            # Half torn down already (the client's GOAWAY started a close that
            # waits for the same producer): finish it the hard way.
            log.debug("HTTP/2 connection closed by abort")
            transport.abortConnection()
        return
    channel.persistent = False
    if not getattr(channel, "requests", None):
        channel.loseConnection()


def request_has_body(request: Any) -> bool | None:
    """Whether an HTTP/2 request without Content-Length has a body; None when not HTTP/2.

    HTTP/2 has no chunked coding: a streamed body is DATA frames after the
    HEADERS frame, with neither Content-Length nor Transfer-Encoding.  The
    request has a body unless its stream ended without a DATA byte (a
    request without a body ends its stream with the HEADERS frame, or with
    an empty DATA frame).  When the stream is still open the body is assumed
    to follow (spec 6.3).
    """
    if not is_h2_request(request):
        return None
    if declares_body(request.requestHeaders):
        return None
    pipe = streamed_body(request)
    if pipe is not None:
        return not (pipe.complete and pipe.received == 0)
    content = getattr(request, "content", None)
    if content is None:
        return False
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return size > 0

