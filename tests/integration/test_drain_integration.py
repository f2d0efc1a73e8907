"""SIGTERM with requests in flight, counted at the clients: every answer arrives whole.

A real ``twistd mterelay`` process, a slow real upstream in this process and
real client connections on 127.0.0.1.  The relay's own log lines ("Drained:
N completed") are not the evidence; what each client received is.
"""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from tests.helpers.support import free_port
from tests.integration.test_operations_integration import OperationsCase

IN_FLIGHT = 100


class DrainCountedAtClientsTests(OperationsCase):
    timeout = 120

    @defer.inlineCallbacks
    def in_flight_then_sigterm(self, **environ: str) -> Any:
        """100 requests waiting on the upstream, SIGTERM; what did each client get?"""
        self.upstream.delay = 1.5
        relay = self.start_relay(PASS_THROUGH_ROUTES="/slow/*", SHUTDOWN_GRACE="20", **environ)
        # Half the clients keep their connection alive (the relay must close
        # it after the answer), half ask for Connection: close.
        keep_alive = HTTPConnectionPool(reactor, persistent=True)
        keep_alive.maxPersistentPerHost = IN_FLIGHT
        self.addCleanup(keep_alive.closeCachedConnections)
        agents = [Agent(reactor, pool=keep_alive),
                  Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))]

        outcomes: list[Any] = []

        def one(n: int) -> Any:
            d = agents[n % 2].request(b"GET", f"{relay.url}/slow/{n}".encode())

            def answered(response: Any) -> Any:
                return readBody(response).addCallback(lambda body: (response.code, body))

            d.addCallback(answered)
            d.addCallbacks(outcomes.append, lambda failure: outcomes.append(failure))
            return d

        pending = [one(n) for n in range(IN_FLIGHT)]
        deadline = time.monotonic() + 30
        while self.upstream.received < IN_FLIGHT and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.upstream.received, IN_FLIGHT)
        relay.process.send_signal(signal.SIGTERM)
        yield defer.gatherResults(pending)
        code = yield self.wait_exit(relay)
        complete = [o for o in outcomes
                    if isinstance(o, tuple) and o[0] == 200 and o[1].startswith(b'{"ok":true')]
        lost = [o for o in outcomes if o not in complete]
        return code, relay, complete, lost

    @defer.inlineCallbacks
    def test_every_client_gets_its_whole_answer(self) -> Any:
        code, relay, complete, lost = yield self.in_flight_then_sigterm()
        self.assertEqual(lost, [], f"{len(lost)} of {IN_FLIGHT} client(s) without a whole answer")
        self.assertEqual(len(complete), IN_FLIGHT)
        self.assertEqual(code, 0)
        self.assertIn(f"Drained: {IN_FLIGHT} in-flight request(s) completed", relay.output())

    @defer.inlineCallbacks
    def test_every_client_gets_its_whole_answer_with_metrics_listener(self) -> Any:
        code, relay, complete, lost = yield self.in_flight_then_sigterm(
            METRICS_PORT=str(free_port()))
        self.assertEqual(lost, [], f"{len(lost)} of {IN_FLIGHT} client(s) without a whole answer")
        self.assertEqual(code, 0)

    @defer.inlineCallbacks
    def test_idle_keep_alive_connection_closed_cleanly(self) -> Any:
        self.upstream.delay = 1.0
        relay = self.start_relay(PASS_THROUGH_ROUTES="/slow/*", SHUTDOWN_GRACE="20")
        # One keep-alive connection that answered a request and now sits idle.
        idle = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        self.addCleanup(idle.close)
        idle.sendall(b"GET /api/mte-echo/x HTTP/1.1\r\nHost: relay\r\n\r\n")
        first = b""
        while b'"echo"' not in first or not first.rstrip().endswith(b"}"):
            chunk = idle.recv(65536)
            self.assertNotEqual(chunk, b"", "closed before the first answer")
            first += chunk
        self.assertNotIn(b"connection: close", first.lower())
        # A busy one keeps the drain going while the idle one is closed.
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        busy = http.get(relay.url + "/slow/1")
        deadline = time.monotonic() + 10
        while self.upstream.received < 1 and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.02, lambda: None)
        relay.process.send_signal(signal.SIGTERM)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertIsNone(relay.process.poll())  # still draining the busy one
        idle.settimeout(5)
        self.assertEqual(idle.recv(65536), b"")  # an orderly close (FIN), no reset
        response = yield busy
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual((yield self.wait_exit(relay)), 0)
