"""Server-to-server end to end: application → relay A → (wire tap) → relay B → upstream.

Everything over real loopback sockets: A and B are ``twistd -n mterelay``
child processes, the upstream a Twisted site in this process recording
exactly what it receives, the wire tap a recording round-robin TCP forwarder
standing where the internet and the load balancers would be, Redis a real
``redis-server``.  The application is a plain HTTP client: all it adds is
``x-mte-outbound-token`` and ``x-mte-upstream``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
from collections import Counter
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import NOT_DONE_YET, Site

from mterelay.wiretap import WireTap
from tests.helpers.redisserver import RedisServer, started_redis
from tests.helpers.support import SECRET, RelayProcess, collect_digest, free_port, write_random_file
from tests.integration.test_inbound_integration import RecordingUpstream, send_raw
from tests.integration.test_passthrough_integration import pattern_digest

MB = 1024 * 1024
HUGE = 100 * MB
TOKEN = "app-token-0123456789abcdef"
SECRET_B = "relay-b-client-id-secret-0123456789abcdef"
# Both relays stream: socket buffers and a few 64 KiB chunks per transfer.
MAX_GROWTH_KIB = 32 * 1024


class Upstream(RecordingUpstream):
    """The recording upstream, plus ``/slow``: answers never, notes when it is abandoned."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []
        self.abandoned: list[Any] = []

    def render(self, request: Any) -> Any:
        if request.path == b"/slow":
            self.held.append(request)
            request.notifyFinish().addBoth(self.abandoned.append)
            return NOT_DONE_YET
        return super().render(request)


class OutboundCase(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = Upstream()
        self.upstream_port = yield TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(Site(self.upstream))
        self.addCleanup(self.upstream_port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)

    def a_env(self, **extra: str) -> dict[str, str]:
        env = {"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET,
               "OUTBOUND_TOKEN": TOKEN, "OUTBOUND_UPSTREAMS": "http://127.0.0.1:*"}
        env.update(extra)
        return env

    def b_env(self, **extra: str) -> dict[str, str]:
        env = {"UPSTREAM": f"http://127.0.0.1:{self.upstream_port.getHost().port}",
               "CLIENT_ID_SECRET": SECRET_B}
        env.update(extra)
        return env

    def start(self, *environs: dict[str, str], port: int | None = None) -> list[RelayProcess]:
        """Start relays side by side (they boot in parallel), then wait for each."""
        relays = []
        for env in environs:
            relay = RelayProcess.start(env, self.mktemp() + ".log", port=port)
            self.addCleanup(lambda relay=relay: relay.process.poll() is None and relay.stop())
            relays.append(relay)
        for relay in relays:
            relay.wait_listening()
        return relays

    @defer.inlineCallbacks
    def tap(self, *relays: RelayProcess, ports: list[int] | None = None) -> Any:
        tap = WireTap(ports or [relay.port for relay in relays])
        yield defer.ensureDeferred(tap.listen())
        self.addCleanup(tap.port.stopListening)
        return tap

    def send(self, a: RelayProcess, remote: str | None, method: str, path: str,
             headers: dict[bytes, list[bytes]] | None = None, data: Any = None,
             token: str | None = TOKEN) -> "defer.Deferred[tuple[Any, bytes]]":
        """The application's plain request to A; fires with (response, body)."""
        sent = Headers(headers or {})
        if token is not None:
            sent.setRawHeaders(b"x-mte-outbound-token", [token.encode()])
        if remote is not None:
            sent.setRawHeaders(b"x-mte-upstream", [remote.encode()])
        body = None
        if isinstance(data, bytes):
            body = FileBodyProducer(io.BytesIO(data))
        elif data is not None:
            body = data
        d = self.agent.request(method.encode(), (a.url + path).encode(), sent, body)
        return d.addCallback(lambda response: treq.content(response).addCallback(
            lambda content: (response, content)))


class ChainTests(OutboundCase):
    @defer.inlineCallbacks
    def test_everything_intact_and_nothing_readable_between_the_relays(self) -> Any:
        a, b = self.start(self.a_env(), self.b_env())
        tap = yield self.tap(b)
        login = b'{"user": "alice", "password": "hunter2-PLAINTEXT"}'
        response, body = yield self.send(
            a, tap.url, "POST", "/api/login/SECRETPATH?token=QUERYSECRET&x=%2F",
            {b"content-type": [b"application/json"], b"authorization": [b"Bearer HEADERSECRET"],
             b"x-custom": [b"one", b"two"], b"connection": [b"x-hop"], b"x-hop": [b"1"]},
            login)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {
            "method": "POST", "size": len(login),
            "uri": "/api/login/SECRETPATH?token=QUERYSECRET&x=%2F"})
        seen = self.upstream.seen[-1]
        self.assertEqual((seen["method"], seen["body"]), (b"POST", login))
        self.assertEqual(seen["headers"][b"authorization"], [b"Bearer HEADERSECRET"])
        self.assertEqual(seen["headers"][b"x-custom"], [b"one", b"two"])
        self.assertEqual(seen["headers"][b"content-type"], [b"application/json"])
        self.assertFalse([n for n in seen["headers"] if n.startswith(b"x-mte-") or n == b"x-hop"])

        cases: list[tuple[str, str, Any, int, bytes | None]] = [
            ("GET", "/api/search?q=a%20b&tag=x&tag=y&empty=", None, 200, None),
            ("DELETE", "/api/items/7", None, 200, None),
            ("PUT", "/api/empty", b"", 200, None),
            ("PATCH", "/api/binary-in", os.urandom(300_000), 200, None),
            ("GET", "/binary", None, 200, bytes(range(256)) * 1000),
            ("GET", "/empty", None, 200, b""),
            ("POST", "/status/201", b"x", 201, None),
            ("POST", "/status/404", b"x", 404, None),
            ("GET", "/status/500", None, 500, None),
            ("GET", "/status/503", None, 503, None),
            ("GET", "/status/204", None, 204, b""),
            ("HEAD", "/binary", None, 200, b""),
        ]
        for method, path, data, status, expected in cases:
            response, body = yield self.send(a, tap.url, method, path, data=data)
            self.assertEqual(response.code, status, path)
            if expected is not None:
                self.assertEqual(body, expected, path)
            elif path.startswith("/status/"):
                self.assertEqual(json.loads(body), {"status": "as asked"})
            seen = self.upstream.seen[-1]
            self.assertEqual((seen["method"], seen["uri"]), (method.encode(), path.encode()))
            self.assertEqual(seen["size"], len(data or b""))
            if data:
                self.assertEqual(seen["sha256"], hashlib.sha256(data).hexdigest())
            self.assertFalse([n for n, _ in response.headers.getAllRawHeaders()
                              if n.lower().startswith(b"x-mte-")])
        response, body = yield self.send(a, tap.url, "GET", "/cookies")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"),
                         [b"session=s3cr3t; HttpOnly", b"theme=dark"])
        self.assertEqual(len(response.headers.getRawHeaders(b"date")), 1)
        self.assertEqual(len(response.headers.getRawHeaders(b"server")), 1)
        self.assertEqual(len(self.upstream.seen), len(cases) + 2)

        wire = tap.sent() + tap.received()
        self.assertIn(b"/api/mte-pair", wire)  # the tap did see the traffic
        for secret in (b"SECRETPATH", b"QUERYSECRET", b"HEADERSECRET", b"hunter2", b"alice",
                       b"/api/login", b"/api/search", b"x-custom", b"s3cr3t", b"as asked",
                       b"content-type: application/json", TOKEN.encode(), b"x-mte-upstream"):
            self.assertNotIn(secret, wire, f"{secret!r} crossed the wire between A and B")

    @defer.inlineCallbacks
    def test_100mb_streamed_both_ways(self) -> Any:
        a, b = self.start(self.a_env(), self.b_env())
        tap = yield self.tap(b)
        tap.record = False
        response, _ = yield self.send(a, tap.url, "GET", "/warmup")
        before = {"A": a.rss_peak_kib(), "B": b.rss_peak_kib()}
        path = self.mktemp()
        uploaded = write_random_file(path, HUGE)
        started = reactor.seconds()
        with open(path, "rb") as handle:
            response, body = yield self.send(a, tap.url, "POST", "/upload", data=FileBodyProducer(
                handle))
        os.unlink(path)
        self.assertEqual((response.code, json.loads(body)["size"]), (200, HUGE))
        self.assertEqual(self.upstream.seen[-1]["sha256"], uploaded)
        response = yield self.agent.request(
            b"GET", f"{a.url}/download?size={HUGE}".encode(),
            Headers({b"x-mte-outbound-token": [TOKEN.encode()],
                     b"x-mte-upstream": [tap.url.encode()]}))
        self.assertEqual(response.length, HUGE)
        size, downloaded = yield collect_digest(response)
        self.assertEqual(size, HUGE)
        self.assertEqual(downloaded, pattern_digest(HUGE))
        # A chunked upload (length unknown) streams too.
        chunked = FileBodyProducer(io.BytesIO(os.urandom(3 * MB)))
        chunked.length = UNKNOWN_LENGTH
        response, body = yield self.send(a, tap.url, "PUT", "/chunked", data=chunked)
        self.assertEqual(json.loads(body)["size"], 3 * MB)
        self.assertEqual(self.upstream.seen[-1]["headers"].get(b"content-length"), None)
        elapsed = reactor.seconds() - started
        growth = {"A": a.rss_peak_kib() - before["A"], "B": b.rss_peak_kib() - before["B"]}
        print(f"\n100 MB up and down through A and B in {elapsed:.1f} s; "
              f"peak RSS growth A {growth['A']} KiB, B {growth['B']} KiB")
        for name, kib in growth.items():
            self.assertLess(kib, MAX_GROWTH_KIB, f"relay {name} memory grew by {kib} KiB")

    @defer.inlineCallbacks
    def test_application_disconnect_cancels_the_chain(self) -> Any:
        a, b = self.start(self.a_env(), self.b_env())
        tap = yield self.tap(b)
        yield self.send(a, tap.url, "GET", "/warmup")
        sock = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        sock.sendall(("GET /slow HTTP/1.1\r\nHost: relay-a\r\n"
                      f"x-mte-outbound-token: {TOKEN}\r\nx-mte-upstream: {tap.url}\r\n\r\n"
                      ).encode())
        for _ in range(200):
            if self.upstream.held:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(len(self.upstream.held), 1)
        sock.close()
        for _ in range(250):
            if self.upstream.abandoned:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        [outcome] = self.upstream.abandoned
        self.assertIsNotNone(getattr(outcome, "value", None), "upstream request not abandoned")


class RefusalTests(OutboundCase):
    @defer.inlineCallbacks
    def test_documented_statuses(self) -> Any:
        (a,) = self.start(self.a_env())
        closed = f"http://127.0.0.1:{free_port()}"
        tap = yield self.tap(ports=[free_port()])
        cases = [
            (dict(token="wrong-token"), 401, "x-mte-outbound-token is not valid"),
            (dict(token=None), 569, "x-mte-relay header is required"),  # not outbound at all
            (dict(remote=None), 400, "x-mte-upstream header is required"),
            (dict(remote="relay-b.example"), 400, "x-mte-upstream must be an http(s) origin"),
            (dict(remote="http://127.0.0.1:1/api"), 400, "origin only"),
            (dict(remote="http://localhost:8080"), 403, "not in OUTBOUND_UPSTREAMS"),
            (dict(remote="https://127.0.0.1:8443"), 403, "not in OUTBOUND_UPSTREAMS"),
        ]
        for call, status, reason in cases:
            remote = call.get("remote", tap.url)
            response, body = yield self.send(a, remote, "POST", "/api/x", data=b"secret",
                                             token=call.get("token", TOKEN))
            answer = json.loads(body)
            self.assertEqual((response.code, answer["code"]), (status, status), call)
            self.assertIn(reason, answer.get("reason", ""), call)
        absolute = yield defer.ensureDeferred(send_raw(a.port, (
            f"GET {tap.url}/x HTTP/1.1\r\nHost: relay-a\r\nx-mte-outbound-token: {TOKEN}\r\n"
            f"x-mte-upstream: {tap.url}\r\nconnection: close\r\n\r\n").encode()))
        self.assertIn(b" 400 ", absolute.split(b"\r\n", 1)[0])
        self.assertEqual(tap.connections, [], "a refused request reached the remote side")

        started = reactor.seconds()
        response, body = yield self.send(a, closed, "GET", "/x")
        answer = json.loads(body)
        self.assertEqual((response.code, answer["error"]), (502, "Remote relay unreachable"))
        self.assertLess(reactor.seconds() - started, 3)
        self.assertEqual(self.upstream.seen, [])
        # Without OUTBOUND_TOKEN configured, any token is refused the same way.
        (unset,) = self.start(self.a_env(OUTBOUND_TOKEN=""))
        response, body = yield self.send(unset, tap.url, "GET", "/x")
        self.assertEqual((response.code, json.loads(body)["reason"]),
                         (401, "x-mte-outbound-token is not valid"))
        self.assertNotIn("OUTBOUND_UPSTREAMS is not", a.output())
        (open_a,) = self.start(self.a_env(OUTBOUND_UPSTREAMS=""))
        self.assertIn("OUTBOUND_TOKEN is set but OUTBOUND_UPSTREAMS is not", open_a.output())


class ResilienceTests(OutboundCase):
    def batch(self, a: RelayProcess, remote: str, name: str, count: int = 20) -> Any:
        """``count`` concurrent requests (GETs and small POSTs); fires with the answers."""
        calls = []
        for i in range(count):
            if i % 2:
                calls.append(self.send(a, remote, "POST", f"/{name}/{i}", data=b"%d" % i))
            else:
                calls.append(self.send(a, remote, "GET", f"/{name}/{i}?i={i}"))
        return defer.gatherResults(calls, consumeErrors=True)

    def assert_batch(self, answers: list[tuple[Any, bytes]], name: str, count: int = 20) -> None:
        self.assertEqual([r.code for r, _ in answers], [200] * count, [b for _, b in answers])
        uris = Counter(s["uri"].split(b"?")[0] for s in self.upstream.seen
                       if s["uri"].startswith(f"/{name}/".encode()))
        self.assertEqual(uris, Counter({f"/{name}/{i}".encode(): 1 for i in range(count)}))

    @defer.inlineCallbacks
    def test_remote_restart_secret_change_and_outage(self) -> Any:
        port = free_port()
        (a,) = self.start(self.a_env())
        (b,) = self.start(self.b_env(), port=port)
        tap = yield self.tap(b)
        self.assert_batch((yield self.batch(a, tap.url, "one")), "one")

        b.process.kill()  # SIGKILL: the memory store and every pair are gone
        b.process.wait()
        (b,) = self.start(self.b_env(), port=port)
        self.assert_batch((yield self.batch(a, tap.url, "two")), "two")
        self.assertGreaterEqual(a.output().count("paired "), 2)  # re-paired, not restarted

        b.stop()  # a new CLIENT_ID_SECRET: A's client id no longer verifies (566)
        (b,) = self.start(self.b_env(CLIENT_ID_SECRET="rotated-b-secret-0123456789abcdefghij"),
                          port=port)
        self.assert_batch((yield self.batch(a, tap.url, "three")), "three")
        self.assertEqual(a.output().count("validated relay"), 2)

        b.stop()  # down: 502 at once, and A recovers by itself when B is back
        started = reactor.seconds()
        answers = yield self.batch(a, tap.url, "down", count=4)
        self.assertEqual([r.code for r, _ in answers], [502] * 4)
        self.assertLess(reactor.seconds() - started, 3)
        (b,) = self.start(self.b_env(), port=port)
        self.assert_batch((yield self.batch(a, tap.url, "four")), "four")
        self.assertEqual(a.process.poll(), None)

    @defer.inlineCallbacks
    def test_streamed_body_after_a_restart_is_502_naming_the_relay_error(self) -> Any:
        """Bodies above 1 MiB are streamed, so they cannot be retried (documented)."""
        port = free_port()
        (a,) = self.start(self.a_env(MAX_POOL_SIZE="1"))
        (b,) = self.start(self.b_env(), port=port)
        tap = yield self.tap(b)
        yield self.send(a, tap.url, "GET", "/warmup")
        b.stop()
        (b,) = self.start(self.b_env(), port=port)
        response, body = yield self.send(a, tap.url, "POST", "/big", data=os.urandom(2 * MB))
        answer = json.loads(body)
        self.assertEqual((response.code, answer["error"]), (502, "Remote relay error"))
        self.assertIn("560", answer["reason"])
        self.assertEqual([s for s in self.upstream.seen if s["uri"] == b"/big"], [])
        response, body = yield self.send(a, tap.url, "POST", "/big", data=os.urandom(2 * MB))
        self.assertEqual(response.code, 200)


class ReplicaTests(OutboundCase):
    def redis(self) -> RedisServer:
        return started_redis(self)

    @defer.inlineCallbacks
    def test_one_pair_300_concurrent_over_two_b_replicas(self) -> Any:
        redis = self.redis()
        a, b1, b2 = self.start(self.a_env(MAX_POOL_SIZE="1"), self.b_env(REDIS_URL=redis.url),
                               self.b_env(REDIS_URL=redis.url))
        tap = yield self.tap(b1, b2)
        answers = yield defer.gatherResults(
            [self.send(a, tap.url, "POST", f"/api/c/{i}?n={i}", data=b"body %d" % i)
             for i in range(300)], consumeErrors=True)
        self.assertEqual([r.code for r, _ in answers], [200] * 300)
        self.assertEqual([json.loads(body)["uri"] for _, body in answers],
                         [f"/api/c/{i}?n={i}" for i in range(300)])
        self.assertEqual(Counter(s["uri"] for s in self.upstream.seen),
                         Counter({f"/api/c/{i}?n={i}".encode(): 1 for i in range(300)}))
        self.assertGreater(tap.connections.count(b1.port), 0)
        self.assertGreater(tap.connections.count(b2.port), 0)
        self.assertEqual(a.output().count("paired 1 pair(s)"), 1)

    @defer.inlineCallbacks
    def test_two_a_and_two_b_replicas_on_one_redis(self) -> Any:
        redis = self.redis()
        a1, a2, b1, b2 = self.start(
            self.a_env(REDIS_URL=redis.url, REDIS_KEY_PREFIX="a:"),
            self.a_env(REDIS_URL=redis.url, REDIS_KEY_PREFIX="a:"),
            self.b_env(REDIS_URL=redis.url), self.b_env(REDIS_URL=redis.url))
        tap = yield self.tap(b1, b2)
        blob = os.urandom(200_000)
        big = os.urandom(2 * MB)
        kinds: list[tuple[str, str, Any]] = [
            ("GET", "/mix/get/{i}?page={i}", None),
            ("POST", "/mix/json/{i}", "json"),
            ("PUT", "/mix/blob/{i}", blob),
            ("DELETE", "/mix/del/{i}", None),
            ("POST", "/mix/big/{i}", big),
            ("HEAD", "/mix/head/{i}", None),
        ]
        calls: list[Any] = []
        expected: Counter[bytes] = Counter()
        for i in range(120):
            method, template, data = kinds[i % len(kinds)]
            path = template.format(i=i)
            if data == "json":
                data = b'{"n": %d}' % i
            expected[path.encode()] += 1
            calls.append(self.send((a1, a2)[i % 2], tap.url, method, path,
                                   headers={b"x-mte-encode-type": [b"MTE" if i % 4 else b"MKE"]},
                                   data=data))
        answers = yield defer.gatherResults(calls, consumeErrors=True)
        self.assertEqual([r.code for r, _ in answers], [200] * 120)
        self.assertEqual(Counter(s["uri"] for s in self.upstream.seen), expected)
        big_seen = [s for s in self.upstream.seen if s["uri"].startswith(b"/mix/big/")]
        self.assertEqual({s["sha256"] for s in big_seen}, {hashlib.sha256(big).hexdigest()})
        self.assertGreater(tap.connections.count(b1.port), 0)
        self.assertGreater(tap.connections.count(b2.port), 0)
