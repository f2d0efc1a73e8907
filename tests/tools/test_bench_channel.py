"""The server-channel measurement of issue 18 (Deliver 3) measures what it says.

Both columns must do the same work for the comparison to mean anything: each
setup of ``bench.inprocess_channel`` answers the 1 KiB POST completely under
both channels, and the lean prototype behind ``bench.measure_channel``
answers over a real socket like Twisted's channel does (keep-alive,
pipelined requests in order, a chunked body, a refused malformed request).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from bench import inprocess_channel
from bench.server_channel import ANSWER, make_site


class InProcessTests(TestCase):
    def test_every_setup_answers_under_both_channels(self) -> None:
        for setup in inprocess_channel.SETUPS:
            for kind in ("twisted", "lean"):
                with self.subTest(setup=setup, kind=kind):
                    self.assertGreater(inprocess_channel.run(setup, kind, 20), 0)

    def test_check_refuses_a_short_answer(self) -> None:
        with self.assertRaises(AssertionError):
            inprocess_channel.check("hello", b"HTTP/1.1 200 OK\r\n\r\n" + ANSWER[:-1])


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.closed.callback(self.data)


POST = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
POST_CLOSE = (b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n")


class OverSocketTests(TestCase):
    """Twisted's channel and the lean prototype, same bytes, same answers."""

    @inlineCallbacks
    def exchange(self, kind: str, data: bytes) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            make_site(kind))
        self.addCleanup(port.stopListening)
        client = _Collect()
        factory = Factory.forProtocol(lambda: client)
        protocol = yield TCP4ClientEndpoint(reactor, "127.0.0.1",
                                            port.getHost().port).connect(factory)
        protocol.transport.write(data)
        safety = reactor.callLater(5, protocol.transport.loseConnection)
        got = yield client.closed
        if safety.active():
            safety.cancel()
        return got

    @inlineCallbacks
    def test_pipelined_keep_alive_then_close(self) -> None:
        for kind in ("twisted", "lean"):
            got = yield self.exchange(kind, POST + POST + POST_CLOSE + POST)
            # Three answers in order; the request after Connection: close is dropped.
            self.assertEqual(got.count(b"HTTP/1.1 200 OK\r\n"), 3, kind)
            self.assertEqual(got.count(ANSWER), 3, kind)
            self.assertTrue(got.endswith(ANSWER), kind)

    @inlineCallbacks
    def test_conflicting_content_length_refused(self) -> None:
        bad = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 5\r\n\r\nhello"
        for kind in ("twisted", "lean"):
            got = yield self.exchange(kind, bad)
            self.assertTrue(got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (kind, got))
            self.assertNotIn(ANSWER, got)
