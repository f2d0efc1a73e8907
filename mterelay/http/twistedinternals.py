"""Every use of a Twisted private name, in one module.

mterelay leans on a few details of twisted.web that are not public API: the
HTTP client's failure classes and method check, the transport's abort flag,
the HTTP/1.1 channel's request line and cleanup step, the negotiating
wrapper's inner channel, the abort timer, HTTP/2's reactor, and two fields
of the endpoint service.  Each
is reached only through this module, and ``tests/integration/test_twistedinternals.py``
pins the behaviour relied on, so a Twisted upgrade that changes one fails one
named test instead of breaking the relay somewhere else.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.web import _newclient
from twisted.web.http import _GenericHTTPChannelProtocol
from twisted.web.server import Request

__all__ = [
    "DataLoss", "HookedRequest", "NegotiatingChannelBase", "ParseError", "WrongBodyLength",
    "check_method", "fail_start_synchronously", "h2_stream_reactor", "inner_channel",
    "is_disconnected", "is_h2_stream", "request_line", "schedule_abort",
    "transport_aborting", "waiting_for_port",
]

#: The protocol-negotiating wrapper (HTTP/1.1 or, with ALPN h2, HTTP/2) twisted.web
#: puts around every server connection; it is private, and subclassed by web/guard.
NegotiatingChannelBase = _GenericHTTPChannelProtocol


# --- the HTTP client (http/leanclient) -------------------------------------

#: The failures Twisted's HTTP/1.1 client raises, which the relay's callers
#: (``readBody``, treq, ``http/failures``) already know; the lean client raises
#: the same ones.  Public in meaning, but defined in the private ``_newclient``.
ParseError = _newclient.ParseError
WrongBodyLength = _newclient.WrongBodyLength
DataLoss = _newclient._DataLoss


def check_method(method: bytes) -> None:
    """Twisted's own method validation (ValueError for a method it would refuse)."""
    _newclient._ensureValidMethod(method)


def transport_aborting(transport: Any) -> bool:
    """True once ``abortConnection`` was called on a TCP transport (before it has closed)."""
    return bool(getattr(transport, "_aborting", False))


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
