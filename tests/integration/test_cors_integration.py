"""CORS over a real socket: what a browser client at an allowed origin gets (spec 14)."""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from mterelay.http.connections import persistent_agent
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder
from mterelay.web.root import RelayRoot
from mterelay.web.site import RelaySite
from mterelay.service.metrics import RelayMetrics
from tests.helpers.support import NoRemoteRelay, relay_config

ORIGIN = b"https://app.example.com"


class BrowserTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        config = relay_config(CORS_ORIGINS=ORIGIN.decode(), CORS_MAX_AGE="120")
        agent, pool = persistent_agent(reactor, 2, 30, 5)
        self.addCleanup(pool.closeCachedConnections)
        forwarder = UpstreamForwarder(reactor, agent, config.upstream, 5.0)
        metrics = RelayMetrics()
        site = RelaySite(RelayRoot(config, forwarder, reactor,
                                   MemoryPairStore(reactor, store_limits(config)),
                                   NoRemoteRelay(), metrics), reactor, metrics)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        http_pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=http_pool))

    @defer.inlineCallbacks
    def test_preflight_then_relay_answers_readable(self) -> Any:
        response = yield self.http.request("OPTIONS", self.url + "/api/mte-pair", headers={
            b"origin": [ORIGIN], b"access-control-request-method": [b"POST"],
            b"access-control-request-headers": [b"content-type,x-mte-relay"]})
        yield treq.content(response)
        h = response.headers
        self.assertEqual(response.code, 204)
        self.assertEqual(h.getRawHeaders(b"access-control-max-age"), [b"120"])
        self.assertIn(b"Origin", h.getRawHeaders(b"vary")[0])
        self.assertIn(b"x-mte-relay-eh", h.getRawHeaders(b"access-control-allow-headers")[0])

        response = yield self.http.head(self.url + "/api/mte-relay",
                                        headers={b"origin": [ORIGIN]})
        h = response.headers
        self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [ORIGIN])
        self.assertIn(b"x-mte-relay", h.getRawHeaders(b"access-control-expose-headers")[0])
        self.assertEqual(h.getRawHeaders(b"vary"), [b"Origin"])

        response = yield self.http.post(self.url + "/api/mte-pair", data=b"[]",
                                        headers={b"origin": [ORIGIN]})
        body = yield treq.json_content(response)
        self.assertEqual((response.code, body["code"], body["upstreamReached"]),
                         (569, 569, "no"))
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [ORIGIN])
        self.assertIn(b"x-mte-upstream-reached",
                      response.headers.getRawHeaders(b"access-control-expose-headers")[0])
