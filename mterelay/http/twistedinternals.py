"""Every use of a Twisted private name, in one module.

mterelay leans on a few details of twisted.web that are not public API: the
client's request object, two connection-pool hooks, the HTTP/1.1 channel's
request line and cleanup step, the negotiating wrapper's inner channel, the
abort timer, HTTP/2's reactor, and two fields of the endpoint service.  Each
is reached only through this module, and ``tests/integration/test_twistedinternals.py``
pins the behaviour relied on, so a Twisted upgrade that changes one fails one
named test instead of breaking the relay somewhere else.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.web._newclient import Request as _ClientRequest
from twisted.web._newclient import _ensureValidMethod
from twisted.web.client import HTTPConnectionPool
from twisted.web.http import _GenericHTTPChannelProtocol
from twisted.web.server import Request

__all__ = [
    "HookedRequest", "NegotiatingChannelBase", "RelayConnectionPool", "check_method",
    "client_request", "fail_start_synchronously", "h2_stream_reactor", "inner_channel",
    "is_closing", "is_disconnected", "is_h2_stream", "request_line", "schedule_abort",
    "transport_aborting", "waiting_for_port",
]

#: The protocol-negotiating wrapper (HTTP/1.1 or, with ALPN h2, HTTP/2) twisted.web
#: puts around every server connection; it is private, and subclassed by web/guard.
NegotiatingChannelBase = _GenericHTTPChannelProtocol


# --- the HTTP client (http/connections) ------------------------------------

def client_request(method: bytes, path: bytes, headers: Any, body: Any, persistent: bool,
                   parsed_uri: Any) -> Any:
    """A ``_newclient.Request`` built without re-validating what the agent checked once.

    ``Request._construct`` skips the per-request method and URI checks that the
    public constructor repeats (the agent checks a method once, the URI per origin).
    """
    return _ClientRequest._construct(method, path, headers, body, persistent=persistent,
                                     parsedURI=parsed_uri)


def check_method(method: bytes) -> None:
    """Twisted's own method validation (ValueError for a method it would refuse)."""
    _ensureValidMethod(method)


def transport_aborting(transport: Any) -> bool:
    """True once ``abortConnection`` was called on a TCP transport (before it has closed)."""
    return bool(getattr(transport, "_aborting", False))


def is_closing(connection: Any) -> bool:
    """True once ``loseConnection`` or ``abortConnection`` was called on its transport."""
    transport = getattr(connection, "transport", None)
    if transport is None:
        return True
    return bool(getattr(transport, "disconnecting", False)
                or getattr(transport, "disconnected", False)
                or transport_aborting(transport))


class RelayConnectionPool(HTTPConnectionPool):  # overrides two private hooks
    """An ``HTTPConnectionPool`` that never keeps a connection that is closing,
    and never resends a request that may have been received."""

    retryAutomatically = False

    def _putConnection(self, key: Any, connection: Any) -> None:  # noqa: N802 (Twisted hook)
        if is_closing(connection):
            return  # its close is under way; connectionLost forgets it
        super()._putConnection(key, connection)

    def _removeConnection(self, key: Any, connection: Any) -> None:  # noqa: N802 (Twisted hook)
        super()._removeConnection(key, connection)
        if not self._connections.get(key):
            self._connections.pop(key, None)  # no empty list left per origin ever seen

    def close_idle(self, key: Any) -> None:
        """Close the idle connections kept for ``key`` and forget the key.

        For an origin the caller will not use again (an evicted remote
        relay).  Connections busy with a request are not touched; they come
        back and time out like any other.
        """
        for connection in self._connections.pop(key, []):
            timer = self._timeouts.pop(connection, None)
            if timer is not None and timer.active():
                timer.cancel()
            connection.transport.loseConnection()


# --- the HTTP/1.1 server channel (http/streaming, web/site, web/guard) ------

def request_line(channel: Any) -> tuple[bytes, bytes, bytes] | None:
    """(command, path, version) of the request whose headers the channel just read.

    ``HTTPChannel`` keeps them as ``_command``/``_path``/``_version`` when it calls
    ``gotLength``; None when the channel is not one that does (so the caller falls
    back to Twisted's buffered path).
    """
    try:
        return channel._command, channel._path, channel._version
    except AttributeError:
        return None


class HookedRequest(Request):
    """A server ``Request`` whose private cleanup step is reachable as :meth:`clean_up`.

    ``Request._cleanup`` runs after ``finish`` and hands the connection to the
    next pipelined request; a request still reading its body must delay it.
    """

    def _cleanup(self) -> None:
        self.clean_up()

    def clean_up(self) -> None:
        """Run Twisted's cleanup now; subclasses override and call ``super().clean_up()``."""
        Request._cleanup(self)


def is_disconnected(request: Any) -> bool:
    """True once the request's connection was lost (Twisted's ``_disconnected``)."""
    return bool(getattr(request, "_disconnected", False))


def inner_channel(channel: Any) -> Any:
    """The channel inside twisted.web's negotiating wrapper (itself when not wrapped)."""
    return getattr(channel, "_channel", channel)


def schedule_abort(channel: Any) -> None:
    """Arm the channel's abort timer, as Twisted's own idle timeout does, unless armed."""
    if channel.abortTimeout is not None and channel._abortingCall is None:
        channel._abortingCall = channel.callLater(channel.abortTimeout, channel.forceAbortClient)


# --- HTTP/2 (http/streaming, http/h2) --------------------------------------

def is_h2_stream(channel: Any) -> bool:
    """Whether a request's channel is an ``H2Stream`` (it has a stream id and a connection)."""
    return hasattr(channel, "streamID") and hasattr(channel, "_conn")


def h2_stream_reactor(stream: Any) -> Any:
    """The reactor of an ``H2Stream``'s connection (Twisted keeps it as ``_reactor``)."""
    return stream._conn._reactor


# --- the listening service (service/tap) -----------------------------------

def fail_start_synchronously(service: StreamServerEndpointService) -> None:
    """Make a bind failure raise from ``privilegedStartService`` (twistd exits != 0)."""
    service._raiseSynchronously = True


def waiting_for_port(service: StreamServerEndpointService) -> "Deferred[Any]":
    """The Deferred that fires with the listening port once ``privilegedStartService`` ran."""
    return service._waitingForPort
