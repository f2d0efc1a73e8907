"""RelayClient over real sockets, with its own persistent connection pool."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from mterelay.client import RelayClient
from tests.helpers.support import SECRET, RecordingUpstream, RelayProcess


class OwnAgentTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = RecordingUpstream()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(self.upstream))
        self.addCleanup(port.stopListening)
        self.environ = {"UPSTREAM": f"http://127.0.0.1:{port.getHost().port}",
                        "CLIENT_ID_SECRET": SECRET}
        self.relay = self.start_relay()

    def start_relay(self, port: int | None = None) -> RelayProcess:
        relay = RelayProcess.start(self.environ, self.mktemp() + ".log", port)
        self.addCleanup(relay.stop)
        relay.wait_listening()
        return relay

    @defer.inlineCallbacks
    def test_concurrent_requests_survive_a_relay_restart(self) -> Any:
        client = RelayClient(reactor, pairs=3)
        self.addCleanup(client.close)
        url = self.relay.url
        responses = yield defer.gatherResults(
            [client.get(f"{url}/before/{i}") for i in range(6)])
        self.assertEqual([r.code for r in responses], [200] * 6)
        yield defer.gatherResults([treq.content(r) for r in responses])
        pool = client.origin_pool(url)
        self.assertEqual(len(pool.pairs), 3)

        self.relay.stop()
        self.relay = self.start_relay(self.relay.port)  # same port, empty pair store
        yield deferLater(reactor, 0.2, lambda: None)  # let the pool see its connections close
        self.upstream.received.clear()
        responses = yield defer.gatherResults(
            [client.post(f"{url}/after/{i}", data=b"%d" % i) for i in range(6)])
        bodies = yield defer.gatherResults([treq.content(r) for r in responses])
        self.assertEqual([r.code for r in responses], [200] * 6)
        self.assertEqual(bodies, [b'{"ok":true}'] * 6)
        self.assertEqual(sorted((r.uri, r.body) for r in self.upstream.received),
                         sorted((b"/after/%d" % i, b"%d" % i) for i in range(6)),
                         "every request reached the upstream exactly once")
        self.assertTrue(all(pair.batch > 1 for pair in pool.pairs),
                        "the dead pairs were all replaced")
        access = [line for line in self.relay.output().splitlines() if "mterelay.access" in line]
        self.assertLessEqual(sum("POST /api/mte-pair 200" in line for line in access), 3)
        refused = [line for line in access if " 560 " in line]
        self.assertEqual(len(refused), 6, "each request refused once (its old pair), never twice")
