"""An application aborting a streamed upload after the answer came: quiet, and cancelled.

application (raw socket) → relay A → relay B → upstream, all in-process on
127.0.0.1.  The upstream answers as soon as it has the request head, so both
relays get their answer while the upload is still being sent (Twisted's
``TRANSMITTING_AFTER_RECEIVING_RESPONSE``); then the application aborts.
Before the fix the aborted body failed the request's producer in that state
and Twisted logged "Error writing request, but not in valid state to
finalize request" at critical level (162 times in 6,666 aborts in the
campaign; here in every round, on relay B's upstream request once relay A
closed its connection), and the upstream connection waited for a body that
would never end.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from mterelay.http.connections import persistent_agent
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder
from mterelay.web.root import RelayRoot
from mterelay.web.site import RelaySite
from mterelay.service.metrics import RelayMetrics
from tests.helpers.support import NoRemoteRelay, relay_config
from tests.helpers.transports import RawClient

TOKEN = "upload-abort-token-0123456789"


class EarlyAnswer(protocol.Protocol):
    """Answers at once on the request head; keeps reading (and counting) the body."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not getattr(self, "answered", False):
            self.answered = True
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            self.transport.write(answer)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class UploadAbortTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.critical: list[Any] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") in (LogLevel.critical, LogLevel.error):
                self.critical.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @defer.inlineCallbacks
    def listen(self, factory: Any) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def relay(self, config: Any, outbound: bool = False) -> RelaySite:
        agent, pool = persistent_agent(reactor, 8, 30, 5)
        self.addCleanup(pool.closeCachedConnections)
        remote: Any = NoRemoteRelay()
        if outbound:
            remote, remote_pool = persistent_agent(reactor, 8, 30, 5)
            self.addCleanup(remote_pool.closeCachedConnections)
        forwarder = UpstreamForwarder(reactor, agent, config.upstream, 10.0)
        store = MemoryPairStore(reactor, store_limits(config))
        metrics = RelayMetrics()
        return RelaySite(RelayRoot(config, forwarder, reactor, store, outbound_agent=remote,
                                   metrics=metrics), reactor, metrics)

    @defer.inlineCallbacks
    def wait_for(self, condition: Any, what: str) -> Any:
        for _ in range(500):
            if condition():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @defer.inlineCallbacks
    def test_abort_after_the_answer_is_quiet(self) -> Any:
        up = protocol.Factory.forProtocol(EarlyAnswer)
        up.connections = []
        up_port = yield self.listen(up)
        b = yield self.listen(self.relay(relay_config(UPSTREAM=f"http://127.0.0.1:{up_port}")))
        a = yield self.listen(self.relay(relay_config(
            OUTBOUND_TOKEN=TOKEN, OUTBOUND_UPSTREAMS="http://127.0.0.1:*"), outbound=True))
        for round_ in range(6):
            app = yield TCP4ClientEndpoint(reactor, "127.0.0.1", a).connect(
                protocol.Factory.forProtocol(RawClient))
            app.transport.write(
                b"POST /upload HTTP/1.1\r\nHost: a\r\n"
                b"x-mte-outbound-token: " + TOKEN.encode() + b"\r\n"
                b"x-mte-upstream: http://127.0.0.1:%d\r\n" % b +
                b"Transfer-Encoding: chunked\r\n\r\n"
                + (b"10000\r\n" + b"x" * 0x10000 + b"\r\n") * 64)
            yield self.wait_for(lambda: app.received.endswith(b"ok")
                                or app.received.endswith(b"0\r\n\r\n"), "the answer")
            self.assertTrue(app.received.startswith(b"HTTP/1.1 200"), app.received[:200])
            app.transport.write((b"10000\r\n" + b"y" * 0x10000 + b"\r\n") * 16)
            yield deferLater(reactor, 0.001 * round_, lambda: None)
            app.transport.abortConnection()
            yield deferLater(reactor, 0.2, lambda: None)
        messages = [event.get("log_format", "") for event in self.critical]
        self.assertEqual(messages, [], "no critical or error log for an aborted upload")
        self.flushLoggedErrors()
        # The upstream's request was not left open: its connection closed.
        yield self.wait_for(lambda: all(c.lost for c in up.connections), "upstream closes")
