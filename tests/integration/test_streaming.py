"""Request bodies stream through the relay; the connection stays in step."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import UNKNOWN_LENGTH

from mterelay.store.memory import MemoryPairStore
from mterelay.http.upstream import UpstreamForwarder, make_agent
from mterelay.web.root import RelayRoot
from mterelay.web.site import RelaySite
from mterelay.http.streaming import BodyPipe, BodyTooLarge, ClientGone
from mterelay.service.metrics import RelayMetrics
from tests.helpers.support import NoRemoteRelay, relay_config
from tests.helpers.transports import FakeTransport, RawClient


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


class BodyPipeTests(SynchronousTestCase):
    def test_buffers_until_consumer_then_streams(self) -> None:
        pipe = BodyPipe(10, FakeTransport())
        pipe.write(b"abc")
        sink = Sink()
        done = pipe.startProducing(sink)
        self.assertEqual(sink.data, [b"abc"])
        pipe.write(b"defghij")
        self.assertEqual(sink.data, [b"abc", b"defghij"])
        self.assertNoResult(done)
        pipe.finish()
        self.assertIsNone(self.successResultOf(done))

    def test_pauses_client_past_high_water(self) -> None:
        transport = FakeTransport()
        pipe = BodyPipe(UNKNOWN_LENGTH, transport)
        pipe.write(b"x" * (BodyPipe.high_water + 1))
        self.assertEqual(transport.paused, 1)
        pipe.write(b"y")
        self.assertEqual(transport.paused, 1)
        pipe.startProducing(Sink())
        self.assertEqual(transport.resumed, 1)

    def test_consumer_back_pressure_reaches_client(self) -> None:
        transport = FakeTransport()
        pipe = BodyPipe(5, transport)
        pipe.startProducing(Sink())
        pipe.pauseProducing()
        pipe.pauseProducing()
        self.assertEqual(transport.paused, 1)
        pipe.resumeProducing()
        self.assertEqual(transport.resumed, 1)

    def test_client_gone(self) -> None:
        pipe = BodyPipe(5, FakeTransport())
        done = pipe.startProducing(Sink())
        pipe.fail(Failure(ConnectionError("reset")))
        self.failureResultOf(done, ClientGone)

    def test_client_gone_before_consumer(self) -> None:
        pipe = BodyPipe(5, FakeTransport())
        pipe.write(b"ab")
        pipe.fail(Failure(ConnectionError("reset")))
        self.failureResultOf(pipe.startProducing(Sink()), ClientGone)

    def test_stop_producing_never_fires(self) -> None:
        pipe = BodyPipe(5, FakeTransport())
        sink = Sink()
        done = pipe.startProducing(sink)
        pipe.stopProducing()
        pipe.write(b"late")
        pipe.finish()
        self.assertNoResult(done)
        self.assertEqual(sink.data, [])

    def test_consumed_once(self) -> None:
        pipe = BodyPipe(5, FakeTransport())
        pipe.startProducing(Sink())
        self.assertRaises(RuntimeError, pipe.startProducing, Sink())

    def test_read_all(self) -> None:
        pipe = BodyPipe(6, FakeTransport())
        pipe.write(b"abc")
        result = pipe.read_all(limit=10)
        pipe.write(b"def")
        self.assertNoResult(result)
        pipe.finish()
        self.assertEqual(self.successResultOf(result), b"abcdef")

    def test_read_all_limit_fails_early(self) -> None:
        pipe = BodyPipe(UNKNOWN_LENGTH, FakeTransport())
        result = pipe.read_all(limit=4)
        pipe.write(b"abcde")
        self.failureResultOf(result, BodyTooLarge)
        pipe.write(b"more is dropped")
        pipe.finish()


class RawUpstream(protocol.Protocol):
    """Counts raw bytes; answers once it has seen ``expect`` bytes after the head."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        head, sep, body = self.received.partition(b"\r\n\r\n")
        if sep and len(body) >= self.factory.expect and not getattr(self, "answered", False):
            self.answered = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class StreamingIntegrationTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def start(self, expect: int, **settings: str) -> Any:
        up = protocol.Factory.forProtocol(RawUpstream)
        up.connections = []
        up.expect = expect
        up_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(up)
        self.addCleanup(up_port.stopListening)
        config = relay_config(
            UPSTREAM=f"http://127.0.0.1:{up_port.getHost().port}", PASS_THROUGH_ROUTES="/pt",
            **settings,
        )
        agent = make_agent(reactor)
        self.addCleanup(agent.pool.closeCachedConnections)
        forwarder = UpstreamForwarder(reactor, agent, config.upstream, 5.0)
        metrics = RelayMetrics()
        site = RelaySite(RelayRoot(config, forwarder, reactor, MemoryPairStore(reactor),
                                   NoRemoteRelay(), metrics), reactor, metrics)
        relay_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(relay_port.stopListening)
        client = yield TCP4ClientEndpoint(
            reactor, "127.0.0.1", relay_port.getHost().port
        ).connect(protocol.Factory.forProtocol(RawClient))
        self.addCleanup(client.transport.loseConnection)
        return up, client

    def _debug(self) -> Any:
        return getattr(self, "debug_info", lambda: None)()

    @defer.inlineCallbacks
    def wait_for(self, condition: Any, what: str) -> Any:
        for _ in range(300):
            if condition():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail(f"timed out waiting for {what}: {self._debug()!r}")

    @defer.inlineCallbacks
    def test_upstream_sees_body_before_client_finishes(self) -> Any:
        up, client = yield self.start(expect=2000)
        self.debug_info = lambda: ([c.received[:200] for c in up.connections], client.received)
        client.transport.write(
            b"POST /pt HTTP/1.1\r\nHost: relay\r\nContent-Length: 2000\r\n\r\n" + b"a" * 1000
        )
        # Half the body is out; a spooling relay would not have called the upstream yet.
        yield self.wait_for(
            lambda: up.connections
            and up.connections[0].received.partition(b"\r\n\r\n")[2] == b"a" * 1000,
            "the first half at the upstream",
        )
        client.transport.write(b"b" * 1000)
        yield self.wait_for(lambda: client.received.endswith(b"ok"), "the answer")
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200"))

    @defer.inlineCallbacks
    def test_chunked_request_streams(self) -> Any:
        up, client = yield self.start(expect=0)
        client.transport.write(
            b"PUT /pt HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        yield self.wait_for(
            lambda: up.connections and b"hello" in up.connections[0].received, "the first chunk"
        )
        client.transport.write(b"0\r\n\r\n")
        yield self.wait_for(lambda: client.received.endswith(b"ok"), "the answer")

    @defer.inlineCallbacks
    def test_early_answer_keeps_connection_in_step(self) -> Any:
        up, client = yield self.start(expect=0)
        # A 569 is answered as soon as the headers are in, while the body still arrives.
        client.transport.write(
            b"POST /encrypted HTTP/1.1\r\nHost: relay\r\nContent-Length: 10\r\n\r\nhalf-"
        )
        yield self.wait_for(lambda: b'"code":569' in client.received, "the 569")
        client.transport.write(b"body!")
        client.transport.write(b"GET /api/mte-echo/again HTTP/1.1\r\nHost: relay\r\n\r\n")
        yield self.wait_for(lambda: b'"echo":"again"' in client.received, "the second answer")
        self.assertEqual(up.connections, [])
