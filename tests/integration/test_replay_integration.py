"""Replay safety with real processes: two relay replicas on one real redis-server.

An on-path attacker has captured request R and sees the clear client id and
pair id.  Whatever happens between two copies of R — the attacker re-pairing
R's pair id, the pair deleted in Redis, FLUSHALL, Redis restarted, a replica
restarted — R must never reach the upstream twice, and the client's pair
must not be replaced or knocked out.  The attacker and the client are both
written against the protocol core (no RelayClient), R is sent byte for byte
over fresh loopback connections, and the upstream counts what it received.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from mterelay.protocol.header import RelayHeader
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import start_pairing
from mterelay.protocol.sealing import Direction, MessageCipher
from tests.helpers.redisserver import RedisServer, started_redis
from tests.helpers.support import RelayProcess, free_port
from tests.integration.test_inbound_integration import EncryptedProxyCase, send_raw


def sealed_request(client_id: str, keys: PairKeys, seq: int, method: str, target: str,
                   body: bytes | None) -> bytes:
    """The exact bytes of a genuine MKE request (what an attacker captures)."""
    header = RelayHeader(client_id, keys.pair_id, "MKE", True, True, body is not None, True,
                         seq)
    cipher = MessageCipher(keys, header, Direction.C2S)
    wire_target = "/" + cipher.seal_url(target)
    item = cipher.seal_request_headers({"content-type": ["application/json"]}, method,
                                       wire_target, has_body=body is not None)
    sealed = cipher.seal_body(body) if body is not None else b""
    lines = [f"{method} {wire_target} HTTP/1.1", "Host: relay.test",
             f"x-mte-relay: {header.format()}", f"x-mte-relay-eh: {item}",
             "Connection: close"]
    if body is not None:
        lines += ["content-type: application/octet-stream", f"content-length: {len(sealed)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + sealed


def unpaired(keys: PairKeys) -> PairKeys:
    """The same keys under a pair id nobody paired (a probe the relay answers 560)."""
    return PairKeys(keys.version, keys.client_id, "probe" + "0" * 17, keys.c2s_key,
                    keys.s2c_key)


def status_of(answer: bytes) -> int:
    if not answer:
        return 0
    return int(answer.split(b" ", 2)[1])


class ReplaySafetyCase(EncryptedProxyCase):
    timeout = 120
    R_PATH = "/api/transfer/R"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.seq = 0

    def start_redis(self) -> RedisServer:
        return started_redis(self)

    @defer.inlineCallbacks
    def pair(self, relay: RelayProcess, client_id: str | None = None,
             pair_id: str | None = None) -> Any:
        """(status, answer, client id, keys or None) of one pairing through ``relay``."""
        if client_id is None:
            response = yield self.http.head(relay.url + "/api/mte-relay")
            client_id = response.headers.getRawHeaders(b"x-mte-relay")[0].decode()
        pending = start_pairing(client_id[:36], pair_id)
        response = yield self.http.post(relay.url + "/api/mte-pair",
                                        headers={"x-mte-relay": [client_id],
                                                 "content-type": ["application/json"]},
                                        data=json.dumps([pending.request_entry()]).encode())
        answer = yield treq.json_content(response)
        keys = pending.finish(answer[0]) if response.code == 200 else None
        return response.code, answer, client_id, keys

    @defer.inlineCallbacks
    def send(self, relay: RelayProcess, data: bytes) -> Any:
        answer = yield defer.ensureDeferred(send_raw(relay.port, data))
        return status_of(answer)

    def request(self, keys: PairKeys, path: str, body: bytes | None = None) -> bytes:
        seq, self.seq = self.seq, self.seq + 1
        return sealed_request(self.client_id, keys, seq, "POST" if body else "GET", path,
                              body)

    def reached(self, path: str) -> int:
        return sum(1 for seen in self.upstream.seen if seen["uri"] == path.encode())

    @defer.inlineCallbacks
    def two_replicas_with_r_sent(self, **environ: str) -> Any:
        """Relays a and b on one Redis; the client paired on a, R sent to a, b caching the keys."""
        self.redis = self.start_redis()
        self.a = self.start_relay(REDIS_URL=self.redis.url, **environ)
        self.b = self.start_relay(REDIS_URL=self.redis.url, **environ)
        status, _, self.client_id, self.keys = yield self.pair(self.a)
        self.assertEqual(status, 200)
        self.captured = self.request(self.keys, self.R_PATH, b'{"amount": 100}')
        self.assertEqual((yield self.send(self.a, self.captured)), 200)
        self.assertEqual((yield self.send(self.b, self.request(self.keys, "/warm-b"))), 200)
        self.assertEqual(self.reached(self.R_PATH), 1)

    @defer.inlineCallbacks
    def assert_r_refused_everywhere(self, *relays: RelayProcess, status: int = 562) -> Any:
        for relay in relays:
            self.assertEqual((yield self.send(relay, self.captured)), status, relay.url)
        self.assertEqual(self.reached(self.R_PATH), 1, "R reached the upstream again")

    @defer.inlineCallbacks
    def attacker_takes_the_free_id(self, through: RelayProcess) -> Any:
        status, answer, _, keys = yield self.pair(through, self.client_id, self.keys.pair_id)
        self.assertEqual(status, 200, answer)
        return keys


class RePairingAttackTests(ReplaySafetyCase):
    @defer.inlineCallbacks
    def test_repair_refused_replays_refused_pair_still_works(self) -> Any:
        yield self.two_replicas_with_r_sent()
        for relay in (self.a, self.b):
            status, answer, _, _ = yield self.pair(relay, self.client_id, self.keys.pair_id)
            self.assertEqual((status, answer["code"], answer["field"]),
                             (409, 409, "[0].pairId"))
        yield self.assert_r_refused_everywhere(self.a, self.b, self.b, self.a)
        for relay, path in ((self.a, "/after-a"), (self.b, "/after-b")):
            self.assertEqual((yield self.send(relay, self.request(self.keys, path))), 200)
        # both replicas logged the refusal once each, and nothing replaced the pair
        self.assertEqual(sum(relay.output().count("409 Pair id in use")
                             for relay in (self.a, self.b)), 2)
        key = f"mterelay:pair:{self.client_id[:36]}:{self.keys.pair_id}"
        self.assertGreaterEqual(int(self.redis.command("HGET", key, "n")), 4)


class LostPairTests(ReplaySafetyCase):
    """The pair's Redis state is gone; the attacker pairs the same id with new keys."""

    @defer.inlineCallbacks
    def check(self, lose: Any, through: str = "a") -> Any:
        yield self.two_replicas_with_r_sent()
        yield defer.maybeDeferred(lose)
        relay = self.a if through == "a" else self.b
        attacker_keys = yield self.attacker_takes_the_free_id(relay)
        yield self.assert_r_refused_everywhere(self.b, self.a, self.b)
        # the refused replays burned nothing of the attacker's new pair either
        seq, self.seq = self.seq, 0
        self.assertEqual((yield self.send(self.b, self.request(attacker_keys, "/new"))), 200)
        self.seq = seq

    def test_pair_deleted_in_redis(self) -> Any:
        return self.check(lambda: self.redis.command(
            "DEL", f"mterelay:pair:{self.client_id[:36]}:{self.keys.pair_id}"))

    def test_flushall(self) -> Any:
        return self.check(lambda: self.redis.command("FLUSHALL"))

    @defer.inlineCallbacks
    def wait_ready(self, *relays: RelayProcess) -> Any:
        """Until each relay reaches Redis again: a request for an unknown pair is 560, not 503."""
        probe = sealed_request(self.client_id, unpaired(self.keys), 0, "GET",
                               "/probe", None)
        for relay in relays:
            for _ in range(200):
                if (yield self.send(relay, probe)) != 503:
                    break
                yield deferLater(reactor, 0.05, lambda: None)

    def test_redis_restarted(self) -> Any:
        def restart() -> Any:
            self.redis.restart()  # persistence off: every pair is gone
            return self.wait_ready(self.a, self.b)
        return self.check(restart, through="b")

    @defer.inlineCallbacks
    def test_redis_restarted_from_an_older_snapshot(self) -> Any:
        """A crash and reload: the snapshot predates R, so its window does not hold R."""
        self.redis = self.start_redis()
        self.a = self.start_relay(REDIS_URL=self.redis.url)
        self.b = self.start_relay(REDIS_URL=self.redis.url)
        status, _, self.client_id, self.keys = yield self.pair(self.a)
        self.assertEqual((yield self.send(self.b, self.request(self.keys, "/warm-b"))), 200)
        self.redis.command("SAVE")
        self.captured = self.request(self.keys, self.R_PATH, b'{"amount": 100}')
        self.assertEqual((yield self.send(self.a, self.captured)), 200)
        self.redis.restart()  # reloads the snapshot, from before R
        yield self.wait_ready(self.a, self.b)
        key = f"mterelay:pair:{self.client_id[:36]}:{self.keys.pair_id}"
        self.assertEqual(self.redis.command("EXISTS", key), 1)
        yield self.assert_r_refused_everywhere(self.b, self.a, status=560)
        self.assertEqual(self.redis.command("EXISTS", key), 0)
        # the client re-pairs (fresh ids) and carries on
        status, _, _, keys = yield self.pair(self.a, self.client_id)
        self.assertEqual(status, 200)
        self.assertEqual((yield self.send(self.b, self.request(keys, "/after"))), 200)

    @defer.inlineCallbacks
    def test_replica_restarted_after_flush(self) -> Any:
        """a restarts (empty cache) and takes the attacker's pairing; b still caches R's keys."""
        yield self.two_replicas_with_r_sent()
        port = self.a.port
        self.a.stop()
        self.redis.command("FLUSHALL")
        self.a = self.start_relay(port=port, REDIS_URL=self.redis.url)
        yield self.attacker_takes_the_free_id(self.a)
        yield self.assert_r_refused_everywhere(self.b, self.a, self.b)

    @defer.inlineCallbacks
    def test_replica_restarted_repair_still_refused(self) -> Any:
        yield self.two_replicas_with_r_sent()
        port = self.a.port
        self.a.stop()
        self.a = self.start_relay(port=port, REDIS_URL=self.redis.url)
        status, _, _, _ = yield self.pair(self.a, self.client_id, self.keys.pair_id)
        self.assertEqual(status, 409)
        yield self.assert_r_refused_everywhere(self.a, self.b)
        self.assertEqual((yield self.send(self.a, self.request(self.keys, "/after"))), 200)


class MemoryStoreTests(ReplaySafetyCase):
    @defer.inlineCallbacks
    def test_expired_pair_paired_again_by_the_attacker(self) -> Any:
        relay = self.start_relay(PAIR_IDLE_TTL="1")
        status, _, self.client_id, self.keys = yield self.pair(relay)
        self.captured = self.request(self.keys, self.R_PATH, b'{"amount": 100}')
        self.assertEqual((yield self.send(relay, self.captured)), 200)
        status, _, _, _ = yield self.pair(relay, self.client_id, self.keys.pair_id)
        self.assertEqual(status, 409)
        yield self.assert_r_refused_everywhere(relay)
        yield deferLater(reactor, 1.3, lambda: None)  # the pair expires
        yield self.attacker_takes_the_free_id(relay)
        yield self.assert_r_refused_everywhere(relay)

    @defer.inlineCallbacks
    def test_relay_restarted(self) -> Any:
        port = free_port()
        relay = self.start_relay(port=port)
        status, _, self.client_id, self.keys = yield self.pair(relay)
        self.captured = self.request(self.keys, self.R_PATH, b'{"amount": 100}')
        self.assertEqual((yield self.send(relay, self.captured)), 200)
        relay.stop()
        relay = self.start_relay(port=port)
        yield self.assert_r_refused_everywhere(relay, status=560)  # the pair is gone
        yield self.attacker_takes_the_free_id(relay)
        yield self.assert_r_refused_everywhere(relay)
