"""Redis-specific store tests: replicas under concurrency, outages, URLs.

Everything runs against real redis-server processes (tests/helpers/redisserver.py).
"""

from __future__ import annotations

import random
import time

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mterelay.protocol.replay import Verdict
from mterelay.store import MemoryPairStore, build_store
from mterelay.store.interface import StoreLimits, StoreUnavailable, pair_generation
from mterelay.store.redisurl import RedisAddress, parse_redis_url

from tests.helpers.redisserver import started_redis
from tests.integration.test_store_conformance import mismatches

A, R, T = Verdict.ACCEPTED, Verdict.REPLAYED, Verdict.TOO_OLD
SECRET = b"state-secret-for-tests-0123456789abcdef"
CID = "2f1c6f3e-4d0a-4b7e-9a51-3f5d2c1b0a99.ab12"
PID = "pair_AAAAAAAAAAAAAAAAAAAAAA"
K = pair_generation(b"k")
_log = Logger()


def _wait(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class RedisTestCase(TestCase):
    """Starts a redis-server per test; ``make_store`` builds stopped-on-cleanup stores."""

    password: str | None = None

    def setUp(self):
        self.server = started_redis(self, self.password)

    def make_store(self, url=None, *, start=True, **kwargs):
        from mterelay.store.redis import RedisPairStore

        kwargs.setdefault("reconnect_max_delay", 0.3)
        store = RedisPairStore(reactor, url or self.server.url, SECRET, **kwargs)
        self.addCleanup(store.stop)
        if not start:
            return defer.succeed(store)
        return store.start().addCallback(lambda _: store)

    @defer.inlineCallbacks
    def wait_until_ready(self, store, within=5.0):
        deadline = time.monotonic() + within
        while not (yield store.ping()):
            if time.monotonic() > deadline:
                self.fail(f"store did not recover within {within} s")
            yield _wait(0.05)
        return time.monotonic() - deadline + within


class ConcurrentReplicas(RedisTestCase):
    @defer.inlineCallbacks
    def test_1000_concurrent_accepts_over_two_replicas(self):
        one = yield self.make_store(pool_size=4)
        two = yield self.make_store(pool_size=4)
        yield one.create(CID, PID, b"k")
        seqs = list(range(1000))
        random.Random(1).shuffle(seqs)
        replicas = [one, two]

        started = time.monotonic()
        verdicts = yield defer.gatherResults(
            [replicas[i % 2].accept(CID, PID, seq, K) for i, seq in enumerate(seqs)])
        elapsed = time.monotonic() - started
        _log.info("1000 concurrent accepts over 2 replicas: {ms:.1f} ms", ms=elapsed * 1000)
        self.assertEqual(mismatches(verdicts, [A] * 1000), [])
        count = self.server.command("HGET", one.key_name(CID, PID), "n")
        self.assertEqual(int(count), 1000)

        random.Random(2).shuffle(seqs)
        replays = yield defer.gatherResults(
            [replicas[i % 2].accept(CID, PID, seq, K) for i, seq in enumerate(seqs)])
        self.assertEqual(mismatches(replays, [R] * 1000), [])
        self.assertLess(elapsed, 5.0)

    @defer.inlineCallbacks
    def test_concurrent_duplicates_accepted_at_most_once(self):
        """Numbers sent twice at once, spread beyond the window: never two ACCEPTED."""
        one = yield self.make_store(pool_size=3)
        two = yield self.make_store(pool_size=3)
        yield one.create(CID, PID, b"k")
        rng = random.Random(3)
        seqs = [rng.randrange(3000) for _ in range(800)]
        seqs += seqs  # every number at least twice, concurrently
        rng.shuffle(seqs)
        calls = [(one if rng.random() < 0.5 else two).accept(CID, PID, seq, K) for seq in seqs]
        verdicts = yield defer.gatherResults(calls)
        accepted = [seq for seq, verdict in zip(seqs, verdicts) if verdict is A]
        self.assertEqual(len(accepted), len(set(accepted)))
        self.assertTrue(set(verdicts) <= {A, R, T})
        count = self.server.command("HGET", one.key_name(CID, PID), "n")
        self.assertEqual(int(count), len(accepted))


class Outages(RedisTestCase):
    @defer.inlineCallbacks
    def test_redis_stopped_fails_fast_then_recovers(self):
        store = yield self.make_store(pool_size=3, timeout=2.0)
        yield store.create(CID, PID, b"k")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)

        self.server.stop()
        started = time.monotonic()
        # in flight while the connections die, and after they are gone
        results = yield defer.DeferredList(
            [store.accept(CID, PID, seq, K) for seq in range(2, 52)]
            + [store.get(CID, PID), store.create(CID, PID + "2", b"k")],
            consumeErrors=True)
        in_flight = time.monotonic() - started
        yield _wait(0.05)
        later = yield defer.DeferredList(
            [store.accept(CID, PID, 100, K), store.get(CID, PID), store.delete(CID, PID)],
            consumeErrors=True)
        elapsed = time.monotonic() - started
        _log.info("52 calls in flight at the outage failed within {ms:.1f} ms",
                  ms=in_flight * 1000)
        for ok, result in results + later:
            self.assertFalse(ok)
            result.trap(StoreUnavailable)
        self.assertLess(elapsed, 0.5)
        self.assertEqual((yield store.ping()), False)

        self.server.start()  # same port; the store reconnects by itself
        recovered_in = yield self.wait_until_ready(store)
        _log.info("store recovered {s:.2f} s after Redis came back", s=recovered_in)
        # the data were not persisted, so the pair is gone: clients re-pair
        self.assertEqual((yield store.accept(CID, PID, 2, K)), Verdict.UNKNOWN)
        yield store.create(CID, PID, b"k")  # scripts re-sent after NOSCRIPT
        self.assertEqual((yield store.accept(CID, PID, 2, K)), A)

    @defer.inlineCallbacks
    def test_restart_from_an_older_snapshot_voids_its_pairs(self):
        """A reload (RDB after a crash, AOF losing its last second, a promoted replica)
        brings back an older window: no pair from before the restart accepts anything."""
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        self.server.command("SAVE")  # the snapshot knows seq 1 only
        self.assertEqual((yield store.accept(CID, PID, 2, K)), A)
        self.server.restart()  # no save at shutdown: dump.rdb is the older snapshot
        yield self.wait_until_ready(store)
        key = store.key_name(CID, PID)
        self.assertEqual(self.server.command("HGET", key, "n"), b"1")  # it did come back
        self.assertEqual((yield store.accept(CID, PID, 2, K)), Verdict.UNKNOWN)
        self.assertEqual(self.server.command("EXISTS", key), 0)
        yield store.create(CID, PID, b"k")  # the id is free again, a new pair
        self.assertEqual((yield store.accept(CID, PID, 2, K)), A)

    @defer.inlineCallbacks
    def test_pairs_survive_while_the_server_runs(self):
        """The boot check never voids a pair of the running server (run_id is stable)."""
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        run_id = self.server.command("INFO", "server").split(b"run_id:")[1][:40]
        key = store.key_name(CID, PID)
        self.assertEqual(self.server.command("HGET", key, "b"), run_id)
        for seq in range(5):
            self.assertEqual((yield store.accept(CID, PID, seq, K)), A)

    @defer.inlineCallbacks
    def test_info_refused_by_acl_degrades_to_no_restart_detection(self):
        self.server.command("ACL", "SETUSER", "relay", "on", ">relay-pw", "~mterelay:*",
                            "+@all", "-info")
        store = yield self.make_store(
            f"redis://relay:relay-pw@127.0.0.1:{self.server.port}")
        yield store.create(CID, PID, b"k")
        self.assertEqual(self.server.command("HGET", store.key_name(CID, PID), "b"), b"")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        self.assertEqual((yield store.accept(CID, PID, 1, K)), R)

    @defer.inlineCallbacks
    def test_frozen_redis_times_out_then_recovers(self):
        store = yield self.make_store(pool_size=2, timeout=0.3)
        yield store.create(CID, PID, b"k")
        self.server.pause()
        try:
            started = time.monotonic()
            failures = yield defer.DeferredList(
                [store.accept(CID, PID, 1, K), store.get(CID, PID)], consumeErrors=True)
            elapsed = time.monotonic() - started
        finally:
            self.server.resume()
        for ok, result in failures:
            self.assertFalse(ok)
            result.trap(StoreUnavailable)
        self.assertLess(elapsed, 0.9)
        yield self.wait_until_ready(store)
        verdict = yield store.accept(CID, PID, 2, K)
        self.assertEqual(verdict, A)

    @defer.inlineCallbacks
    def test_start_while_redis_down(self):
        self.server.stop()
        store = yield self.make_store(start=False, connect_timeout=0.3)
        started = time.monotonic()
        yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertLess(time.monotonic() - started, 1.0)
        yield self.assertFailure(store.accept(CID, PID, 1, K), StoreUnavailable)
        self.server.start()
        yield self.wait_until_ready(store)
        yield store.start()  # already connected: fires at once
        yield store.create(CID, PID, b"k")
        self.assertEqual((yield store.get(CID, PID)), b"k")

    @defer.inlineCallbacks
    def test_not_started(self):
        store = yield self.make_store(start=False)
        yield self.assertFailure(store.get(CID, PID), StoreUnavailable)
        self.assertFalse((yield store.ping()))

    @defer.inlineCallbacks
    def test_script_cache_flushed(self):
        store = yield self.make_store()
        yield store.create(CID, PID, b"k")
        self.server.command("SCRIPT", "FLUSH")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        self.server.command("SCRIPT", "FLUSH")
        yield store.create(CID, PID + "2", b"k2")
        self.assertEqual((yield store.get(CID, PID + "2")), b"k2")
        self.server.command("SCRIPT", "FLUSH")
        yield store.delete(CID, PID + "2", pair_generation(b"k2"))
        self.assertIsNone((yield store.get(CID, PID + "2")))


class PasswordAndDatabase(RedisTestCase):
    password = "p@ss:word/with%odd chars"

    def url(self, password=None, db=None):
        from urllib.parse import quote

        pw = quote(self.password if password is None else password, safe="")
        return f"redis://:{pw}@127.0.0.1:{self.server.port}" + (f"/{db}" if db is not None else "")

    @defer.inlineCallbacks
    def test_password(self):
        store = yield self.make_store(self.url())
        yield store.create(CID, PID, b"k")
        self.assertEqual((yield store.get(CID, PID)), b"k")

    @defer.inlineCallbacks
    def test_wrong_password_fails_without_retrying_forever(self):
        store = yield self.make_store(self.url(password="wrong"), start=False)
        failure = yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertNotIn("wrong", str(failure).replace("WRONGPASS", ""))
        yield self.assertFailure(store.get(CID, PID), StoreUnavailable)
        self.assertFalse((yield store.ping()))

    @defer.inlineCallbacks
    def test_missing_password(self):
        store = yield self.make_store(f"redis://127.0.0.1:{self.server.port}", start=False)
        failure = yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertIn("NOAUTH", str(failure))
        self.assertFalse((yield store.ping()))

    @defer.inlineCallbacks
    def test_database_number(self):
        db0 = yield self.make_store(self.url(db=0))
        db3 = yield self.make_store(self.url(db=3))
        yield db3.create(CID, PID, b"three")
        self.assertIsNone((yield db0.get(CID, PID)))
        self.assertEqual((yield db3.get(CID, PID)), b"three")
        keyspace = self.server.command("INFO", "keyspace")
        self.assertIn(b"db3:keys=1", keyspace)
        self.assertNotIn(b"db0:", keyspace)

    @defer.inlineCallbacks
    def test_username_and_password(self):
        self.server.command("ACL", "SETUSER", "relay", "on", ">relay-pw", "~mterelay:*",
                            "+@all")
        store = yield self.make_store(f"redis://relay:relay-pw@127.0.0.1:{self.server.port}")
        yield store.create(CID, PID, b"k")
        self.assertEqual((yield store.accept(CID, PID, 1, K)), A)
        # the ACL confines this user to the mterelay: prefix
        other = yield self.make_store(f"redis://relay:relay-pw@127.0.0.1:{self.server.port}",
                                      key_prefix="elsewhere:")
        yield self.assertFailure(other.get(CID, PID), StoreUnavailable)


class KeyPrefix(RedisTestCase):
    @defer.inlineCallbacks
    def test_prefixes_isolate_relays(self):
        a = yield self.make_store(key_prefix="a:")
        b = yield self.make_store(key_prefix="b:")
        yield a.create(CID, PID, b"from a")
        self.assertIsNone((yield b.get(CID, PID)))
        self.assertEqual((yield b.accept(CID, PID, 1, K)), Verdict.UNKNOWN)
        yield b.create(CID, PID, b"from b")
        self.assertEqual((yield a.accept(CID, PID, 1, pair_generation(b"from a"))), A)
        self.assertEqual((yield b.accept(CID, PID, 1, pair_generation(b"from b"))), A)
        self.assertEqual((yield a.get(CID, PID)), b"from a")
        self.assertEqual(sorted(self.server.command("KEYS", "*")),
                         [f"a:pair:{CID}:{PID}".encode(), f"b:pair:{CID}:{PID}".encode()])
        # a blob copied across prefixes does not open either
        blob = self.server.command("HGET", f"a:pair:{CID}:{PID}", "s")
        self.server.command("HSET", f"b:pair:{CID}:{PID}", "s", blob)
        self.assertIsNone((yield b.get(CID, PID)))

    def test_bad_prefix(self):
        from mterelay.store.redis import RedisPairStore

        self.assertRaises(ValueError, RedisPairStore, reactor, self.server.url, SECRET,
                          key_prefix="has space")


class RedisUrls(SynchronousTestCase):
    def test_plain(self):
        self.assertEqual(parse_redis_url("redis://localhost"),
                         RedisAddress(host="localhost"))
        self.assertEqual(parse_redis_url("redis://10.0.0.5:6380/2"),
                         RedisAddress(host="10.0.0.5", port=6380, db=2))

    def test_password_and_user(self):
        address = parse_redis_url("redis://:s3cr%40t@h:1")
        self.assertEqual((address.username, address.password), (None, "s3cr@t"))
        address = parse_redis_url("redis://alice:pw@h/0")
        self.assertEqual((address.username, address.password, address.db),
                         ("alice", "pw", 0))
        self.assertNotIn("pw", repr(address))
        self.assertEqual(address.redacted(), "redis://alice:***@h:6379/0")

    def test_tls(self):
        address = parse_redis_url("rediss://:pw@cache.example.com:6380?db=4")
        self.assertTrue(address.tls)
        self.assertEqual((address.host, address.port, address.db, address.verify),
                         ("cache.example.com", 6380, 4, True))
        address = parse_redis_url("rediss://h?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
        self.assertEqual((address.verify, address.ca_certs), (False, "/ca.pem"))

    def test_ipv6(self):
        address = parse_redis_url("redis://[::1]:7000")
        self.assertEqual((address.host, address.port), ("::1", 7000))
        self.assertEqual(address.redacted(), "redis://[::1]:7000")

    def test_errors_do_not_leak_the_password(self):
        bad = [
            "http://:hunter2@h", "redis://:hunter2@", "redis://:hunter2@h:99999",
            "redis://:hunter2@h/x", "redis://:hunter2@h/1?db=2", "redis://:hunter2@h?foo=1",
            "redis://:hunter2@h?ssl_cert_reqs=none", "rediss://:hunter2@h?ssl_cert_reqs=maybe",
            "redis://:hunter2@h#frag", "redis://:hunter2@h/-1", 42,
        ]
        for url in bad:
            with self.assertRaises(ValueError) as caught:
                parse_redis_url(url)
            self.assertNotIn("hunter2", str(caught.exception))

    def test_store_builds_tls_endpoint(self):
        from mterelay.store.redis import RedisPairStore
        from twisted.internet.endpoints import HostnameEndpoint

        store = RedisPairStore(reactor, "rediss://cache.example.com", SECRET)
        self.assertNotIsInstance(store._endpoint(), HostnameEndpoint)
        plain = RedisPairStore(reactor, "redis://cache.example.com", SECRET)
        self.assertIsInstance(plain._endpoint(), HostnameEndpoint)


class BuildStore(SynchronousTestCase):
    def test_memory_without_url(self):
        clock = task.Clock()
        store = build_store(clock, redis_url=None, state_secret=None,
                            limits=StoreLimits(), key_prefix="x:")
        self.assertIsInstance(store, MemoryPairStore)

    def test_redis_with_url(self):
        from mterelay.store.redis import RedisPairStore

        store = build_store(reactor, redis_url="redis://h:1/0", state_secret=SECRET,
                            limits=StoreLimits(window=2048), key_prefix="x:")
        self.assertIsInstance(store, RedisPairStore)
        self.assertEqual((store.key_prefix, store.limits.window), ("x:", 2048))

    def test_redis_needs_a_secret(self):
        self.assertRaises(ValueError, build_store, reactor, redis_url="redis://h",
                          state_secret=None, limits=StoreLimits(), key_prefix="x:")
        self.assertRaises(ValueError, build_store, reactor, redis_url="redis://h",
                          state_secret=b"short", limits=StoreLimits(), key_prefix="x:")

    def test_limits_validation(self):
        for bad in ({"idle_ttl": 0}, {"max_age": -1}, {"max_messages": 0},
                    {"max_messages": 1.5}, {"window": 1000}, {"window": 512}):
            self.assertRaises(ValueError, StoreLimits, **bad)
        limits = StoreLimits()
        self.assertEqual((limits.idle_ttl, limits.max_age, limits.max_messages, limits.window),
                         (1800.0, 86400.0, 1_000_000, 1024))


def _write_tls_files(directory: str) -> tuple[str, bytes]:
    """A private CA and a 'localhost' server certificate; returns (CA path, server PEM)."""
    import datetime
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mterelay test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True,
              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    server_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)
    return ca_path, server_pem


class Tls(RedisTestCase):
    """rediss:// through a real TLS terminator (the wheel's redis-server has no TLS)."""

    @defer.inlineCallbacks
    def setUp(self):
        RedisTestCase.setUp(self)
        from twisted.internet import endpoints, ssl
        from twisted.protocols.portforward import ProxyFactory

        self.ca_path, server_pem = _write_tls_files(self.server.directory)
        options = ssl.PrivateCertificate.loadPEM(server_pem).options()
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1")
        port = yield endpoint.listen(ProxyFactory("127.0.0.1", self.server.port))
        self.addCleanup(port.stopListening)
        self.addCleanup(_wait, 0.1)  # let proxied connections close after the stores
        self.tls_port = port.getHost().port

    @defer.inlineCallbacks
    def test_tls_with_private_ca(self):
        store = yield self.make_store(
            f"rediss://localhost:{self.tls_port}?ssl_ca_certs={self.ca_path}")
        yield store.create(CID, PID, b"over tls")
        self.assertEqual((yield store.get(CID, PID)), b"over tls")
        self.assertEqual((yield store.accept(CID, PID, 1, pair_generation(b"over tls"))), A)

    @defer.inlineCallbacks
    def test_tls_refuses_untrusted_certificate(self):
        store = yield self.make_store(f"rediss://localhost:{self.tls_port}",
                                      start=False, connect_timeout=0.5)
        yield self.assertFailure(store.start(), StoreUnavailable)
        yield self.assertFailure(store.get(CID, PID), StoreUnavailable)

    @defer.inlineCallbacks
    def test_tls_checks_the_host_name(self):
        store = yield self.make_store(
            f"rediss://127.0.0.1:{self.tls_port}?ssl_ca_certs={self.ca_path}",
            start=False, connect_timeout=0.5)
        yield self.assertFailure(store.start(), StoreUnavailable)
