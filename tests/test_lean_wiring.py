"""The lean HTTP/1.1 client wired into the relay's hops (issue 18): what the relay relies on.

Real sockets on 127.0.0.1 throughout; the relay is built by
``service.tap.build_service`` (the production wiring) or from its parts.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

import mterelay
from mterelay.client import RelayClient
from mterelay.http import connections
from mterelay.http.connections import agent_pool, peer_agent, upstream_agent
from mterelay.service.config import load_config
from mterelay.service.tap import build_service
from tests.leanupstream import RawUpstream
from tests.support import SECRET

TOKEN = "app-token-0123456789abcdef"


@defer.inlineCallbacks
def until(condition: Any, limit: float = 10.0, step: float = 0.01) -> Any:
    """Wait (without blocking the reactor) until ``condition()``; False when it never held."""
    waited = 0.0
    while not condition():
        if waited >= limit:
            return False
        yield task.deferLater(reactor, step, lambda: None)
        waited += step
    return True


class RelayCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def upstream(self, **options: Any) -> Any:
        factory = RawUpstream(**options)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)

        def close_open() -> None:
            for protocol in list(factory.open):
                protocol.transport.abortConnection()

        self.addCleanup(close_open)
        return factory, f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def relay(self, upstream_url: str, **extra: str) -> Any:
        """A relay built as twistd builds it, started in this process; fires with (service, url)."""
        environ = {"UPSTREAM": upstream_url, "CLIENT_ID_SECRET": SECRET,
                   "LISTEN": "tcp:0:interface=127.0.0.1", "PASS_THROUGH_ROUTES": "/open/*",
                   "OUTBOUND_TOKEN": TOKEN, "OUTBOUND_UPSTREAMS": "http://127.0.0.1:*"}
        environ.update(extra)
        service = build_service(load_config(environ), reactor, observer=lambda event: None,
                                environ={})
        service.privilegedStartService()
        service.startService()
        self.stopped = False

        def stop() -> Any:
            if not self.stopped:
                return service.stopService()
            return None

        self.addCleanup(stop)
        port = yield service.listener.when_listening()
        return service, f"http://127.0.0.1:{port.getHost().port}"

    def client(self) -> Any:
        """The test's own HTTP client: no persistent connections to clean up."""
        return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class StopClosesPoolsTests(RelayCase):
    @defer.inlineCallbacks
    def test_stop_service_closes_the_upstream_and_peer_pools(self) -> Any:
        # Failed before: RelayService.stopService left relay B's upstream pool
        # (and the outbound peer pool) open - idle connections and their timers.
        upstream, upstream_url = yield self.upstream()
        service, relay_url = yield self.relay(upstream_url)
        http = self.client()
        response = yield http.get(relay_url + "/open/plain")  # pass-through: upstream pool
        self.assertEqual((yield response.content()), b"ok")
        # Outbound to itself as relay B: the peer pool, then the upstream pool again.
        response = yield http.get(relay_url + "/sealed", headers={
            "x-mte-outbound-token": TOKEN, "x-mte-upstream": relay_url})
        self.assertEqual((response.code, (yield response.content())), (200, b"ok"))
        self.assertEqual(len(upstream.requests), 2)
        self.assertTrue((yield until(lambda: all(pool.origins() for pool in service.pools))))
        self.assertEqual(len(service.pools), 2)
        self.stopped = True
        yield service.stopService()
        closed = yield until(lambda: not upstream.open, limit=5)
        self.assertTrue(closed, f"{len(upstream.open)} upstream connection(s) left open")
        self.assertEqual([pool.origins() for pool in service.pools], [[], []])


class ProductionAgentTests(SynchronousTestCase):
    def test_every_hop_uses_the_lean_agent_with_its_idle_timeout(self) -> None:
        for agent, idle in ((upstream_agent(reactor), connections.UPSTREAM_IDLE_TIMEOUT),
                            (peer_agent(reactor), connections.PEER_IDLE_TIMEOUT),
                            (RelayClient(reactor).agent, 240)):
            pool = agent_pool(agent)
            self.assertIsInstance(agent, connections.LeanAgent)
            self.assertEqual(pool.idle_timeout, idle)


class PrivateNamesTests(SynchronousTestCase):
    def test_twisted_private_names_only_in_twistedinternals(self) -> None:
        """The issue's rule: Twisted internals in one place (http/twistedinternals.py)."""
        root = pathlib.Path(mterelay.__file__).parent
        found = []
        for path in root.rglob("*.py"):
            if path.name == "twistedinternals.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                    names = [alias.name for alias in node.names]
                    if any(part.startswith("_") for part in (node.module or "").split(".")) \
                            or any(name.startswith("_") for name in names):
                        found.append(f"{path.relative_to(root)}: from {node.module} import {names}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.startswith("twisted") and any(
                                part.startswith("_") for part in alias.name.split(".")):
                            found.append(f"{path.relative_to(root)}: import {alias.name}")
        self.assertEqual(found, [])
