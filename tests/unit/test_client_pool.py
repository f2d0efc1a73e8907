"""The pair pool's scheduling rules, with fake validation and pairing."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from mterelay.client.pool import PairPool
from mterelay.protocol.errors import InvalidClientId
from mterelay.protocol.keys import PairKeys

UUIDS = ["%08x-0000-4000-8000-000000000000" % i for i in range(1, 50)]


def client_id(n: int) -> str:
    return UUIDS[n] + "." + "0" * 64


class FakeRelay:
    """Validation and pairing whose answers the test releases by hand."""

    def __init__(self) -> None:
        self.validations: list[Deferred[str]] = []
        self.pairings: list[tuple[str, int, Deferred[list[PairKeys]]]] = []
        self.made = 0
        self.ids = 0

    def validate(self) -> "Deferred[str]":
        d: Deferred[str] = Deferred()
        self.validations.append(d)
        return d

    def make_pairs(self, cid: str, count: int) -> "Deferred[list[PairKeys]]":
        d: Deferred[list[PairKeys]] = Deferred()
        self.pairings.append((cid, count, d))
        return d

    def answer_validation(self) -> str:
        self.ids += 1
        cid = client_id(self.ids)
        self.validations[-1].callback(cid)
        return cid

    def answer_pairing(self, index: int = -1) -> list[PairKeys]:
        cid, count, d = self.pairings[index]
        keys = []
        for _ in range(count):
            self.made += 1
            keys.append(PairKeys(1, cid[:36], f"pair-{self.made:012d}", b"k" * 32, b"k" * 32))
        d.callback(keys)
        return keys


class PairPoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = FakeRelay()
        self.pool = PairPool(3, self.relay.validate, self.relay.make_pairs)

    def ready(self) -> None:
        """Validate and pair once, the pool full."""
        first = self.pool.acquire()
        self.relay.answer_validation()
        self.relay.answer_pairing()
        self.successResultOf(first)

    def test_lazy_single_flight(self) -> None:
        self.assertEqual(self.relay.validations, [])
        waiting = [self.pool.acquire() for _ in range(10)]
        self.assertEqual(len(self.relay.validations), 1, "one HEAD for everyone")
        self.assertNoResult(waiting[0])
        cid = self.relay.answer_validation()
        self.assertEqual([(c, n) for c, n, _ in self.relay.pairings], [(cid, 3)])
        self.relay.answer_pairing()
        leases = [self.successResultOf(d) for d in waiting]
        self.assertEqual(len(self.relay.pairings), 1, "one pairing POST for everyone")
        # Round-robin: every pair used, seqs per pair distinct and from 0.
        by_pair: dict[str, list[int]] = {}
        for lease in leases:
            by_pair.setdefault(lease.keys.pair_id, []).append(lease.seq)
        self.assertEqual(len(by_pair), 3)
        for seqs in by_pair.values():
            self.assertEqual(seqs, list(range(len(seqs))))
        self.assertTrue(all(lease.client_id == cid for lease in leases))

    def test_drop_waits_for_a_batch_started_after_the_failure(self) -> None:
        self.ready()
        dead = self.successResultOf(self.pool.acquire())
        mark = self.pool.drop(dead.pair)
        # The pool is missing one pair: the next ordinary acquire tops it up
        # in the background, and is served at once from the live pairs.
        self.successResultOf(self.pool.acquire())
        self.assertEqual(len(self.relay.pairings), 2)
        self.assertEqual(self.relay.pairings[1][1], 1, "batch size = pairs missing")
        # A second failure while that batch is in flight: its retry must not
        # take a pair from it (the batch started before this failure).
        other = self.successResultOf(self.pool.acquire())
        mark2 = self.pool.drop(other.pair)
        retry_early = self.pool.acquire(mark)
        retry_late = self.pool.acquire(mark2)
        self.assertNoResult(retry_early)
        self.assertNoResult(retry_late)
        self.relay.answer_pairing(1)
        early = self.successResultOf(retry_early)
        self.assertEqual(early.pair.batch, 2)
        self.assertNoResult(retry_late)
        self.assertEqual(len(self.relay.pairings), 3, "the next batch starts for the late one")
        self.assertEqual(self.relay.pairings[2][1], 1)
        self.relay.answer_pairing(2)
        self.assertEqual(self.successResultOf(retry_late).pair.batch, 3)

    def test_all_pairs_dead_after_restart(self) -> None:
        self.ready()
        leases = [self.successResultOf(self.pool.acquire()) for _ in range(6)]
        marks = [self.pool.drop(lease.pair) for lease in leases]
        retries = [self.pool.acquire(mark) for mark in marks]
        self.assertEqual(len(self.relay.pairings), 2, "one batch for all the retries")
        self.relay.answer_pairing()
        for retry in retries:
            self.assertEqual(self.successResultOf(retry).pair.batch, 2)
        self.assertTrue(all(pair.batch == 2 for pair in self.pool.pairs))

    def test_forget_client_revalidates_and_discards_old_batches(self) -> None:
        self.ready()
        old = self.successResultOf(self.pool.acquire())
        self.pool.drop(old.pair)
        self.pool.acquire()  # background top-up with the old id, in flight
        self.pool.forget_client(old.client_id)
        self.assertEqual(self.pool.pairs, [])
        retry = self.pool.acquire()
        self.relay.answer_pairing(1)  # the old id's batch: discarded
        self.assertNoResult(retry)
        self.assertEqual(len(self.relay.validations), 2, "validated again")
        new_id = self.relay.answer_validation()
        self.relay.answer_pairing()
        lease = self.successResultOf(retry)
        self.assertEqual(lease.client_id, new_id)
        self.assertNotEqual(new_id, old.client_id)
        self.pool.forget_client(old.client_id)  # stale: no effect
        self.assertEqual(self.pool.client_id, new_id)

    def test_pairing_failure_reaches_the_waiters(self) -> None:
        waiting = [self.pool.acquire(), self.pool.acquire()]
        self.relay.validations[0].errback(ConnectionRefusedError("refused"))
        for d in waiting:
            self.failureResultOf(d, ConnectionRefusedError)
        again = self.pool.acquire()
        self.assertEqual(len(self.relay.validations), 2, "a later acquire tries again")
        self.relay.answer_validation()
        self.relay.answer_pairing()
        self.successResultOf(again)

    def test_566_while_pairing_forgets_the_id(self) -> None:
        waiting = self.pool.acquire()
        self.relay.answer_validation()
        self.relay.pairings[0][2].errback(InvalidClientId("rotated"))
        self.failureResultOf(waiting, InvalidClientId)
        self.assertIsNone(self.pool.client_id)

    def test_cancel_withdraws_only_that_caller(self) -> None:
        first, second = self.pool.acquire(), self.pool.acquire()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.relay.answer_validation()
        self.relay.answer_pairing()
        self.successResultOf(second)

    def test_exhausted_sequence_space_replaces_the_pair(self) -> None:
        pool = PairPool(1, self.relay.validate, self.relay.make_pairs, max_seq=1)
        first = pool.acquire()
        self.relay.answer_validation()
        self.relay.answer_pairing()
        lease0 = self.successResultOf(first)
        lease1 = self.successResultOf(pool.acquire())
        self.assertEqual((lease0.seq, lease1.seq), (0, 1))
        self.assertEqual(pool.pairs, [], "seq 1 was the last one")
        nxt = pool.acquire()
        self.relay.answer_pairing()
        self.assertEqual(self.successResultOf(nxt).seq, 0)

    def test_size_is_checked(self) -> None:
        for size in (0, 65):
            with self.assertRaises(ValueError):
                PairPool(size, self.relay.validate, self.relay.make_pairs)
