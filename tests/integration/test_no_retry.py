"""The relay's agents never resend a request that may have been received (spec 10).

Real loopback sockets: a raw server that answers the first request of a
connection and, like a relay killed with ``kill -9``, drops the connection
after reading the second - which it may well have executed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import RequestNotSent, ResponseNeverReceived

from mterelay.http.bodies import read_limited
from mterelay.http.connections import LeanAgent, persistent_agent


class DiesOnSecond(Protocol):
    """Answers request 1 of its connection; reads request 2 and closes without answering."""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.first = self.factory.connections == 1  # type: ignore[attr-defined]
        self.seen = 0
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.seen += 1
            self.factory.requests += 1  # type: ignore[attr-defined]
            if self.first and self.seen == 2:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            self.transport.write(answer)  # type: ignore[union-attr]


class DiesOnSecondFactory(Factory):
    protocol = DiesOnSecond

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0


class NoAutomaticRetryTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_get_lost_after_it_was_written_is_not_resent(self) -> None:
        # Failed before the fix: Twisted's pool resent the GET on a new
        # connection (3 requests at the server, the caller saw a 200).
        server = DiesOnSecondFactory()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server)
        self.addCleanup(port.stopListening)
        agent, pool = persistent_agent(reactor, 4, 30, 5)
        self.addCleanup(pool.closeCachedConnections)
        url = b"http://127.0.0.1:%d/x" % port.getHost().port
        first = yield agent.request(b"GET", url)
        body, _ = yield read_limited(first, 100)
        self.assertEqual(body, b"ok")
        yield deferLater(reactor, 0, lambda: None)  # the connection goes back to the pool
        with self.assertRaises(ResponseNeverReceived):
            yield agent.request(b"GET", url)
        self.assertEqual(server.requests, 2, "the lost GET was not sent again")
        self.assertEqual(server.connections, 1)


class _Protocol:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls = 0

    def request(self, request: Any) -> "Deferred[Any]":
        self.calls += 1
        return self.result() if callable(self.result) else self.result


class _Pool:
    persistent = True

    def __init__(self, *protocols: _Protocol) -> None:
        self.protocols = list(protocols)

    def get(self, key: Any, endpoint: Any) -> "Deferred[Any]":
        return succeed(self.protocols.pop(0))


class _Endpoints:
    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802
        return object()


class NotSentRetryTests(SynchronousTestCase):
    def test_request_not_sent_is_sent_once_more(self) -> None:
        closed = _Protocol(lambda: fail(RequestNotSent()))
        fresh = _Protocol(lambda: succeed("response"))
        agent = LeanAgent(None, _Endpoints(), _Pool(closed, fresh))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(agent.request(b"GET", b"http://h/x")), "response")
        self.assertEqual((closed.calls, fresh.calls), (1, 1))

    def test_other_failures_are_not_retried(self) -> None:
        lost = _Protocol(lambda: fail(ResponseNeverReceived([])))
        spare = _Protocol(lambda: succeed("response"))
        pool = _Pool(lost, spare)
        agent = LeanAgent(None, _Endpoints(), pool)  # type: ignore[arg-type]
        self.failureResultOf(agent.request(b"GET", b"http://h/x"), ResponseNeverReceived)
        self.assertEqual(spare.calls, 0)
