"""Relay A's per-origin state is bounded: pairs, agent entries and idle connections.

Every distinct ``x-mte-upstream`` used to leave a RelayClient origin (client
id, pairs) behind for ever (+535 KiB per 1,000 origins in the campaign).
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from mterelay.client import RelayClient
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder, make_agent
from mterelay.web.outbound import MAX_REMEMBERED_ORIGINS
from mterelay.web.root import RelayRoot
from mterelay.web.site import RelaySite
from mterelay.service.metrics import RelayMetrics
from tests.helpers.support import NoRemoteRelay, RecordingUpstream, relay_config
from tests.unit.test_outbound import Outbound, RefusingAgent


class OutboundBoundTests(SynchronousTestCase):
    def test_distinct_upstreams_do_not_grow_the_client_for_ever(self) -> None:
        # Failed before: one RelayClient origin per distinct x-mte-upstream, kept.
        o = Outbound(agent=RefusingAgent(), OUTBOUND_UPSTREAMS="http://127.0.0.1:*")
        count = MAX_REMEMBERED_ORIGINS + 44
        for port in range(20000, 20000 + count):
            response, _ = o.call("GET", "/x", upstream=f"http://127.0.0.1:{port}")
            self.assertEqual(response.code, 502)
        origins = o.root.outbound.client._origins
        self.assertEqual(len(origins), MAX_REMEMBERED_ORIGINS)
        self.assertIn(f"http://127.0.0.1:{20000 + count - 1}", origins)
        self.assertNotIn("http://127.0.0.1:20000", origins)


class EvictionTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_evicted_origin_loses_pairs_and_idle_connections(self) -> Any:
        upstream = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(RecordingUpstream()))
        self.addCleanup(upstream.stopListening)
        config = relay_config(UPSTREAM=f"http://127.0.0.1:{upstream.getHost().port}")
        agent = make_agent(reactor)
        self.addCleanup(agent.pool.closeCachedConnections)
        root = RelayRoot(config, UpstreamForwarder(reactor, agent, config.upstream, 10.0),
                         reactor, MemoryPairStore(reactor, store_limits(config)),
                         NoRemoteRelay(), RelayMetrics())
        ports = []
        for _ in range(3):  # one relay, three origins (ports)
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                RelaySite(root, reactor, root.metrics))
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        client = RelayClient(reactor, pairs=1, max_origins=2)
        self.addCleanup(client.close)
        pool = client._pool
        key = (b"http", b"127.0.0.1", ports[0])
        response = yield client.get(f"http://127.0.0.1:{ports[0]}/one")
        yield treq.content(response)
        yield deferLater(reactor, 0, lambda: None)  # the connection goes back to the pool
        [idle] = pool.idle_connections(key)
        for port in ports[1:]:
            response = yield client.get(f"http://127.0.0.1:{port}/more")
            self.assertEqual(response.code, 200)
            yield treq.content(response)
        self.assertEqual(list(client._origins),
                         [f"http://127.0.0.1:{port}" for port in ports[1:]])
        self.assertNotIn(key, pool.origins())
        self.assertTrue(idle.is_closing(), "the evicted origin's idle connection is closed")
        # Coming back works: validated and paired again.
        response = yield client.get(f"http://127.0.0.1:{ports[0]}/again")
        self.assertEqual(response.code, 200)
        yield treq.content(response)
