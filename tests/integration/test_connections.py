"""Pooled upstream connections (mterelay.http.connections, bodies.abandon), over real loopback sockets.

The upstream here is a raw protocol that answers every request with one
write (headers and body together), as nginx does: the client then parses the
whole response in one read, which is what exposed the bug these tests pin.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from mterelay.http.bodies import DRAIN_LIMIT, BytesProducer, abandon
from mterelay.http.connections import agent_pool, persistent_agent
from mterelay.http.nodelay import NoDelayEndpointFactory
from mterelay.http.upstream import make_agent
from tests.helpers.transports import take_request


class OneWriteHTTP(Protocol):
    """Answers each request (Content-Length bodies only) with a single write."""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while (request := take_request(self.buffer)) is not None:
            self.buffer = request[1]
            body = self.factory.body  # type: ignore[attr-defined]
            self.factory.requests += 1  # type: ignore[attr-defined]
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class Upstream(Factory):
    protocol = OneWriteHTTP

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.connections = 0
        self.requests = 0


class PoolTests(TestCase):
    @defer.inlineCallbacks
    def serve(self, body: bytes = b"x" * 1024) -> Any:
        upstream = Upstream(body)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(upstream)
        self.addCleanup(port.stopListening)
        return upstream, f"http://127.0.0.1:{port.getHost().port}/".encode()

    @defer.inlineCallbacks
    def discard_then_post(self, agent: Any, url: bytes) -> Any:
        """A response dropped at its headers, then at once a POST on the pool.

        The POST is sent from ``callLater(0)`` — after the first response was
        parsed to its end (its body came in the same read) but before the
        closing connection's socket is gone.
        """
        first = yield agent.request(b"POST", url, None, BytesProducer(b"a" * 1024))
        from mterelay.http.bodies import discard
        discard(first)
        second = yield task.deferLater(
            reactor, 0, agent.request, b"POST", url, None, BytesProducer(b"b" * 1024))
        return second

    @defer.inlineCallbacks
    def test_production_agent_never_reuses_a_closing_connection(self) -> Any:
        upstream, url = yield self.serve()
        agent = make_agent(reactor)
        self.addCleanup(agent_pool(agent).closeCachedConnections)
        response = yield self.discard_then_post(agent, url)
        self.assertEqual(response.code, 200)
        body = yield _read(response)
        self.assertEqual(body, b"x" * 1024)
        self.assertEqual(upstream.connections, 2)  # the dropped one was not reused

    @defer.inlineCallbacks
    def test_twisted_pool_alone_hands_out_the_closing_connection(self) -> Any:
        """The failure the lean pool's closing rule exists for, shown on Twisted's own pool."""
        _, url = yield self.serve()
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent.usingEndpointFactory(reactor, NoDelayEndpointFactory(reactor, 5), pool=pool)
        failure = yield self.assertFailure(self.discard_then_post(agent, url), Exception)
        self.assertIn("ConnectionDone", repr(getattr(failure, "reasons", failure)))

    @defer.inlineCallbacks
    def test_many_discards_and_posts_all_succeed(self) -> Any:
        upstream, url = yield self.serve()
        agent, pool = persistent_agent(reactor, 16, 30, 5)
        self.addCleanup(pool.closeCachedConnections)
        codes = []
        for _ in range(20):
            response = yield self.discard_then_post(agent, url)
            codes.append(response.code)
            yield _read(response)
        self.assertEqual(codes, [200] * 20)

    @defer.inlineCallbacks
    def test_pool_refuses_a_closing_connection(self) -> Any:
        """A connection handed back while its close is under way is not kept."""
        _, url = yield self.serve()
        agent, pool = persistent_agent(reactor, 4, 30, 5)
        self.addCleanup(pool.closeCachedConnections)
        response = yield agent.request(b"GET", url)
        yield _read(response)
        key = (b"http", b"127.0.0.1", int(url.split(b":")[2].strip(b"/")))
        [idle] = pool.idle_connections(key)
        pool.get(key, None)  # takes it out, as a request would
        idle.transport.loseConnection()  # closing, not yet closed
        idle._on_idle(idle)  # handed back
        self.assertEqual(pool.idle_connections(key), ())
        self.assertTrue(idle.is_closing())

    def test_agents_expose_their_pool(self) -> None:
        """RelayService closes what agent_pool finds: every production agent has one."""
        from mterelay.http.connections import peer_agent
        for agent in (make_agent(reactor), peer_agent(reactor)):
            self.assertIsNotNone(agent_pool(agent))
        self.assertIsNone(agent_pool(Agent(reactor)))


class AbandonTests(TestCase):
    serve = PoolTests.serve

    @defer.inlineCallbacks
    def abandon_twice(self, body: bytes) -> Any:
        upstream, url = yield self.serve(body)
        agent, pool = persistent_agent(reactor, 4, 30, 5)
        self.addCleanup(pool.closeCachedConnections)
        first = yield agent.request(b"GET", url)
        abandon(first)
        second = yield task.deferLater(reactor, 0.01, agent.request, b"GET", url)
        self.assertEqual((yield _read(second)), body)
        return upstream

    @defer.inlineCallbacks
    def test_short_body_is_drained_and_its_connection_reused(self) -> Any:
        upstream = yield self.abandon_twice(b"s" * 1024)
        self.assertEqual((upstream.connections, upstream.requests), (1, 2))

    @defer.inlineCallbacks
    def test_long_body_closes_its_connection(self) -> Any:
        upstream = yield self.abandon_twice(b"L" * (DRAIN_LIMIT + 1))
        self.assertEqual((upstream.connections, upstream.requests), (2, 2))


def _read(response: Any) -> Any:
    from mterelay.http.bodies import read_limited
    return read_limited(response, 1 << 20).addCallback(lambda result: result[0])
