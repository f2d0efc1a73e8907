"""One conformance suite for every IPairStore: memory and Redis behave alike.

``PairStoreConformanceMixin`` holds the behaviour; each store gets a small
TestCase providing ``make_store`` and two notions of time:

* ``advance_clock(s)`` moves the store's clock (creation / max age) only;
* ``elapse_idle(s)`` lets idle time pass: the memory store's clock, real
  time for Redis (its idle expiry is Redis's own PEXPIRE).

Idle tests only assert "still alive" with a wide margin; "expired" checks
are safe against scheduling delays since more delay means more expired.
"""

from __future__ import annotations

import os
import random

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from mterelay.protocol.replay import ReplayWindow, Verdict
from mterelay.store.interface import (IPairStore, PairExists, StoreLimits, StoreUnavailable,
                                      pair_generation)
from mterelay.store.memory import MemoryPairStore

from tests.helpers.redisserver import started_redis

A, R, T = Verdict.ACCEPTED, Verdict.REPLAYED, Verdict.TOO_OLD
U, X, S = Verdict.UNKNOWN, Verdict.EXHAUSTED, Verdict.STALE


def mismatches(actual, expected, limit=5):
    """First differing positions, as a short list.

    Used instead of assertEqual on long verdict lists: unittest's diff of two
    long, similar lists can take minutes when they differ.
    """
    bad = [(i, a, e) for i, (a, e) in enumerate(zip(actual, expected)) if a is not e]
    if len(actual) != len(expected):
        bad.append(("length", len(actual), len(expected)))
    return bad[:limit]
SECRET = b"state-secret-for-tests-0123456789abcdef"
CID = "2f1c6f3e-4d0a-4b7e-9a51-3f5d2c1b0a99.ab12"
PID = "pair_AAAAAAAAAAAAAAAAAAAAAA"
#: generation of the b"k" secrets most tests store
K = pair_generation(b"k")


class PairStoreConformanceMixin:
    """Behaviour every IPairStore must have; mixed into a trial TestCase."""

    def make_store(self, limits: StoreLimits = StoreLimits()) -> defer.Deferred:
        """Fire a started store with ``limits``; stopped on cleanup."""
        raise NotImplementedError

    def advance_clock(self, seconds: float) -> defer.Deferred:
        raise NotImplementedError

    def elapse_idle(self, seconds: float) -> defer.Deferred:
        raise NotImplementedError

    @defer.inlineCallbacks
    def accept_all(self, store, seqs, client_id=CID, pair_id=PID, generation=K):
        verdicts = []
        for seq in seqs:
            verdicts.append((yield store.accept(client_id, pair_id, seq, generation)))
        return verdicts

    @defer.inlineCallbacks
    def test_provides_interface(self):
        store = yield self.make_store()
        self.assertTrue(verifyObject(IPairStore, store))
        self.assertEqual((yield store.ping()), True)

    @defer.inlineCallbacks
    def test_create_get_round_trip(self):
        store = yield self.make_store()
        secrets = bytes(range(256)) + os.urandom(64)
        self.assertIsNone((yield store.create(CID, PID, secrets)))
        self.assertEqual((yield store.get(CID, PID)), secrets)
        self.assertEqual((yield store.get(CID, PID)), secrets)

    @defer.inlineCallbacks
    def test_unknown_pair(self):
        store = yield self.make_store()
        self.assertIsNone((yield store.get(CID, PID)))
        self.assertEqual((yield store.accept(CID, PID, 0, K)), U)
        self.assertIsNone((yield store.delete(CID, PID)))
        # accepting on an unknown pair must not create it
        self.assertIsNone((yield store.get(CID, PID)))

    @defer.inlineCallbacks
    def test_delete(self):
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        yield store.accept(CID, PID, 1, K)
        yield store.delete(CID, PID)
        self.assertIsNone((yield store.get(CID, PID)))
        self.assertEqual((yield store.accept(CID, PID, 2, K)), U)

    @defer.inlineCallbacks
    def test_verdicts(self):
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        verdicts = yield self.accept_all(
            store, [5, 5, 3, 0, 2000, 976, 977, 977, 1999, 2**53 - 1,
                    2**53 - 1, 2**53 - 1025, 2**53 - 1024])
        self.assertEqual(verdicts, [A, R, A, A, A, T, A, R, A, A, R, T, A])

    @defer.inlineCallbacks
    def test_window_width_from_limits(self):
        store = yield self.make_store(StoreLimits(window=2048))
        yield store.create(CID, PID, b"k")
        verdicts = yield self.accept_all(store, [5000, 5000 - 2047, 5000 - 2048])
        self.assertEqual(verdicts, [A, A, T])

    @defer.inlineCallbacks
    def test_matches_replay_window(self):
        """The store's window is ReplayWindow's, verdict for verdict."""
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        rng = random.Random(6479)
        model = ReplayWindow(1024)
        base = rng.randrange(2**53 - 10**6)
        # a client's traffic: mostly increasing with reordering, some replays
        # and stragglers, now and then a jump
        counter = 0
        for _ in range(800):
            counter += rng.choice([0, 1, 1, 2, 5, 30, 300, 2000])
            seq = base + max(0, counter + rng.randrange(-1100, 20))
            verdict = yield store.accept(CID, PID, seq, K)
            self.assertEqual(verdict, model.accept(seq), seq)
        self.model_window = model

    @defer.inlineCallbacks
    def test_slide_reopens_stale_positions(self):
        """Positions of numbers that slid out of the window are reusable."""
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        first = yield defer.gatherResults(
            [store.accept(CID, PID, seq, K) for seq in range(1024)])
        self.assertEqual(mismatches(first, [A] * 1024), [])
        self.assertEqual((yield store.accept(CID, PID, 1500, K)), A)
        second = yield defer.gatherResults(
            [store.accept(CID, PID, seq, K) for seq in range(1024, 1500)])
        self.assertEqual(mismatches(second, [A] * 476), [])
        third = yield defer.gatherResults(
            [store.accept(CID, PID, seq, K) for seq in range(476, 1501)])
        self.assertEqual(mismatches(third, [T] + [R] * 1024), [])

    @defer.inlineCallbacks
    def test_create_never_replaces(self):
        """An existing pair id is refused; the pair, window and count stay as they were."""
        store = yield self.make_store(StoreLimits(max_messages=3))
        old, new = pair_generation(b"old"), pair_generation(b"new")
        yield store.create(CID, PID, b"old")
        self.assertEqual((yield self.accept_all(store, [10, 11], generation=old)), [A, A])
        failure = yield self.assertFailure(store.create(CID, PID, b"new"), PairExists)
        self.assertNotIn("old", str(failure))  # never names the secrets
        yield self.assertFailure(store.create(CID, PID, b"old"), PairExists)
        self.assertEqual((yield store.get(CID, PID)), b"old")
        self.assertEqual((yield self.accept_all(store, [11, 10], generation=old)), [R, R])
        self.assertEqual((yield self.accept_all(store, [10], generation=new)), [S])
        # the message count went on: 2 accepted before, 1 more, then exhausted
        self.assertEqual((yield self.accept_all(store, [12, 13], generation=old)), [A, X])

    @defer.inlineCallbacks
    def test_concurrent_creates_one_wins(self):
        store = yield self.make_store()
        results = yield defer.DeferredList(
            [store.create(CID, PID, b"k%d" % i) for i in range(20)], consumeErrors=True)
        won = [i for i, (ok, _) in enumerate(results) if ok]
        self.assertEqual(len(won), 1)
        for ok, result in results:
            if not ok:
                result.trap(PairExists)
        self.assertEqual((yield store.get(CID, PID)), b"k%d" % won[0])

    @defer.inlineCallbacks
    def test_stale_generation_changes_nothing(self):
        """Another generation's message neither records, refreshes, exhausts nor deletes."""
        store = yield self.make_store(StoreLimits(max_messages=2, idle_ttl=100, max_age=10))
        current, before = pair_generation(b"current"), pair_generation(b"before")
        yield store.create(CID, PID, b"current")
        self.assertEqual((yield self.accept_all(store, [5, 6, 7], generation=before)),
                         [S, S, S])
        self.assertEqual((yield self.accept_all(store, [5], generation=current)), [A])
        yield self.advance_clock(11)  # past max age: a current message would exhaust it
        self.assertEqual((yield self.accept_all(store, [6, 7], generation=before)), [S, S])
        self.assertEqual((yield self.accept_all(store, [6], generation=current)), [X])
        self.assertEqual((yield self.accept_all(store, [7], generation=before)), [U])

    @defer.inlineCallbacks
    def test_same_id_paired_again_after_loss_has_a_new_generation(self):
        """Deleted (or expired, or flushed): the id is free, old keys' messages are STALE."""
        store = yield self.make_store()
        old, new = pair_generation(b"old keys"), pair_generation(b"new keys")
        yield store.create(CID, PID, b"old keys")
        self.assertEqual((yield self.accept_all(store, [1, 2], generation=old)), [A, A])
        yield store.delete(CID, PID)
        yield store.create(CID, PID, b"new keys")
        # the window is fresh, but not for messages opened under the old keys
        self.assertEqual((yield self.accept_all(store, [1, 2, 3], generation=old)), [S, S, S])
        self.assertEqual((yield self.accept_all(store, [1, 2], generation=new)), [A, A])

    @defer.inlineCallbacks
    def test_idle_expired_id_can_be_paired_again(self):
        store = yield self.make_store(StoreLimits(idle_ttl=0.3))
        yield store.create(CID, PID, b"old keys")
        yield self.assertFailure(store.create(CID, PID, b"new keys"), PairExists)
        yield self.elapse_idle(0.5)
        yield store.create(CID, PID, b"new keys")
        self.assertEqual((yield store.get(CID, PID)), b"new keys")
        self.assertEqual(
            (yield self.accept_all(store, [0], generation=pair_generation(b"old keys"))), [S])

    @defer.inlineCallbacks
    def test_delete_with_generation_removes_only_that_generation(self):
        store = yield self.make_store()
        yield store.create(CID, PID, b"mine")
        yield store.delete(CID, PID, pair_generation(b"theirs"))
        self.assertEqual((yield store.get(CID, PID)), b"mine")
        yield store.delete(CID, PID, pair_generation(b"mine"))
        self.assertIsNone((yield store.get(CID, PID)))
        yield store.delete(CID, PID, pair_generation(b"mine"))  # unknown: no error

    @defer.inlineCallbacks
    def test_generation_is_the_secrets_fingerprint(self):
        self.assertEqual(pair_generation(b"k"), pair_generation(bytearray(b"k")))
        self.assertNotEqual(pair_generation(b"k"), pair_generation(b"k2"))
        self.assertRegex(pair_generation(os.urandom(64)), "^[0-9a-f]{32}$")
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        for bad in ("", "k", K.upper(), K[:-1], K + "0", None, b"0" * 32):
            yield self.assertFailure(store.accept(CID, PID, 1, bad), ValueError)
            if bad is not None:
                yield self.assertFailure(store.delete(CID, PID, bad), ValueError)
        self.assertEqual((yield store.get(CID, PID)), b"k")

    @defer.inlineCallbacks
    def test_pairs_are_independent(self):
        store = yield self.make_store()
        other_client = "0" * 36 + ".ff"
        yield store.create(CID, PID, b"one")
        yield store.create(other_client, PID, b"two")
        yield store.create(CID, PID + "x", b"three")
        self.assertEqual((yield store.accept(CID, PID, 7, pair_generation(b"one"))), A)
        self.assertEqual((yield store.accept(other_client, PID, 7, pair_generation(b"two"))), A)
        self.assertEqual((yield store.accept(CID, PID + "x", 7, pair_generation(b"three"))), A)
        # one client's pair id says nothing about another's
        self.assertEqual((yield store.accept(other_client, PID, 8, pair_generation(b"one"))), S)
        yield store.delete(CID, PID)
        self.assertEqual((yield store.get(other_client, PID)), b"two")
        self.assertEqual((yield store.get(CID, PID + "x")), b"three")

    @defer.inlineCallbacks
    def test_max_messages(self):
        store = yield self.make_store(StoreLimits(max_messages=5))
        yield store.create(CID, PID, b"k")
        # refusals do not count
        verdicts = yield self.accept_all(store, [0, 0, 1, 2, 2, 3, 4, 5])
        self.assertEqual(verdicts, [A, R, A, A, R, A, A, X])
        self.assertIsNone((yield store.get(CID, PID)))
        self.assertEqual((yield store.accept(CID, PID, 6, K)), U)

    @defer.inlineCallbacks
    def test_max_age(self):
        store = yield self.make_store(StoreLimits(idle_ttl=100, max_age=10))
        yield store.create(CID, PID, b"k")
        yield self.advance_clock(5)
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        yield self.advance_clock(4.9)
        self.assertEqual((yield store.accept(CID, PID, 2, K)), A)
        self.assertEqual((yield store.get(CID, PID)), b"k")
        yield self.advance_clock(0.2)
        self.assertIsNone((yield store.get(CID, PID)))
        self.assertEqual((yield store.accept(CID, PID, 3, K)), X)
        self.assertEqual((yield store.accept(CID, PID, 4, K)), U)

    @defer.inlineCallbacks
    def test_idle_expiry_refreshed_by_accept(self):
        store = yield self.make_store(StoreLimits(idle_ttl=1.0))
        yield store.create(CID, PID, b"k")
        yield self.elapse_idle(0.5)
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        yield self.elapse_idle(0.6)  # 1.1 s after creation, 0.6 after accept
        self.assertEqual((yield store.get(CID, PID)), b"k")
        yield self.elapse_idle(0.5)
        self.assertIsNone((yield store.get(CID, PID)))
        self.assertEqual((yield store.accept(CID, PID, 2, K)), U)

    @defer.inlineCallbacks
    def test_idle_not_refreshed_by_refusals_or_get(self):
        store = yield self.make_store(StoreLimits(idle_ttl=1.0))
        yield store.create(CID, PID, b"k")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        yield self.elapse_idle(0.6)
        self.assertEqual((yield store.accept(CID, PID, 1, K)), R)
        self.assertEqual((yield store.get(CID, PID)), b"k")
        yield self.elapse_idle(0.5)
        self.assertIsNone((yield store.get(CID, PID)))

    @defer.inlineCallbacks
    def test_invalid_arguments(self):
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        for seq in (-1, 2**53, "1", 1.5, None):
            yield self.assertFailure(store.accept(CID, PID, seq, K), ValueError)
        for client_id, pair_id in ((CID, "a:b"), ("x y", PID), ("", PID),
                                   (CID, ""), (CID, "é"), (None, PID)):
            yield self.assertFailure(store.get(client_id, pair_id), ValueError)
            yield self.assertFailure(store.accept(client_id, pair_id, 1, K), ValueError)
            yield self.assertFailure(store.create(client_id, pair_id, b"k"), ValueError)
            yield self.assertFailure(store.delete(client_id, pair_id), ValueError)
        yield self.assertFailure(store.create(CID, PID, "not bytes"), ValueError)
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)


class MemoryStoreConformance(PairStoreConformanceMixin, TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    def make_store(self, limits=StoreLimits()):
        store = MemoryPairStore(self.clock, limits)
        self.addCleanup(store.stop)
        return store.start().addCallback(lambda _: store)

    def advance_clock(self, seconds):
        self.clock.advance(seconds)
        return defer.succeed(None)

    elapse_idle = advance_clock

    @defer.inlineCallbacks
    def test_max_pairs_refuses_newcomers_never_evicts_live_pairs(self):
        """A pairing flood (anyone can pair) must not remove other clients' pairs."""
        store = MemoryPairStore(self.clock, StoreLimits(idle_ttl=10), max_pairs=3)
        for name in ("p1xxxxxxxxxxxxxx", "p2xxxxxxxxxxxxxx", "p3xxxxxxxxxxxxxx"):
            yield store.create(CID, name, name.encode())
            self.clock.advance(1)
        failure = yield self.assertFailure(store.create(CID, "p4xxxxxxxxxxxxxx", b"p4"),
                                           StoreUnavailable)
        self.assertIn("full", str(failure))
        self.assertEqual(len(store), 3)
        for name in ("p1xxxxxxxxxxxxxx", "p2xxxxxxxxxxxxxx", "p3xxxxxxxxxxxxxx"):
            self.assertEqual((yield store.get(CID, name)), name.encode())
        self.assertIsNone((yield store.get(CID, "p4xxxxxxxxxxxxxx")))
        self.clock.advance(7.5)  # p1 idle for 10.5 s: expired, its place is free
        yield store.create(CID, "p4xxxxxxxxxxxxxx", b"p4")
        self.assertIsNone((yield store.get(CID, "p1xxxxxxxxxxxxxx")))
        self.assertEqual(len(store), 3)

    @defer.inlineCallbacks
    def test_flood_stays_bounded_and_expired_pairs_are_swept(self):
        store = MemoryPairStore(self.clock, StoreLimits(idle_ttl=10), max_pairs=1000)
        results = yield defer.DeferredList(
            [store.create(CID, f"flood{i:011d}", b"k") for i in range(5000)],
            consumeErrors=True)
        self.assertEqual(sum(1 for ok, _ in results if ok), 1000)
        self.assertEqual(len(store), 1000)
        self.clock.advance(11)
        yield store.create(CID, PID, b"k")
        self.assertEqual(len(store), 1)

    def test_rejects_bad_max_pairs(self):
        self.assertRaises(ValueError, MemoryPairStore, self.clock, StoreLimits(), 0)


class RedisStoreConformance(PairStoreConformanceMixin, TestCase):
    """The same suite on a real redis-server, plus the at-rest guarantees."""

    def setUp(self):
        self.server = started_redis(self)
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    def make_store(self, limits=StoreLimits(), secret=SECRET, prefix="mterelay:"):
        from mterelay.store.redis import RedisPairStore

        store = RedisPairStore(reactor, self.server.url, secret, limits, prefix,
                               clock=self.clock)
        self.addCleanup(store.stop)
        return store.start().addCallback(lambda _: store)

    def advance_clock(self, seconds):
        self.clock.advance(seconds)
        return defer.succeed(None)

    def elapse_idle(self, seconds):
        self.clock.advance(seconds)
        return task.deferLater(reactor, seconds, lambda: None)

    @defer.inlineCallbacks
    def test_matches_replay_window(self):
        """Beyond verdicts, Redis holds exactly ReplayWindow's state."""
        yield PairStoreConformanceMixin.test_matches_replay_window(self)
        store = yield self.make_store()
        key = store.key_name(CID, PID)
        top, width, bitmap, count = self.server.command("HMGET", key, "t", "W", "w", "n")
        stored = ReplayWindow.from_parts(int(width), int(top), bitmap)
        self.assertEqual(stored, self.model_window)
        self.assertTrue(0 < int(count) <= 800)

    @defer.inlineCallbacks
    def test_dump_holds_no_secret(self):
        store = yield self.make_store()
        secrets = os.urandom(64)
        yield store.create(CID, PID, secrets)
        key = store.key_name(CID, PID)
        raw = self.server.command("HGET", key, "s")
        self.assertNotEqual(raw, secrets)
        self.assertNotIn(secrets, raw)
        self.assertNotIn(secrets[:16], raw)
        everything = b"".join(self.server.command("HGETALL", key))
        self.assertNotIn(secrets[:16], everything)
        dump = self.server.command("DUMP", key)
        self.assertNotIn(secrets[:16], dump)
        self.assertEqual((yield store.get(CID, PID)), secrets)

    @defer.inlineCallbacks
    def test_blob_moved_to_another_key_does_not_open(self):
        store = yield self.make_store()
        other = PID + "_other"
        yield store.create(CID, PID, b"secrets of pair one")
        yield store.create(CID, other, b"secrets of pair two")
        blob = self.server.command("HGET", store.key_name(CID, PID), "s")
        self.server.command("HSET", store.key_name(CID, other), "s", blob)
        self.assertIsNone((yield store.get(CID, other)))
        # a whole pair renamed onto another client's key does not open either
        thief = "1" * 36 + ".aa"
        self.server.command("RENAME", store.key_name(CID, PID), store.key_name(thief, PID))
        self.assertIsNone((yield store.get(thief, PID)))

    @defer.inlineCallbacks
    def test_other_state_secret_does_not_open(self):
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        other = yield self.make_store(secret=b"another-state-secret-0123456789abcdef")
        self.assertIsNone((yield other.get(CID, PID)))

    @defer.inlineCallbacks
    def test_corrupt_window_forgets_the_pair(self):
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        self.server.command("HSET", store.key_name(CID, PID), "w", b"short")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), U)
        self.assertIsNone((yield store.get(CID, PID)))

    @defer.inlineCallbacks
    def test_flushall_then_same_id_paired_again_is_a_new_generation(self):
        store = yield self.make_store()
        other_replica = yield self.make_store()
        old = pair_generation(b"old keys")
        yield store.create(CID, PID, b"old keys")
        self.assertEqual((yield other_replica.accept(CID, PID, 1, old)), A)
        self.server.command("FLUSHALL")
        yield other_replica.create(CID, PID, b"new keys")
        for replica in (store, other_replica):
            self.assertEqual((yield replica.accept(CID, PID, 1, old)), S)
        key = store.key_name(CID, PID)
        self.assertEqual(self.server.command("HGET", key, "g"),
                         pair_generation(b"new keys").encode())
        self.assertEqual(self.server.command("HGET", key, "n"), b"0")

    @defer.inlineCallbacks
    def test_pair_without_generation_is_unusable_and_untouched(self):
        """A pair stored before generations existed answers UNKNOWN and is left to expire."""
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        key = store.key_name(CID, PID)
        self.server.command("HDEL", key, "g")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), U)
        self.assertEqual(self.server.command("HGET", key, "n"), b"0")
        self.assertGreater(self.server.command("PTTL", key), 0)
        yield self.assertFailure(store.create(CID, PID, b"k2"), PairExists)

    @defer.inlineCallbacks
    def test_unreachable_after_stop(self):
        store = yield self.make_store()
        yield store.stop()
        yield self.assertFailure(store.get(CID, PID), StoreUnavailable)
        self.assertEqual((yield store.ping()), False)
