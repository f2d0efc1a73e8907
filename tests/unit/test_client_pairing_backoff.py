"""The relay client honours a pairing 429's Retry-After (spec section 2).

Without it, every application request needing a pair would ask the busy
relay again at once: the client would amplify the very flood the relay is
refusing.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mterelay.client import PairingFailed
from mterelay.client.errors import retry_after_seconds
from mterelay.client.pool import PairPool
from tests.helpers.clientsupport import ClientHarness
from tests.unit.test_client_pool import FakeRelay


class PoolHoldTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.relay = FakeRelay()
        self.pool = PairPool(3, self.relay.validate, self.relay.make_pairs, clock=self.clock)

    def refuse(self, retry_after: float | None) -> None:
        _, _, d = self.relay.pairings[-1]
        d.errback(Failure(PairingFailed(429, "busy", retry_after)))

    def test_no_pairing_before_retry_after(self) -> None:
        first = self.pool.acquire()
        self.relay.answer_validation()
        self.refuse(3)
        self.failureResultOf(first, PairingFailed)
        self.clock.advance(2.9)
        again = self.pool.acquire()
        self.assertEqual(self.failureResultOf(again, PairingFailed).value.status, 429)
        self.assertEqual(len(self.relay.pairings), 1, "asked the busy relay again")
        self.clock.advance(0.1)
        later = self.pool.acquire()
        self.assertEqual(len(self.relay.pairings), 2)
        self.relay.answer_pairing()
        self.successResultOf(later)

    def test_waiters_queued_behind_the_refusal_fail_too(self) -> None:
        waiting = [self.pool.acquire() for _ in range(3)]
        self.relay.answer_validation()
        self.refuse(5)
        for d in waiting:
            self.failureResultOf(d, PairingFailed)
        self.assertEqual(len(self.relay.pairings), 1)

    def test_held_pairs_still_leased_no_top_up(self) -> None:
        first = self.pool.acquire()
        self.relay.answer_validation()
        self.relay.answer_pairing()
        self.successResultOf(first)
        pair = self.successResultOf(self.pool.acquire()).pair
        self.pool.drop(pair)  # the pool is no longer full: it would top up
        self.relay.pairings.clear()
        self.pool.acquire()  # starts the top-up batch...
        self.refuse(10)       # ...which is refused
        for _ in range(5):
            self.successResultOf(self.pool.acquire())  # the two pairs left still serve
        self.assertEqual(len(self.relay.pairings), 1, "topped up during the hold")

    def test_other_failures_do_not_hold(self) -> None:
        first = self.pool.acquire()
        self.relay.answer_validation()
        self.refuse(None)  # e.g. a 400: nothing to wait for
        self.failureResultOf(first, PairingFailed)
        self.pool.acquire()
        self.assertEqual(len(self.relay.pairings), 2)


class RetryAfterParsingTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(retry_after_seconds([b"7"]), 7.0)
        self.assertEqual(retry_after_seconds([b" 2 "]), 2.0)
        self.assertEqual(retry_after_seconds(None), 1.0)
        self.assertEqual(retry_after_seconds([b"0"]), 1.0)
        self.assertEqual(retry_after_seconds([b"-3"]), 1.0)
        self.assertEqual(retry_after_seconds([b"Wed, 21 Oct 2015 07:28:00 GMT"]), 1.0)
        self.assertEqual(retry_after_seconds([b"99999999"]), 3600.0)


class ClientAgainstRelayTests(SynchronousTestCase):
    """A RelayClient and a real RelayRoot: the whole 429 path."""

    def test_client_waits_out_the_relays_retry_after(self) -> None:
        harness = ClientHarness.build(PAIRING_ADDRESS_RATE="1")  # burst 64 (a full batch)
        pairs = harness.switch.root.pairing
        greedy = harness.client(pairs=64)
        self.assertEqual(harness.call(greedy, "GET", "/api/a")[0].code, 200)
        late = harness.client(pairs=5)  # same source address: no budget left
        with self.assertRaises(PairingFailed) as caught:
            harness.call(late, "GET", "/api/b")
        # 5 pairs (~18 KB) declare at least 4 before the body is read: 4 s at 1/s.
        self.assertEqual((caught.exception.status, caught.exception.retry_after), (429, 4.0))
        posts = harness.switch.count(b"POST", b"/api/mte-pair")
        for _ in range(3):
            with self.assertRaises(PairingFailed):
                harness.call(late, "GET", "/api/b")
        self.assertEqual(harness.switch.count(b"POST", b"/api/mte-pair"), posts,
                         "the client asked again before Retry-After")
        harness.clock.advance(4)  # 4 tokens: past the check on the length, not enough for 5
        with self.assertRaises(PairingFailed) as caught:
            harness.call(late, "GET", "/api/b")
        self.assertEqual(caught.exception.retry_after, 1.0)
        harness.clock.advance(1)
        self.assertEqual(harness.call(late, "GET", "/api/b")[0].code, 200)
        self.assertEqual(harness.switch.count(b"POST", b"/api/mte-pair"), posts + 2)
        self.assertIs(harness.switch.root.pairing, pairs)


class OutboundBusyTests(SynchronousTestCase):
    """Relay A tells its application 503 + Retry-After while B refuses pairing."""

    def test_remote_429_is_503_with_retry_after(self) -> None:
        from tests.unit.test_outbound import Outbound, payload

        outbound = Outbound()
        outbound.b.restart(PAIRING_ADDRESS_RATE="1")  # burst 64: one full batch
        greedy = outbound.b.client(pairs=64)  # same loopback source as relay A
        self.assertEqual(outbound.b.call(greedy, "GET", "/api/a")[0].code, 200)
        response, body = outbound.call("GET", "/api/b")
        self.assertEqual(response.code, 503)
        # A's 25-pair body (~90 KB) declares at least 21: 21 s at 1/s.
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"21"])
        self.assertEqual(payload(body)["error"], "Remote relay busy")
        self.assertIn("429", payload(body)["reason"])
        self.assertEqual(outbound.local_upstream.received, [])
