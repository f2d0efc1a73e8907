"""The encrypted proxy end to end: RelayClient → (wire tap) → real relay process(es) → upstream.

Everything runs over real loopback sockets: the relay is a ``twistd -n
mterelay`` child process, the upstream a Twisted site in this process that
records exactly what it receives, Redis a real ``redis-server``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mterelay.client import RelayClient
from mterelay.protocol.header import RelayHeader
from mterelay.protocol.pairing import start_pairing
from mterelay.protocol.sealing import Direction, MessageCipher
from mterelay.wiretap import WireTap
from tests.helpers.redisserver import started_redis
from tests.helpers.support import SECRET, RelayProcess, collect_digest, free_port, write_random_file
from tests.integration.test_passthrough_integration import _Pattern, pattern_digest

MB = 1024 * 1024
HUGE = 200 * MB
# The relay streams: it holds socket buffers and a few 64 KiB chunks per
# transfer, never the body.  200 MB through it must cost far less than that.
MAX_GROWTH_KIB = 32 * 1024


class RecordingUpstream(Resource):
    """Records each request exactly (bodies hashed past 1 MB) and answers by path."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def render(self, request: Any) -> Any:
        digest, size, kept = hashlib.sha256(), 0, []
        request.content.seek(0)
        while chunk := request.content.read(MB):
            digest.update(chunk)
            size += len(chunk)
            if size <= MB:
                kept.append(chunk)
        self.seen.append({
            "method": request.method,
            "uri": request.uri,
            "headers": {name.lower(): list(values)
                        for name, values in request.requestHeaders.getAllRawHeaders()},
            "body": b"".join(kept) if size <= MB else None,
            "size": size,
            "sha256": digest.hexdigest(),
        })
        path = request.path
        if path.startswith(b"/status/"):
            request.setResponseCode(int(path.rsplit(b"/", 1)[1]))
            request.setHeader(b"content-type", b"application/json")
            return b'{"status":"as asked"}'
        if path == b"/binary":
            request.setHeader(b"content-type", b"application/octet-stream")
            return bytes(range(256)) * 1000
        if path == b"/empty":
            return b""
        if path == b"/cookies":
            request.responseHeaders.addRawHeader(b"set-cookie", b"session=s3cr3t; HttpOnly")
            request.responseHeaders.addRawHeader(b"set-cookie", b"theme=dark")
            return b"cookies set"
        if path == b"/download":
            size = int(request.args[b"size"][0])
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-length", b"%d" % size)
            request.registerProducer(_Pattern(request, size), False)
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"method": request.method.decode(), "uri": request.uri.decode(),
                           "size": size}).encode()


class EncryptedProxyCase(TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = RecordingUpstream()
        site = Site(self.upstream)
        self.upstream_port = yield TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(self.upstream_port.stopListening)

    def start_relay(self, port: int | None = None, **environ: str) -> RelayProcess:
        env = {
            "UPSTREAM": f"http://127.0.0.1:{self.upstream_port.getHost().port}",
            "CLIENT_ID_SECRET": SECRET,
        }
        env.update(environ)
        relay = RelayProcess.start(env, self.mktemp() + ".log", port=port)
        self.addCleanup(lambda: relay.process.poll() is None and relay.stop())
        relay.wait_listening()
        return relay

    def client(self, persistent: bool = True, **options: Any) -> RelayClient:
        pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.addCleanup(pool.closeCachedConnections)
        return RelayClient(reactor, agent=Agent(reactor, pool=pool), **options)

    @defer.inlineCallbacks
    def tap(self, *relays: RelayProcess) -> Any:
        tap = WireTap([relay.port for relay in relays])
        yield defer.ensureDeferred(tap.listen())
        self.addCleanup(tap.port.stopListening)
        return tap


class RoundTripTests(EncryptedProxyCase):
    @defer.inlineCallbacks
    def test_upstream_gets_exactly_the_plain_request(self) -> Any:
        relay = self.start_relay()
        tap = yield self.tap(relay)
        client = self.client()
        body = b'{"user": "alice", "password": "hunter2-PLAINTEXT"}'
        response = yield client.request(
            "POST", tap.url + "/api/login/SECRETPATH?token=QUERYSECRET&x=%2F",
            headers={"content-type": ["application/json"],
                     "authorization": ["Bearer HEADERSECRET"],
                     "x-custom": ["one", "two"]},
            data=body)
        answer = yield treq.json_content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(answer, {"method": "POST", "size": len(body),
                                  "uri": "/api/login/SECRETPATH?token=QUERYSECRET&x=%2F"})
        [seen] = self.upstream.seen
        self.assertEqual(seen["method"], b"POST")
        self.assertEqual(seen["uri"], b"/api/login/SECRETPATH?token=QUERYSECRET&x=%2F")
        self.assertEqual(seen["body"], body)
        self.assertEqual(seen["headers"][b"content-type"], [b"application/json"])
        self.assertEqual(seen["headers"][b"authorization"], [b"Bearer HEADERSECRET"])
        self.assertEqual(seen["headers"][b"x-custom"], [b"one", b"two"])
        self.assertEqual(seen["headers"][b"host"],
                         [f"127.0.0.1:{self.upstream_port.getHost().port}".encode()])
        self.assertFalse([name for name in seen["headers"] if name.startswith(b"x-mte-")])
        # What crossed the wire between client and relay holds none of it.
        wire = tap.sent() + tap.received()
        for secret in (b"SECRETPATH", b"QUERYSECRET", b"HEADERSECRET", b"hunter2",
                       b"/api/login", b"alice", b"x-custom", b"POST\",\"uri"):
            self.assertFalse(secret in wire, f"{secret!r} crossed the wire")
        self.debug_wire = wire

    @defer.inlineCallbacks
    def test_responses_come_back_intact(self) -> Any:
        relay = self.start_relay()
        tap = yield self.tap(relay)
        client = self.client()
        response = yield client.get(tap.url + "/binary")
        self.assertEqual((yield treq.content(response)), bytes(range(256)) * 1000)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/octet-stream"])
        response = yield client.get(tap.url + "/empty")
        self.assertEqual((response.code, (yield treq.content(response))), (200, b""))
        response = yield client.get(tap.url + "/cookies")
        self.assertEqual((yield treq.content(response)), b"cookies set")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"),
                         [b"session=s3cr3t; HttpOnly", b"theme=dark"])
        self.assertFalse(b"s3cr3t" in tap.received(), "a sealed cookie crossed the wire")
        for status in (400, 404, 500, 503):
            response = yield client.post(tap.url + f"/status/{status}", data=b"x")
            self.assertEqual(response.code, status)
            self.assertEqual((yield treq.json_content(response)), {"status": "as asked"})
        response = yield client.request("HEAD", tap.url + "/binary")
        self.assertEqual(response.code, 200)
        self.assertEqual((yield treq.content(response)), b"")
        response = yield client.put(tap.url + "/empty-body", data=b"")
        self.assertEqual(response.code, 200)
        yield treq.content(response)
        self.assertEqual(self.upstream.seen[-1]["method"], b"PUT")
        self.assertEqual(self.upstream.seen[-1]["size"], 0)

    @defer.inlineCallbacks
    def test_captured_request_replayed_is_refused(self) -> Any:
        relay = self.start_relay()
        tap = yield self.tap(relay)
        client = self.client(persistent=False)
        yield client.get(tap.url + "/warmup").addCallback(treq.content)
        tap.clear()
        response = yield client.post(tap.url + "/api/transfer", data=b'{"amount": 100}')
        yield treq.content(response)
        self.assertEqual(response.code, 200)
        captured = tap.sent()
        self.assertEqual(len(self.upstream.seen), 2)
        answer = yield defer.ensureDeferred(send_raw(relay.port, captured))
        self.assertIn(b" 562 ", answer.split(b"\r\n", 1)[0])
        self.assertEqual(len(self.upstream.seen), 2)

    @defer.inlineCallbacks
    def test_500_concurrent_requests_over_5_pairs(self) -> Any:
        relay = self.start_relay()
        client = self.client(pairs=5)
        requests = [client.post(relay.url + f"/api/items/{i}?n={i}", data=b"item %d" % i)
                    .addCallback(treq.json_content) for i in range(500)]
        answers = yield defer.gatherResults(requests, consumeErrors=True)
        self.assertEqual([a["uri"] for a in answers],
                         [f"/api/items/{i}?n={i}" for i in range(500)])
        uris = sorted(seen["uri"] for seen in self.upstream.seen)
        self.assertEqual(uris, sorted(f"/api/items/{i}?n={i}".encode() for i in range(500)))
        self.assertEqual(relay.output().count("paired "), 1)

    @defer.inlineCallbacks
    def test_relay_restart_with_memory_store(self) -> Any:
        port = free_port()
        relay = self.start_relay(port=port)
        client = self.client(pairs=3)
        for i in range(3):
            response = yield client.get(relay.url + f"/before/{i}")
            self.assertEqual(response.code, 200)
            yield treq.content(response)
        relay.stop()
        relay = self.start_relay(port=port)
        responses = yield defer.gatherResults(
            [client.get(relay.url + f"/after/{i}").addCallback(treq.json_content)
             for i in range(20)], consumeErrors=True)
        self.assertEqual(sorted(r["uri"] for r in responses),
                         sorted(f"/after/{i}" for i in range(20)))
        self.assertEqual(sum(1 for s in self.upstream.seen if s["uri"].startswith(b"/after/")),
                         20)


class BadInputTests(EncryptedProxyCase):
    """Hand-made wire requests (protocol core, no RelayClient) against a real relay."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.relay = self.start_relay()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = yield self.http.head(self.relay.url + "/api/mte-relay")
        self.client_id = response.headers.getRawHeaders(b"x-mte-relay")[0].decode()
        pending = start_pairing(self.client_id[:36])
        response = yield self.http.post(self.relay.url + "/api/mte-pair",
                                        headers={"x-mte-relay": [self.client_id]},
                                        data=json.dumps([pending.request_entry()]).encode())
        self.keys = pending.finish((yield treq.json_content(response))[0])
        self.seq = 0

    def wire(self, method: str, target: str, body: bytes | None, mode: str = "MKE",
             sealed_headers: dict[str, list[str]] | None = None,
             chunked: bool = False) -> tuple[bytes, bytes]:
        """(request head, sealed body) of a genuine MKE (or MKR) request.

        ``chunked``: the head announces chunked transfer coding; the caller
        frames the body (see :func:`chunk`).
        """
        header = RelayHeader(self.client_id, self.keys.pair_id, mode, True, True,
                             body is not None, True, self.seq, mode == "MKR")
        self.seq += 1
        cipher = MessageCipher(self.keys, header, Direction.C2S)
        wire_target = "/" + cipher.seal_url(target)
        item = cipher.seal_request_headers(sealed_headers or {}, method, wire_target,
                                           has_body=body is not None)
        sealed = cipher.seal_body(body) if body is not None else b""
        lines = [f"{method} {wire_target} HTTP/1.1", "Host: relay.test",
                 f"x-mte-relay: {header.format()}", f"x-mte-relay-eh: {item}"]
        if body is not None:
            lines.append("content-type: application/octet-stream")
            lines.append("transfer-encoding: chunked" if chunked
                         else f"content-length: {len(sealed)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), sealed

    @defer.inlineCallbacks
    def assert_alive(self) -> Any:
        response = yield self.http.get(self.relay.url + "/api/mte-echo/alive")
        self.assertEqual(response.code, 200)
        yield treq.content(response)
        self.assertIsNone(self.relay.process.poll())

    @defer.inlineCallbacks
    def test_malformed_relay_headers(self) -> Any:
        head, _ = self.wire("GET", "/api/x", None)
        value = [line for line in head.split(b"\r\n") if line.startswith(b"x-mte-relay:")][0]
        cases = [
            ({"x-mte-relay": ["garbage"]}, 568),
            ({"x-mte-relay": ["a" * 300]}, 568),
            ({"x-mte-relay": ["x,y,z,1,1,1,1,0"]}, 566),
            ({"x-mte-relay": [value.split(b": ", 1)[1].decode()]}, 569),  # no -eh
            ({"x-mte-relay": [value.split(b": ", 1)[1].decode()],
              "x-mte-relay-eh": ["bm90LWEtdG9rZW4"]}, 562),  # garbage ciphertext
        ]
        for headers, code in cases:
            response = yield self.http.get(self.relay.url + "/api/x", headers=headers)
            body = yield treq.json_content(response)
            self.assertEqual((response.code, body["code"]), (code, code), headers)
        self.assertEqual(self.upstream.seen, [])
        yield self.assert_alive()

    @defer.inlineCallbacks
    def test_truncated_body_never_completes_upstream(self) -> Any:
        head, sealed = self.wire("POST", "/api/upload", os.urandom(300_000))
        answer = yield defer.ensureDeferred(
            send_raw(self.relay.port, head + sealed[:200_000], close=True))
        self.assertEqual(answer, b"")
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.upstream.seen, [])
        yield self.assert_alive()

    @defer.inlineCallbacks
    def test_empty_body_waits_for_its_final_chunk(self) -> Any:
        # An empty MKE body is one sealed final chunk (16 bytes): the plain
        # request has Content-Length 0, so the upstream would execute it the
        # moment it was forwarded.  It must not be, until that chunk opened.
        head, sealed = self.wire("PUT", "/api/doc", b"")
        self.assertEqual(len(sealed), 16)
        answer = yield defer.ensureDeferred(
            send_raw(self.relay.port, head + sealed[:3], close=True))
        self.assertEqual(answer, b"")
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.upstream.seen, [])
        head, sealed = self.wire("PUT", "/api/doc", b"")
        forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
        answer = yield defer.ensureDeferred(send_raw(self.relay.port, head + forged))
        self.assertIn(b" 562 ", answer.split(b"\r\n", 1)[0])
        self.assertIn(b'"upstreamReached":"no"', answer)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.upstream.seen, [])
        head, sealed = self.wire("PUT", "/api/doc", b"")
        answer = yield defer.ensureDeferred(send_raw(self.relay.port, head + sealed))
        self.assertIn(b" 200 ", answer.split(b"\r\n", 1)[0])
        [seen] = self.upstream.seen
        self.assertEqual((seen["method"], seen["size"]), (b"PUT", 0))
        yield self.assert_alive()

    @defer.inlineCallbacks
    def test_empty_record_body_waits_for_its_final_record(self) -> Any:
        # The same for record framing: by Content-Length (one record) and
        # chunked with a declared plain length of 0 (spec 7.3).
        for chunked in (False, True):
            head, sealed = self.wire("PUT", "/api/doc", b"", mode="MKR", chunked=chunked,
                                     sealed_headers={"x-mte-body-length": ["0"]})
            self.assertEqual(len(sealed), 20)
            forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
            body = chunk(forged) + b"0\r\n\r\n" if chunked else forged
            answer = yield defer.ensureDeferred(send_raw(self.relay.port, head + body))
            self.assertIn(b" 562 ", answer.split(b"\r\n", 1)[0], chunked)
            self.assertIn(b'"upstreamReached":"no"', answer)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.upstream.seen, [])
        head, sealed = self.wire("PUT", "/api/doc", b"", mode="MKR", chunked=True,
                                 sealed_headers={"x-mte-body-length": ["0"]})
        answer = yield defer.ensureDeferred(
            send_raw(self.relay.port, head + chunk(sealed) + b"0\r\n\r\n"))
        self.assertIn(b" 200 ", answer.split(b"\r\n", 1)[0])
        self.assertEqual([seen["size"] for seen in self.upstream.seen], [0])
        yield self.assert_alive()

    @defer.inlineCallbacks
    def test_forged_body_chunk_aborts_upstream(self) -> Any:
        head, sealed = self.wire("POST", "/api/upload", os.urandom(300_000))
        forged = bytearray(sealed)
        forged[150_000] ^= 1  # inside the third chunk: two chunks already streamed
        answer = yield defer.ensureDeferred(send_raw(self.relay.port, head + bytes(forged)))
        self.assertIn(b" 562 ", answer.split(b"\r\n", 1)[0])
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.upstream.seen, [])
        yield self.assert_alive()

    @defer.inlineCallbacks
    def test_oversize_pair_arrays(self) -> Any:
        headers = {"x-mte-relay": [self.client_id]}
        response = yield self.http.post(self.relay.url + "/api/mte-pair", headers=headers,
                                        data=b"[" + b"{}," * 200_000 + b"{}]")
        self.assertEqual(response.code, 413)
        self.assertEqual((yield treq.json_content(response))["field"], "$")
        response = yield self.http.post(self.relay.url + "/api/mte-pair", headers=headers,
                                        data=b"[" + b"{}," * 64 + b"{}]")
        self.assertEqual(response.code, 400)
        self.assertEqual((yield treq.json_content(response))["field"], "$")
        yield self.assert_alive()


def chunk(data: bytes) -> bytes:
    """One chunk of HTTP/1.1 chunked transfer coding."""
    return b"%x\r\n%b\r\n" % (len(data), data)


async def send_raw(port: int, data: bytes, close: bool = False) -> bytes:
    """Send bytes on a fresh connection; return what comes back within a few seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        received = b""
        for _ in range(250):
            await deferLater(reactor, 0.02, lambda: None)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received:
                head, rest = received.split(b"\r\n\r\n", 1)
                lengths = [line for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")]
                if lengths and len(rest) >= int(lengths[0].split(b":")[1]):
                    break
        return received
    finally:
        sock.close()


class ReplicaTests(EncryptedProxyCase):
    @defer.inlineCallbacks
    def test_two_relays_share_pairs_through_redis(self) -> Any:
        redis = started_redis(self)
        relays = [self.start_relay(REDIS_URL=redis.url) for _ in range(2)]
        tap = yield self.tap(*relays)
        client = self.client(persistent=False, pairs=2)
        for i in range(20):
            response = yield client.post(tap.url + f"/api/r/{i}", data=b"%d" % i)
            answer = yield treq.json_content(response)
            self.assertEqual(answer["uri"], f"/api/r/{i}")
        self.assertEqual(len(self.upstream.seen), 20)
        ports = [relay.port for relay in relays]
        self.assertGreaterEqual(tap.connections.count(ports[0]), 10)
        self.assertGreaterEqual(tap.connections.count(ports[1]), 10)
        self.assertEqual(sum(relay.output().count("paired ") for relay in relays), 1)


class LargeBodyTests(EncryptedProxyCase):
    @defer.inlineCallbacks
    def test_200mb_upload_and_download(self) -> Any:
        relay = self.start_relay()
        client = self.client()
        yield client.get(relay.url + "/warmup").addCallback(treq.content)
        before = relay.rss_peak_kib()
        path = self.mktemp()
        uploaded = write_random_file(path, HUGE)
        with open(path, "rb") as handle:
            response = yield client.post(relay.url + "/upload", data=handle)
            answer = yield treq.json_content(response)
        self.assertEqual(answer["size"], HUGE)
        self.assertEqual(self.upstream.seen[-1]["sha256"], uploaded)
        os.unlink(path)
        response = yield client.get(relay.url + f"/download?size={HUGE}")
        size, downloaded = yield collect_digest(response)
        self.assertEqual(size, HUGE)
        self.assertEqual(downloaded, pattern_digest(HUGE))
        growth = relay.rss_peak_kib() - before
        self.assertLess(growth, MAX_GROWTH_KIB, f"relay memory grew by {growth} KiB")
