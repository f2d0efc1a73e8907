"""The lean HTTP/1.1 agent (mterelay.http.leanclient) against real sockets on 127.0.0.1.

The server is a raw Twisted ``Protocol`` that writes exact bytes, so each
test decides what is on the wire.  The behaviour suite runs against both
Twisted's ``Agent`` and :class:`LeanAgent`, which shows them equivalent on
well-formed answers; the strictness suite is in test_leanclient_strict.py.
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import (Agent, BrowserLikePolicyForHTTPS, FileBodyProducer,
                                HTTPConnectionPool, RequestGenerationFailed, readBody,
                                ResponseDone, ResponseFailed, ResponseNeverReceived)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from mterelay.http.leanclient import LeanAgent, LeanPool
from mterelay.http.nodelay import NoDelayEndpointFactory


# --------------------------------------------------------------------------- server

class RawServer(Protocol):
    """Answers each complete request with the factory's next answer, byte for byte."""

    def connectionMade(self) -> None:  # noqa: N802
        self.buffer = b""
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        while True:
            request = _complete_request(self.buffer)
            if request is None:
                return
            head, body, rest = request
            self.buffer = rest
            self.factory.requests.append((head, body, self))
            answer = self.factory.next_answer(self, head, body)
            if answer is None:
                continue
            if isinstance(answer, (list, tuple)):
                for piece in answer:
                    self.transport.write(piece)
            else:
                self.transport.write(answer)
            if self.factory.close_after:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.lost.callback(None)


def _complete_request(buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head, rest = buffer[:end + 4], buffer[end + 4:]
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        stop = rest.find(b"0\r\n\r\n")
        if stop < 0:
            return None
        return head, rest[:stop + 5], rest[stop + 5:]
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if len(rest) < length:
        return None
    return head, rest[:length], rest[length:]


class RawServerFactory(Factory):
    protocol = RawServer

    def __init__(self, answers: list[Any] | Callable[..., Any]) -> None:
        self.answers = answers
        self.connections: list[RawServer] = []
        self.requests: list[tuple[bytes, bytes, RawServer]] = []
        self.close_after = False

    def next_answer(self, connection: RawServer, head: bytes, body: bytes) -> Any:
        if callable(self.answers):
            return self.answers(connection, head, body)
        return self.answers.pop(0) if self.answers else None


# --------------------------------------------------------------------------- client side

class Collected:
    """What a request came to: its response and body, or the failure."""

    def __init__(self) -> None:
        self.response: Any = None
        self.failure: Failure | None = None
        self.body = b""
        self.reason: Failure | None = None

    @property
    def refused(self) -> bool:
        """Failed before or during the body (ResponseDone/PotentialDataLoss are success)."""
        if self.failure is not None:
            return True
        return self.reason is not None and not self.reason.check(ResponseDone, PotentialDataLoss)

    def describe(self) -> str:
        if self.failure is not None:
            return f"refused: {self.failure.type.__name__}"
        if self.refused:
            return f"body failed: {self.reason.type.__name__}"  # type: ignore[union-attr]
        return f"accepted {self.response.code} {self.body[:20]!r}"


class _Sink(Protocol):
    def __init__(self, collected: Collected, done: Deferred[Collected]) -> None:
        self.collected = collected
        self.done = done

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.collected.body += data

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.collected.reason = reason
        self.done.callback(self.collected)


def collect(agent: Any, method: bytes, url: bytes, headers: Headers | None = None,
            body: Any = None) -> Deferred[Collected]:
    collected = Collected()
    done: Deferred[Collected] = Deferred()

    def got(response: Any) -> Deferred[Collected]:
        collected.response = response
        response.deliverBody(_Sink(collected, done))
        return done

    def failed(failure: Failure) -> Collected:
        collected.failure = failure
        return collected

    return agent.request(method, url, headers, body).addCallbacks(got, failed)


@implementer(IBodyProducer)
class ControlledBody:
    """A request body the test writes by hand (``length`` known or UNKNOWN_LENGTH)."""

    def __init__(self, length: Any = UNKNOWN_LENGTH) -> None:
        self.length = length
        self.consumer: Any = None
        self.finished: Deferred[None] = Deferred()
        self.paused = 0
        self.stopped = False
        self.started: Deferred[Any] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        self.consumer = consumer
        self.started.callback(consumer)
        return self.finished

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused += 1

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True


def twisted_agent() -> tuple[Any, Any]:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.retryAutomatically = False
    return Agent(reactor, pool=pool), pool


def lean(clock: Any = None, size: int = 2, idle: float = 60,
         endpoints: Any = None) -> tuple[LeanAgent, LeanPool]:
    pool = LeanPool(clock if clock is not None else reactor, size, idle)
    factory = endpoints if endpoints is not None else NoDelayEndpointFactory(reactor, 5)
    return LeanAgent(reactor, factory, pool), pool


@inlineCallbacks
def until(condition: Callable[[], Any], limit: float = 10.0) -> Any:
    """Wait (on the real reactor) until ``condition()`` is true; fail after ``limit`` s."""
    waited = 0.0
    while not condition():
        if waited > limit:
            raise AssertionError("condition never became true")
        yield deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class ServerCase(TestCase):
    """Starts a RawServer per test; closes every connection at the end."""

    def listen(self, answers: Any, description: str = "tcp:0:interface=127.0.0.1") -> Any:
        self.server = RawServerFactory(answers)
        endpoint = serverFromString(reactor, description)
        return endpoint.listen(self.server).addCallback(self._listening)

    def _listening(self, port: Any) -> str:
        self.port = port
        self.addCleanup(self._close_all)
        return f"http://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def _close_all(self) -> Any:
        for pool in getattr(self, "pools", []):
            yield pool.closeCachedConnections()
        for connection in self.server.connections:
            if not connection.lost.called:
                connection.transport.abortConnection()
        yield gatherResults([c.lost for c in self.server.connections])
        yield self.port.stopListening()
        yield deferLater(reactor, 0.01, lambda: None)

    def agent(self, kind: str, **kwargs: Any) -> Any:
        agent, pool = twisted_agent() if kind == "twisted" else lean(**kwargs)
        self.pools = getattr(self, "pools", []) + [pool]
        return agent


OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi"


class BehaviourMixin:
    """Well-formed answers: both agents must give the same result."""

    kind = "lean"

    @inlineCallbacks
    def test_content_length(self) -> Any:
        base = yield self.listen([OK_2])
        got = yield collect(self.agent(self.kind), b"GET", base.encode() + b"/a?b=1#frag")
        self.assertEqual(got.describe(), "accepted 200 b'hi'")
        self.assertTrue(got.reason.check(ResponseDone))
        self.assertEqual(got.response.length, 2)
        self.assertEqual(got.response.phrase, b"OK")
        self.assertEqual(got.response.version, (b"HTTP", 1, 1))
        self.assertEqual(got.response.headers.getRawHeaders(b"x-a"), [b"1"])
        # Connection-control headers are kept out of the response's headers.
        self.assertFalse(got.response.headers.hasHeader(b"content-length"))
        head = self.server.requests[0][0]
        self.assertTrue(head.startswith(b"GET /a?b=1 HTTP/1.1\r\n"), head)
        self.assertIn(b"\r\nHost: 127.0.0.1:", head.replace(b"host:", b"Host:"))

    @inlineCallbacks
    def test_chunked(self) -> Any:
        base = yield self.listen([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"2;ext=1\r\nhi\r\n3\r\nyou\r\n0\r\nX-Trailer: t\r\n\r\n"])
        got = yield collect(self.agent(self.kind), b"GET", base.encode() + b"/")
        self.assertEqual(got.body, b"hiyou")
        self.assertTrue(got.reason.check(ResponseDone))
        self.assertIs(got.response.length, UNKNOWN_LENGTH)

    @inlineCallbacks
    def test_read_until_close(self) -> Any:
        base = yield self.listen([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"])
        self.server.close_after = True
        got = yield collect(self.agent(self.kind), b"GET", base.encode() + b"/")
        self.assertEqual(got.body, b"all of it")
        self.assertTrue(got.reason.check(PotentialDataLoss))

    @inlineCallbacks
    def test_head_keeps_content_length(self) -> Any:
        base = yield self.listen([b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", OK_2])
        agent = self.agent(self.kind)
        got = yield collect(agent, b"HEAD", base.encode() + b"/")
        self.assertEqual((got.response.length, got.body), (0, b""))
        self.assertEqual(got.response.headers.getRawHeaders(b"content-length"), [b"99"])
        again = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(again.body, b"hi")
        self.assertEqual(len(self.server.connections), 1)  # the HEAD's connection was reused

    @inlineCallbacks
    def test_no_body_codes(self) -> Any:
        base = yield self.listen([b"HTTP/1.1 204 No Content\r\n\r\n",
                                  b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                                  OK_2])
        agent = self.agent(self.kind)
        for code in (204, 304):
            got = yield collect(agent, b"GET", base.encode() + b"/")
            self.assertEqual((got.response.code, got.response.length, got.body), (code, 0, b""))
        got = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 1)

    @inlineCallbacks
    def test_informational_ignored(self) -> Any:
        base = yield self.listen([b"HTTP/1.1 100 Continue\r\n\r\n"
                                  b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_2])
        got = yield collect(self.agent(self.kind), b"GET", base.encode() + b"/")
        self.assertEqual((got.response.code, got.body), (200, b"hi"))
        self.assertFalse(got.response.headers.hasHeader(b"link"))

    @inlineCallbacks
    def test_keep_alive_reuses_one_connection(self) -> Any:
        base = yield self.listen([OK_2, OK_2, OK_2])
        agent = self.agent(self.kind)
        for _ in range(3):
            got = yield collect(agent, b"GET", base.encode() + b"/")
            self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 1)

    @inlineCallbacks
    def test_connection_close_is_not_reused(self) -> Any:
        closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        base = yield self.listen([closing, OK_2])
        agent = self.agent(self.kind)
        yield collect(agent, b"GET", base.encode() + b"/")
        got = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 2)

    @inlineCallbacks
    def test_known_length_body(self) -> Any:
        base = yield self.listen([OK_2])
        body = FileBodyProducer(__import__("io").BytesIO(b"x" * 5000))
        got = yield collect(self.agent(self.kind), b"POST", base.encode() + b"/", None, body)
        self.assertEqual(got.body, b"hi")
        head, sent, _ = self.server.requests[0]
        self.assertIn(b"content-length: 5000", head.lower())
        self.assertEqual(sent, b"x" * 5000)

    @inlineCallbacks
    def test_unknown_length_body_is_chunked(self) -> Any:
        base = yield self.listen([OK_2])
        body = ControlledBody()
        result = collect(self.agent(self.kind), b"PUT", base.encode() + b"/", None, body)
        consumer = yield body.started
        consumer.write(b"abc")
        consumer.write(b"de")
        body.finished.callback(None)
        got = yield result
        self.assertEqual(got.body, b"hi")
        head, sent, _ = self.server.requests[0]
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        self.assertEqual(sent, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

    @inlineCallbacks
    def test_body_failure_before_the_response(self) -> Any:
        base = yield self.listen([OK_2])
        body = ControlledBody(10)
        result = collect(self.agent(self.kind), b"POST", base.encode() + b"/", None, body)
        consumer = yield body.started
        consumer.write(b"12345")
        body.finished.errback(Failure(OSError("uploader went away")))
        got = yield result
        self.assertTrue(got.failure.check(RequestGenerationFailed), got.failure)
        yield self.server.connections[0].lost  # aborted: never a shorter complete request
        self.assertEqual(self.server.requests, [])

    @inlineCallbacks
    def test_body_longer_than_its_length_is_never_sent(self) -> Any:
        base = yield self.listen([OK_2])
        body = ControlledBody(3)
        result = collect(self.agent(self.kind), b"POST", base.encode() + b"/", None, body)
        consumer = yield body.started
        consumer.write(b"abcdef")
        self.assertTrue(body.stopped)
        got = yield result
        body.finished.callback(None)  # too late: ignored
        self.assertTrue(got.failure.check(RequestGenerationFailed), got.failure)
        yield until(lambda: self.server.connections)
        yield self.server.connections[0].lost
        self.assertEqual(self.server.requests, [])  # not one byte of the body went out

    @inlineCallbacks
    def test_never_answered(self) -> Any:
        base = yield self.listen([])
        self.server.answers = lambda connection, head, body: connection.transport.loseConnection()
        got = yield collect(self.agent(self.kind), b"GET", base.encode() + b"/")
        self.assertTrue(got.failure.check(ResponseNeverReceived), got.failure)

    @inlineCallbacks
    def test_truncated_body(self) -> Any:
        base = yield self.listen([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"])
        self.server.close_after = True
        got = yield collect(self.agent(self.kind), b"GET", base.encode() + b"/")
        self.assertEqual(got.body, b"half")
        self.assertTrue(got.reason.check(ResponseFailed), got.reason)

    @inlineCallbacks
    def test_truncated_chunked_body(self) -> Any:
        base = yield self.listen([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"4\r\nhalf\r\n"])
        self.server.close_after = True
        got = yield collect(self.agent(self.kind), b"GET", base.encode() + b"/")
        self.assertTrue(got.reason.check(ResponseFailed), got.reason)

    @inlineCallbacks
    def test_response_back_pressure(self) -> Any:
        size = 4 * 1024 * 1024
        base = yield self.listen([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
                                  + b"z" * size])
        response = yield self.agent(self.kind).request(b"GET", base.encode() + b"/")
        seen = []
        finished: Deferred[Failure] = Deferred()

        class Pausing(Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                if not seen:
                    self.transport.pauseProducing()
                seen.append(len(data))

            def connectionLost(self, reason: Failure) -> None:  # noqa: N802
                finished.callback([reason])

        protocol = Pausing()
        response.deliverBody(protocol)
        yield deferLater(reactor, 0.3, lambda: None)
        # Paused: the rest waits in the kernel's buffers, far short of 4 MiB read.
        self.assertLess(sum(seen), size // 2)
        protocol.transport.resumeProducing()
        (reason,) = yield finished
        self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(sum(seen), size)

    @inlineCallbacks
    def test_stopping_the_body_closes_the_connection(self) -> Any:
        size = 1024 * 1024
        base = yield self.listen([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
                                  + b"z" * size, OK_2])
        agent = self.agent(self.kind)
        response = yield agent.request(b"GET", base.encode() + b"/")
        finished: Deferred[Failure] = Deferred()

        class Stopping(Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                self.transport.stopProducing()

            def connectionLost(self, reason: Failure) -> None:  # noqa: N802
                if not finished.called:
                    finished.callback([reason])

        response.deliverBody(Stopping())
        (reason,) = yield finished
        self.assertFalse(reason.check(ResponseDone))
        got = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 2)

    @inlineCallbacks
    def test_extra_bytes_in_a_later_segment(self) -> Any:
        base = yield self.listen([OK_2, OK_2])
        agent = self.agent(self.kind)
        yield collect(agent, b"GET", base.encode() + b"/")
        self.server.connections[0].transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nX")
        yield self.server.connections[0].lost  # an idle connection that talks is closed
        got = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(got.body, b"hi")

    @inlineCallbacks
    def test_cancel_while_waiting_for_the_response(self) -> Any:
        base = yield self.listen([])  # never answers
        agent = self.agent(self.kind)
        pending = agent.request(b"GET", base.encode() + b"/")
        yield until(lambda: self.server.requests)
        pending.cancel()
        (failure,) = yield pending.addCallbacks(lambda r: [r], lambda f: [f])
        self.assertTrue(failure.check(ResponseNeverReceived), failure)
        self.assertTrue(failure.value.reasons[0].check(CancelledError), failure.value.reasons)
        yield self.server.connections[0].lost  # the connection is dropped, never reused

    @inlineCallbacks
    def test_cancel_while_sending_the_body(self) -> Any:
        base = yield self.listen([])
        agent = self.agent(self.kind)
        body = ControlledBody(10)
        pending = agent.request(b"POST", base.encode() + b"/", None, body)
        consumer = yield body.started
        consumer.write(b"12345")
        yield until(lambda: self.server.connections and self.server.connections[0].buffer)
        pending.cancel()
        (failure,) = yield pending.addCallbacks(lambda r: [r], lambda f: [f])
        self.assertTrue(failure.check(RequestGenerationFailed), failure)
        self.assertTrue(failure.value.reasons[0].check(CancelledError), failure.value.reasons)
        self.assertTrue(body.finished.called)  # its Deferred cancelled, as Twisted does
        yield until(lambda: self.server.connections)
        yield self.server.connections[0].lost
        self.assertEqual(self.server.requests, [])

    @inlineCallbacks
    def test_read_body(self) -> Any:
        base = yield self.listen([OK_2])
        response = yield self.agent(self.kind).request(b"GET", base.encode() + b"/")
        body = yield readBody(response)
        self.assertEqual(body, b"hi")


class TwistedBehaviourTests(BehaviourMixin, ServerCase):
    """The reference: twisted.web.client.Agent on a persistent HTTPConnectionPool."""

    kind = "twisted"


class LeanBehaviourTests(BehaviourMixin, ServerCase):
    kind = "lean"


class LeanPoolTests(ServerCase):
    """The pool rules of mterelay.http.connections, on LeanPool."""

    kind = "lean"

    @inlineCallbacks
    def test_http10_without_keep_alive_is_not_reused(self) -> Any:
        base = yield self.listen([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", OK_2])
        agent = self.agent(self.kind)
        got = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(got.response.version, (b"HTTP", 1, 0))
        yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(len(self.server.connections), 2)

    @inlineCallbacks
    def test_extra_bytes_after_a_response_are_not_the_next_response(self) -> Any:
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
        base = yield self.listen([OK_2 + smuggled, OK_2])
        agent = self.agent(self.kind)
        first = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(first.body, b"hi")
        second = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(second.body, b"hi")
        self.assertEqual(len(self.server.connections), 2)

    @inlineCallbacks
    def test_idle_timeout_closes_pooled_connections(self) -> Any:
        clock = Clock()
        base = yield self.listen([OK_2])
        agent = self.agent("lean", clock=clock, idle=30)
        yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(agent.pool.idle_count((b"http", b"127.0.0.1", self.port.getHost().port)),
                         1)
        clock.advance(29)
        self.assertEqual(self.server.connections[0].lost.called, False)
        clock.advance(1)
        yield self.server.connections[0].lost
        self.assertEqual(clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_one_idle_timer_kept_across_requests(self) -> Any:
        """No timer per request: the first one fires early and waits out the rest of the spell."""
        clock = Clock()
        base = yield self.listen([OK_2, OK_2])
        agent = self.agent("lean", clock=clock, idle=30)
        yield collect(agent, b"GET", base.encode() + b"/")
        [timer] = clock.getDelayedCalls()
        clock.advance(10)
        yield collect(agent, b"GET", base.encode() + b"/")
        self.assertEqual(clock.getDelayedCalls(), [timer])  # the same timer, not moved
        self.assertEqual(len(self.server.connections), 1)
        clock.advance(20)  # 30 s after the first answer, 20 s after the second
        self.assertFalse(self.server.connections[0].lost.called)
        clock.advance(9.5)
        self.assertFalse(self.server.connections[0].lost.called)
        clock.advance(0.5)
        yield self.server.connections[0].lost
        self.assertEqual(clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_shorter_keep_alive_hint_moves_the_idle_timer(self) -> Any:
        clock = Clock()
        hinted = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nhi"
        base = yield self.listen([OK_2, hinted])
        agent = self.agent("lean", clock=clock, idle=30)
        yield collect(agent, b"GET", base.encode() + b"/")
        clock.advance(10)
        yield collect(agent, b"GET", base.encode() + b"/")
        clock.advance(3.9)  # the hint: 5 s, closed 1 s before the server would
        self.assertFalse(self.server.connections[0].lost.called)
        clock.advance(0.1)
        yield self.server.connections[0].lost
        self.assertEqual(clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_busy_connection_is_not_expired_by_its_old_timer(self) -> Any:
        clock = Clock()
        base = yield self.listen([OK_2])
        agent = self.agent("lean", clock=clock, idle=30)
        yield collect(agent, b"GET", base.encode() + b"/")
        held: Deferred[None] = Deferred()

        def answer_later(connection: Any, head: bytes, body: bytes) -> None:
            held.addCallback(lambda _: connection.transport.write(OK_2))

        self.server.answers = answer_later
        result = collect(agent, b"GET", base.encode() + b"/")
        clock.advance(31)  # the old timer fires while the request is in flight
        self.assertFalse(self.server.connections[0].lost.called)
        held.callback(None)
        got = yield result
        self.assertEqual(got.body, b"hi")
        clock.advance(29.9)  # a full idle spell from the answer
        self.assertFalse(self.server.connections[0].lost.called)
        clock.advance(0.1)
        yield self.server.connections[0].lost

    @inlineCallbacks
    def test_max_idle_per_origin(self) -> Any:
        base = yield self.listen([OK_2, OK_2, OK_2])
        agent = self.agent("lean", size=1)
        results = yield gatherResults([collect(agent, b"GET", base.encode() + b"/")
                                       for _ in range(3)])
        self.assertEqual([r.body for r in results], [b"hi"] * 3)
        self.assertEqual(len(self.server.connections), 3)  # busy ones are not limited
        key = (b"http", b"127.0.0.1", self.port.getHost().port)
        self.assertEqual(agent.pool.idle_count(key), 1)
        yield gatherResults([c.lost for c in self.server.connections[1:]])

    @inlineCallbacks
    def test_forget_origin_closes_idle(self) -> Any:
        base = yield self.listen([OK_2])
        agent = self.agent("lean")
        yield collect(agent, b"GET", base.encode() + b"/x")
        agent.forget_origin(base.encode())
        yield self.server.connections[0].lost
        self.assertEqual(agent.pool.idle_count((b"http", b"127.0.0.1",
                                                self.port.getHost().port)), 0)

    @inlineCallbacks
    def test_resends_only_what_was_not_sent(self) -> Any:
        """A connection gone before the write: RequestNotSent, resent once on a new one."""
        base = yield self.listen([OK_2, OK_2])
        agent = self.agent("lean")
        yield collect(agent, b"GET", base.encode() + b"/")
        key = (b"http", b"127.0.0.1", self.port.getHost().port)
        (stale,) = agent.pool._idle[key]
        stale._closed = True  # lost, as if its connectionLost had run
        got = yield collect(agent, b"POST", base.encode() + b"/")
        self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 2)
        self.assertEqual(len(self.server.requests), 2)

    @inlineCallbacks
    def test_warm_connection_is_used_without_the_pool_deferred(self) -> Any:
        """The fast path: an idle connection is taken synchronously, never via ``pool.get``."""
        base = yield self.listen([OK_2, OK_2])
        agent = self.agent("lean")
        yield collect(agent, b"GET", base.encode() + b"/")
        key = (b"http", b"127.0.0.1", self.port.getHost().port)
        (warm,) = agent.pool._idle[key]

        def no_get(*args: Any) -> Any:
            raise AssertionError("pool.get called for a warm connection")

        agent.pool.get = no_get
        result = collect(agent, b"GET", base.encode() + b"/")
        self.assertTrue(warm.busy)  # written before agent.request returned
        got = yield result
        self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 1)
        self.assertEqual(agent.pool.idle_connections(key), (warm,))

    @inlineCallbacks
    def test_fast_path_refusal_is_resent_on_a_new_connection(self) -> Any:
        """A warm connection refusing the request (RequestNotSent) still gets the one resend."""
        base = yield self.listen([OK_2, OK_2])
        agent = self.agent("lean")
        yield collect(agent, b"GET", base.encode() + b"/")
        key = (b"http", b"127.0.0.1", self.port.getHost().port)
        (refusing,) = agent.pool._idle[key]
        refusing._request = object()  # looks busy: request() fails with RequestNotSent
        got = yield collect(agent, b"POST", base.encode() + b"/")
        self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 2)
        self.assertEqual(len(self.server.requests), 2)
        refusing._request = None

    @inlineCallbacks
    def test_never_resends_a_written_request(self) -> Any:
        """Lost after the request was written (a relay killed): fails, runs once upstream."""
        base = yield self.listen([OK_2])
        agent = self.agent("lean")
        yield collect(agent, b"GET", base.encode() + b"/")
        self.server.answers = lambda connection, head, body: connection.transport.abortConnection()
        got = yield collect(agent, b"GET", base.encode() + b"/")
        self.assertTrue(got.failure.check(ResponseNeverReceived), got.failure)
        self.assertEqual(len(self.server.requests), 2)
        self.assertEqual(len(self.server.connections), 1)

    @inlineCallbacks
    def test_body_failing_after_the_response_aborts_quietly(self) -> Any:
        base = yield self.listen([])
        agent = self.agent("lean")
        body = ControlledBody(100)
        result = collect(agent, b"POST", base.encode() + b"/", None, body)
        consumer = yield body.started
        consumer.write(b"x" * 10)
        yield until(lambda: self.server.connections and self.server.connections[0].buffer)
        # The server answers early, before the body is complete.
        self.server.connections[0].transport.write(
            b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno")
        got = yield result
        self.assertEqual((got.response.code, got.body), (413, b"no"))
        body.finished.errback(Failure(OSError("uploader went away")))
        yield self.server.connections[0].lost
        self.assertEqual(self.server.requests, [])  # never a complete, shorter request
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_request_body_producer_is_registered(self) -> Any:
        base = yield self.listen([OK_2])
        agent = self.agent("lean")
        body = ControlledBody(3)
        result = collect(agent, b"POST", base.encode() + b"/", None, body)
        yield body.started
        (connection,) = agent.pool._all
        self.assertIs(connection.transport.producer, body)
        body.consumer.write(b"abc")
        body.finished.callback(None)
        got = yield result
        self.assertEqual(got.body, b"hi")
        self.assertIsNone(connection.transport.producer)

    @inlineCallbacks
    def test_wrong_body_length_is_not_sent_as_complete(self) -> Any:
        base = yield self.listen([OK_2])
        agent = self.agent("lean")
        body = ControlledBody(10)
        result = collect(agent, b"POST", base.encode() + b"/", None, body)
        yield body.started
        body.consumer.write(b"short")
        body.finished.callback(None)
        got = yield result
        self.assertTrue(got.failure.check(RequestGenerationFailed), got.failure)
        self.assertEqual(self.server.requests, [])

    @inlineCallbacks
    def test_bad_requests_fail_before_any_connection(self) -> Any:
        base = yield self.listen([])
        agent = self.agent("lean")
        for method, url in ((b"GET", b"ftp://127.0.0.1/"), (b"G T", base.encode() + b"/"),
                            (b"GET", base.encode() + b"/a b"), (b"GET", b"http:///x")):
            got = yield collect(agent, method, url)
            self.assertIsNotNone(got.failure, (method, url))
        self.assertEqual(self.server.connections, [])


class LeanTLSTests(ServerCase):
    """TLS to a remote relay, with the certificate checked (same endpoint factory as today)."""

    def setUp(self) -> None:
        from tests.helpers.h2support import write_self_signed
        self.key_path, self.cert_path = write_self_signed(tempfile.mkdtemp())

    def listen_tls(self) -> Any:
        return self.listen([OK_2, OK_2], f"ssl:0:interface=127.0.0.1:privateKey={self.key_path}"
                                         f":certKey={self.cert_path}")

    @inlineCallbacks
    def test_trusted_certificate(self) -> Any:
        base = yield self.listen_tls()
        with open(self.cert_path, "rb") as handle:
            trust = Certificate.loadPEM(handle.read())
        endpoints = NoDelayEndpointFactory(reactor, 5, BrowserLikePolicyForHTTPS(trust))
        agent = self.agent("lean", endpoints=endpoints)
        url = base.replace("http:", "https:").encode() + b"/"
        for _ in range(2):
            got = yield collect(agent, b"GET", url)
            self.assertEqual(got.body, b"hi")
        self.assertEqual(len(self.server.connections), 1)

    @inlineCallbacks
    def test_untrusted_certificate_is_refused(self) -> Any:
        base = yield self.listen_tls()
        agent = self.agent("lean", endpoints=NoDelayEndpointFactory(reactor, 5))
        got = yield collect(agent, b"GET", base.replace("http:", "https:").encode() + b"/")
        self.assertIsNotNone(got.failure)
        self.assertEqual(self.server.requests, [])
        self.flushLoggedErrors()


