"""The pair store on a real local Redis Cluster (3 masters + 3 replicas).

* the pure addressing rules (``mterelay.store.slots``) against the cluster
  specification's and the real server's answers;
* the whole store conformance suite (``tests.integration.test_store_conformance``) on
  ``ClusterPairStore``, one cluster per class;
* routing: keys spread over every master, ``MOVED`` after a slot moved,
  ``ASK`` during a migration, redirect loops bounded, fail-fast when a
  master has no connection.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

import tests.integration.test_store_conformance as conformance
from mterelay.store.interface import StoreLimits, StoreUnavailable, pair_generation
from mterelay.store.redisurl import parse_redis_url
from mterelay.store.slots import (Node, crc16, key_slot, parse_cluster_slots,
                                  parse_redirect)
from mterelay.protocol.replay import Verdict
from tests.helpers.rediscluster import started_cluster

CID, PID, SECRET = conformance.CID, conformance.PID, conformance.SECRET
A, U = Verdict.ACCEPTED, Verdict.UNKNOWN
K = pair_generation(b"k")


class SlotTests(SynchronousTestCase):
    def test_crc16_check_value(self):
        # the XMODEM check value, and the cluster spec's example
        self.assertEqual(crc16(b"123456789"), 0x31C3)
        self.assertEqual(key_slot(b"foo"), 12182)

    def test_hash_tags(self):
        self.assertEqual(key_slot(b"{user1000}.following"), key_slot(b"user1000"))
        self.assertEqual(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384)
        self.assertEqual(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"))
        self.assertEqual(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"))

    def test_redirects(self):
        moved = parse_redirect("MOVED 3999 127.0.0.1:6381")
        self.assertEqual((moved.kind, moved.slot, moved.node),
                         ("MOVED", 3999, Node("127.0.0.1", 6381)))
        ask = parse_redirect("ASK 1 [::1]:7000")
        self.assertEqual((ask.kind, ask.node), ("ASK", Node("::1", 7000)))
        self.assertEqual(parse_redirect("MOVED 12 :7001").node, Node("", 7001))
        for bad in ("MOVED", "MOVED 16384 h:1", "ASK x h:1", "MOVED 1 h:0", "MOVED 1 h",
                    "NOSCRIPT No matching script", "MOVED 1 h:1 extra"):
            self.assertIsNone(parse_redirect(bad), bad)

    def test_cluster_slots_reply(self):
        reply = [[0, 5460, [b"10.0.0.1", 7000, b"id1", [b"hostname", b"n1.example"]],
                  [b"10.0.0.4", 7003, b"id4"]],
                 [5461, 16383, [b"", 7001, b"id2"]]]
        ranges = parse_cluster_slots(reply, "seed.example")
        self.assertEqual([(r.first, r.last, r.master) for r in ranges],
                         [(0, 5460, Node("n1.example", 7000)),
                          (5461, 16383, Node("seed.example", 7001))])
        for bad in ("x", [[0]], [[5, 2, [b"h", 1]]], [[0, 16384, [b"h", 1]]],
                    [[0, 1, [b"h", "1"]]], [[0, 1, [b"h", 0]]]):
            self.assertRaises(ValueError, parse_cluster_slots, bad, "seed")

    def test_cluster_urls(self):
        address = parse_redis_url("rediss+cluster://app:p%40ss@cfg.example:6380")
        self.assertTrue(address.cluster and address.tls)
        self.assertEqual((address.username, address.password), ("app", "p@ss"))
        self.assertEqual(address.redacted(), "rediss+cluster://app:***@cfg.example:6380")
        self.assertEqual(address.at("n1", 7000).password, "p@ss")
        self.assertFalse(parse_redis_url("redis://h").cluster)
        self.assertIsNone(parse_redis_url("redis+cluster://h/0").db)
        with self.assertRaises(ValueError) as caught:
            parse_redis_url("redis+cluster://h/2")
        self.assertIn("only database 0", str(caught.exception))
        with self.assertRaises(ValueError):
            parse_redis_url("redis+sentinel://h")

    def test_config_validates_cluster_settings(self):
        from mterelay.service.config import ConfigError, load_config

        base = {"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": "s" * 40}
        config = load_config({**base, "REDIS_URL": "rediss+cluster://u:pw@cfg:6379"})
        self.assertEqual(config.redis_url_redacted, "rediss+cluster://u:***@cfg:6379")
        cases = [({"REDIS_URL": "redis+cluster://h/3"}, "REDIS_URL", "only database 0"),
                 ({"REDIS_URL": "redis+cluster://h", "REDIS_KEY_PREFIX": "a{b}:"},
                  "REDIS_KEY_PREFIX", "must not contain { or }"),
                 ({"REDIS_URL": "redis+sentinel://h"}, "REDIS_URL", "redis+cluster://")]
        for extra, setting, fragment in cases:
            with self.assertRaises(ConfigError) as caught:
                load_config({**base, **extra})
            message = str(caught.exception)
            self.assertEqual(caught.exception.setting, setting, message)
            self.assertIn(fragment, message)
            self.assertNotIn("\n", message)
        # braces are fine without a cluster
        load_config({**base, "REDIS_URL": "redis://h", "REDIS_KEY_PREFIX": "a{b}:"})

    def test_factory_builds_the_cluster_store(self):
        from mterelay.store.cluster import ClusterPairStore
        from mterelay.store.factory import build_store
        from mterelay.store.redis import RedisPairStore

        store = build_store(reactor, redis_url="redis+cluster://h:7000", state_secret=SECRET)
        self.assertIsInstance(store, ClusterPairStore)
        store = build_store(reactor, redis_url="redis://h:7000", state_secret=SECRET)
        self.assertNotIsInstance(store, ClusterPairStore)
        self.assertIsInstance(store, RedisPairStore)

    def test_store_refuses_braces_in_the_prefix(self):
        from mterelay.store.cluster import ClusterPairStore

        self.assertRaises(ValueError, ClusterPairStore, reactor, "redis+cluster://h",
                          SECRET, StoreLimits(), "app{x}:")
        self.assertRaises(ValueError, ClusterPairStore, reactor, "redis://h", SECRET)


class ClusterCase(TestCase):
    """One real cluster for the module, emptied before every test."""

    def setUp(self):
        self.cluster = started_cluster("store")
        self.cluster.on_masters("FLUSHALL")
        self.server = self.cluster
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    def make_store(self, limits=StoreLimits(), secret=SECRET, prefix="mterelay:", **kwargs):
        from mterelay.store.cluster import ClusterPairStore

        store = ClusterPairStore(reactor, self.cluster.url, secret, limits, prefix,
                                 clock=self.clock, **kwargs)
        self.addCleanup(store.stop)
        return store.start().addCallback(lambda _: store)


class ClusterStoreConformance(ClusterCase, conformance.RedisStoreConformance):
    """Everything the single-Redis store guarantees, on the cluster."""

    setUp = ClusterCase.setUp
    make_store = ClusterCase.make_store

    @defer.inlineCallbacks
    def test_blob_moved_to_another_key_does_not_open(self):
        # RENAME cannot cross slots on a cluster: DUMP + RESTORE does the same
        store = yield self.make_store()
        other = PID + "_other"
        yield store.create(CID, PID, b"secrets of pair one")
        yield store.create(CID, other, b"secrets of pair two")
        blob = self.server.command("HGET", store.key_name(CID, PID), "s")
        self.server.command("HSET", store.key_name(CID, other), "s", blob)
        self.assertIsNone((yield store.get(CID, other)))
        thief = "1" * 36 + ".aa"
        dump = self.server.command("DUMP", store.key_name(CID, PID))
        self.server.command("RESTORE", store.key_name(thief, PID), 0, dump)
        self.assertIsNone((yield store.get(thief, PID)))


class RoutingTests(ClusterCase):
    @defer.inlineCallbacks
    def test_pairs_spread_over_every_master_each_on_its_slot(self):
        store = yield self.make_store()
        owners = set()
        for i in range(30):
            pid = f"pair{i:018d}"
            yield store.create(CID, pid, b"k")
            self.assertEqual((yield store.accept(CID, pid, 0, K)), A)
            key = store.key_name(CID, pid)
            self.assertTrue(key.endswith("{%s:%s}" % (CID, pid)), key)
            owner = self.cluster.owner_of(key)
            self.assertEqual(owner.command("EXISTS", key), 1)
            self.assertEqual(str(store.slot_owner(CID, pid)), f"127.0.0.1:{owner.port}")
            owners.add(owner.port)
        self.assertEqual(owners, {node.port for node in self.cluster.masters()})
        self.assertEqual(store.stats["moved"], 0)

    @defer.inlineCallbacks
    def test_moved_then_ask_during_a_migration(self):
        store = yield self.make_store(refresh_interval=3600)
        yield store.create(CID, PID, b"k")
        key = store.key_name(CID, PID).encode()
        slot = key_slot(key)
        source = self.cluster.owner_of_slot(slot)
        target = next(n for n in self.cluster.masters() if n is not source)
        # a slot being migrated: our key still on the source, a new one must ASK
        source_id = source.command("CLUSTER", "MYID").decode()
        target_id = target.command("CLUSTER", "MYID").decode()

        def settle():
            for node in self.cluster.masters():
                node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            self.cluster.wait_ok()

        self.addCleanup(settle)  # the shared cluster must stay usable
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
        # moved key, slot still owned by the source: ASK, ASKING + EVAL on the target
        self.assertEqual((yield store.accept(CID, PID, 1, K)), U)  # other run_id: voided
        self.assertEqual(store.stats["ask"], 1)
        yield store.create(CID, PID, b"k")
        self.assertEqual(target.command("CLUSTER", "COUNTKEYSINSLOT", slot), 1)
        self.assertEqual(source.command("CLUSTER", "COUNTKEYSINSLOT", slot), 0)
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        self.assertEqual((yield store.get(CID, PID)), b"k")
        settle()
        # the store's map is stale now: MOVED, then the right node
        moved = store.stats["moved"]
        self.assertEqual((yield store.accept(CID, PID, 2, K)), A)
        self.assertEqual(store.stats["moved"], moved + 1)
        self.assertEqual(str(store.slot_owner(CID, PID)), f"127.0.0.1:{target.port}")
        self.assertEqual((yield store.accept(CID, PID, 3, K)), A)
        self.assertEqual(store.stats["moved"], moved + 1)

    @defer.inlineCallbacks
    def test_redirect_loop_is_bounded(self):
        store = yield self.make_store(refresh_interval=3600, max_redirects=3)
        yield store.create(CID, PID, b"k")
        key = store.key_name(CID, PID).encode()
        slot = key_slot(key)
        owner = store._slots[slot]
        others = [n for n in store._masters() if n != owner]
        # a map that is wrong in a circle: every hop answers MOVED to a node that
        # does not own it either (simulated by pointing the map at a non-owner
        # and stopping refreshes)
        store._slots[slot] = others[0]
        store._min_refresh = 3600
        store._last_refresh = reactor.seconds()
        calls = []
        original = store._attempt

        def counting(*args):
            calls.append(args[3])
            if len(calls) > 1:  # send every resend to a wrong node again
                args = args[:3] + (others[len(calls) % 2],) + args[4:]
            return original(*args)

        store._attempt = counting
        failure = yield self.assertFailure(store.accept(CID, PID, 1, K), StoreUnavailable)
        self.assertIn("redirects", str(failure))
        self.assertEqual(len(calls), 4)  # the call and 3 redirects followed
        self.assertEqual(self.cluster.command("HGET", key, "n"), b"0")

    @defer.inlineCallbacks
    def test_no_connection_to_a_master_fails_fast(self):
        store = yield self.make_store(refresh_interval=3600)
        yield store.create(CID, PID, b"k")
        node = store.slot_owner(CID, PID)
        pool = store._pools[node]
        for conn in list(pool.live):
            conn.poison("test: cut off")
        started = reactor.seconds()
        yield self.assertFailure(store.accept(CID, PID, 1, K), StoreUnavailable)
        self.assertLess(reactor.seconds() - started, 0.05)
        self.assertEqual((yield store.ping()), False)
        # it reconnects by itself
        for _ in range(100):
            if pool.live:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        self.assertEqual((yield store.ping()), True)

    @defer.inlineCallbacks
    def test_accept_lost_in_flight_is_never_resent(self):
        """Outcome unknown (connection lost after the accept was written): fail, no resend."""
        store = yield self.make_store(refresh_interval=3600)
        yield store.create(CID, PID, b"k")
        yield store.accept(CID, PID, 0, K)  # script cached on the owner: one EVALSHA per try
        owner = self.cluster.owner_of(store.key_name(CID, PID))

        def evalsha_calls():
            stats = self.cluster.info(owner, "commandstats").get("cmdstat_evalsha", "calls=0")
            return int(stats.split("calls=")[1].split(",")[0])

        before = evalsha_calls()
        pool = store._pools[store.slot_owner(CID, PID)]
        d = store.accept(CID, PID, 1, K)
        [conn] = [c for c in pool.live if c.pending_calls()]
        # the bytes leave now; the connection dies before the reply is read
        conn.transport.doWrite()
        conn.poison("test: connection lost after the accept was sent")
        failure = yield self.assertFailure(d, StoreUnavailable)
        self.assertIn("lost after the accept was sent", str(failure))
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertLessEqual(evalsha_calls() - before, 1)
        # and the client's retry is a new seq, never this one again
        self.assertIn((yield store.accept(CID, PID, 1, K)), (A, Verdict.REPLAYED))
        self.assertEqual((yield store.accept(CID, PID, 2, K)), A)


class AuthTests(TestCase):
    """AUTH user password on every node, as ElastiCache RBAC requires."""

    def setUp(self):
        self.cluster = started_cluster("auth", password="cluster-pass-0123")

    def store(self, url):
        from mterelay.store.cluster import ClusterPairStore

        store = ClusterPairStore(reactor, url, SECRET, connect_timeout=3)
        self.addCleanup(store.stop)
        return store

    @defer.inlineCallbacks
    def test_user_and_password_reach_every_master(self):
        store = self.store(self.cluster.url)
        yield store.start()
        for i in range(12):
            pid = f"auth{i:018d}"
            yield store.create(CID, pid, b"k")
            self.assertEqual((yield store.accept(CID, pid, 0, K)), A)
        self.assertEqual(len(store._masters()), 3)
        self.assertEqual((yield store.ping()), True)

    @defer.inlineCallbacks
    def test_wrong_password_is_fatal_and_not_logged(self):
        url = self.cluster.url.replace("cluster-pass-0123", "wrong-pass-4567")
        store = self.store(url)
        failure = yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertIn("refused", str(failure))
        self.assertNotIn("wrong-pass-4567", str(failure))
        self.assertEqual((yield store.ping()), False)
