"""Pins every Twisted private detail mterelay relies on (mterelay.http.twistedinternals).

One test per detail: after a Twisted upgrade the failing test names what changed,
and the module it points at is the only place to adapt.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from mterelay.http import twistedinternals as internals


class ClientTests(TestCase):
    def test_client_failure_classes(self) -> None:
        """The lean client raises Twisted's own failure classes, so callers see no difference."""
        self.assertTrue(issubclass(internals.ParseError, Exception))
        self.assertTrue(issubclass(internals.WrongBodyLength, Exception))
        self.assertTrue(issubclass(internals.DataLoss, Exception))

    def test_check_method(self) -> None:
        """``_ensureValidMethod`` refuses a method that is not an RFC 9110 token."""
        internals.check_method(b"PATCH")
        self.assertRaises(ValueError, internals.check_method, b"GE T")


class TransportTests(TestCase):
    @defer.inlineCallbacks
    def test_transport_aborting_after_abort_connection(self) -> Any:
        """A TCP transport says ``_aborting`` between ``abortConnection`` and its close."""
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        connected: defer.Deferred[Any] = defer.Deferred()
        lost: defer.Deferred[None] = defer.Deferred()

        class Client(Protocol):
            def connectionMade(self) -> None:
                connected.callback(self.transport)

            def connectionLost(self, reason: Any) -> None:
                lost.callback(None)

        factory = ClientFactory.forProtocol(Client)
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        transport = yield connected
        self.assertFalse(internals.transport_aborting(transport))
        transport.abortConnection()
        self.assertTrue(internals.transport_aborting(transport))
        yield lost


class _Recorder(internals.HookedRequest):
    lines: list[Any] = []
    cleaned: list[Any] = []

    def gotLength(self, length: int | None) -> None:
        _Recorder.lines.append(internals.request_line(self.channel))
        super().gotLength(length)

    def clean_up(self) -> None:
        _Recorder.cleaned.append(self)
        super().clean_up()

    def process(self) -> None:
        self.write(b"ok")
        self.finish()


class ServerChannelTests(TestCase):
    def setUp(self) -> None:
        _Recorder.lines = []
        _Recorder.cleaned = []
        self.channel = HTTPChannel()
        self.channel.requestFactory = _Recorder
        self.channel.site = Site(Resource())
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_request_line_is_on_the_channel_at_got_length(self) -> None:
        """``HTTPChannel`` holds ``_command``/``_path``/``_version`` when ``gotLength`` runs."""
        self.channel.dataReceived(b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(_Recorder.lines, [(b"POST", b"/up?x=1", b"HTTP/1.1")])

    def test_request_line_none_for_other_channels(self) -> None:
        self.assertIsNone(internals.request_line(object()))

    def test_cleanup_runs_after_finish_and_hands_on_the_connection(self) -> None:
        """``Request._cleanup`` runs after ``finish``; the next pipelined request is then served."""
        self.channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(_Recorder.cleaned), 2)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200 OK"), 2)

    def test_is_disconnected_after_connection_lost(self) -> None:
        """``Request._disconnected`` turns True when the connection is lost."""
        request = internals.HookedRequest(self.channel)
        self.assertFalse(internals.is_disconnected(request))
        request.connectionLost(Exception("gone"))
        self.assertTrue(internals.is_disconnected(request))

    def test_schedule_abort_arms_the_abort_timer(self) -> None:
        """``HTTPChannel._abortingCall`` with ``callLater``/``abortTimeout``/``forceAbortClient``."""
        clock = task.Clock()
        channel = HTTPChannel()
        channel.callLater = clock.callLater
        channel.abortTimeout = 5
        transport = StringTransport()
        channel.makeConnection(transport)
        internals.schedule_abort(channel)
        first = channel._abortingCall
        internals.schedule_abort(channel)  # armed once only
        self.assertIs(channel._abortingCall, first)
        clock.advance(5)
        self.assertTrue(transport.disconnecting)

    def test_inner_channel_of_the_negotiating_wrapper(self) -> None:
        """``_GenericHTTPChannelProtocol`` keeps the HTTP/1.1 channel as ``_channel``."""
        from twisted.web.http import _genericHTTPChannelProtocolFactory
        wrapper = _genericHTTPChannelProtocolFactory(None)
        self.assertIsInstance(wrapper, internals.NegotiatingChannelBase)
        self.assertIsInstance(internals.inner_channel(wrapper), HTTPChannel)
        plain = HTTPChannel()
        self.assertIs(internals.inner_channel(plain), plain)


class H2Tests(TestCase):
    def test_h2_connection_keeps_its_reactor(self) -> None:
        """``H2Connection._reactor`` and an ``H2Stream``'s ``_conn``/``streamID``."""
        try:
            from twisted.web._http2 import H2Connection, H2Stream
        except ImportError as missing:  # pragma: no cover - h2 is a dependency
            self.fail(f"HTTP/2 support missing: {missing}")
        clock = task.Clock()
        connection = H2Connection(clock)
        connection.transport = StringTransport()
        site = Site(Resource())
        stream = H2Stream(1, connection, [], internals.HookedRequest, site, site)
        self.assertTrue(internals.is_h2_stream(stream))
        self.assertIs(internals.h2_stream_reactor(stream), clock)
        self.assertFalse(internals.is_h2_stream(HTTPChannel()))


class ListenerTests(TestCase):
    @defer.inlineCallbacks
    def test_waiting_for_port_and_synchronous_failure(self) -> Any:
        """``StreamServerEndpointService._waitingForPort`` fires with the port;
        ``_raiseSynchronously`` makes a bind failure raise from privilegedStartService."""
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        service = StreamServerEndpointService(endpoint, Factory.forProtocol(Protocol))
        internals.fail_start_synchronously(service)
        service.privilegedStartService()
        listening: defer.Deferred[Any] = defer.Deferred()
        internals.waiting_for_port(service).addCallback(
            lambda port: (listening.callback(port), port)[1])
        port = yield listening
        self.addCleanup(service.stopService)
        taken = StreamServerEndpointService(
            TCP4ServerEndpoint(reactor, port.getHost().port, interface="127.0.0.1"),
            Factory.forProtocol(Protocol))
        internals.fail_start_synchronously(taken)
        self.assertRaises(Exception, taken.privilegedStartService)
