"""TCP_NODELAY on the relay's own connections (mterelay.http.nodelay), over real loopback sockets."""

from __future__ import annotations

import socket
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from mterelay.http.connections import persistent_agent
from mterelay.http.nodelay import NoDelayEndpoint
from mterelay.http.observe import NO_METRICS
from mterelay.web.site import RelaySite


def no_delay(transport: Any) -> bool:
    return bool(transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class Reporting(Resource):
    """Answers whether the server side of this request's connection has Nagle off."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"1" if no_delay(request.channel.transport) else b"0"


class NoDelayTests(TestCase):
    @defer.inlineCallbacks
    def test_client_endpoint_turns_nagle_off(self) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        protocol = yield NoDelayEndpoint(plain).connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.loseConnection)
        self.assertTrue(no_delay(protocol.transport))
        other = yield plain.connect(Factory.forProtocol(Protocol))
        self.addCleanup(other.transport.loseConnection)
        self.assertFalse(no_delay(other.transport))  # Twisted's default, for contrast

    @defer.inlineCallbacks
    def test_relay_site_and_agent_connections(self) -> Any:
        site = RelaySite(Reporting(), reactor, NO_METRICS)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        agent, pool = persistent_agent(reactor, 4, 30, connect_timeout=5)
        self.addCleanup(pool.closeCachedConnections)
        url = f"http://127.0.0.1:{port.getHost().port}/".encode()
        for _ in range(2):  # the second request reuses the pooled connection
            response = yield agent.request(b"GET", url)
            self.assertEqual((yield treq.content(response)), b"1")
        [key] = pool.origins()
        [connection] = pool.idle_connections(key)
        self.assertTrue(no_delay(connection.transport))


class EndpointChoiceTests(TestCase):
    """IP literals connect directly; only names go through a resolver."""

    def endpoint(self, url: bytes) -> Any:
        from twisted.web.client import URI

        from mterelay.http.nodelay import NoDelayEndpointFactory

        return NoDelayEndpointFactory(reactor, 5).endpointForURI(URI.fromBytes(url)).inner

    def test_ip_literals_skip_the_lookup(self) -> None:
        from twisted.internet.endpoints import (HostnameEndpoint, TCP4ClientEndpoint,
                                                TCP6ClientEndpoint)

        self.assertIsInstance(self.endpoint(b"http://127.0.0.1:8080/"), TCP4ClientEndpoint)
        self.assertIsInstance(self.endpoint(b"http://[::1]:8080/"), TCP6ClientEndpoint)
        self.assertIsInstance(self.endpoint(b"http://api.example.com/"), HostnameEndpoint)

    def test_https_wraps_tls(self) -> None:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        endpoint = self.endpoint(b"https://10.0.0.1/")
        self.assertIsInstance(endpoint._wrappedEndpoint, TCP4ClientEndpoint)

    def test_other_schemes_refused(self) -> None:
        self.assertRaises(ValueError, self.endpoint, b"ftp://10.0.0.1/")
