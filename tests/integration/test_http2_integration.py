"""HTTP/2 on a TLS listener: a real ``twistd mterelay`` (LISTEN=ssl:...), a real upstream,
an h2 client over TLS with ALPN.

Before HTTP/2 support: a sealed body without Content-Length was 562 (the
relay decided "has a body" the HTTP/1.1 way), SIGTERM crashed the drain
(``'H2Connection' object has no attribute 'loseConnection'``), and the header
deadline of the replaced HTTP/1.1 channel cut every h2 connection
``HEADER_TIMEOUT`` seconds after it opened.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mterelay.client.messages import SealOptions, open_response, seal_request
from mterelay.protocol.pairing import start_pairing
from tests.helpers.h2support import H2Client, write_self_signed, ssl_listen
from tests.helpers.support import RelayProcess, free_port


class Upstream(Resource):
    """``/sum``: SHA-256 and size of the body; ``/stream``: 3 pieces 0.4 s apart;
    ``/slow``: answers after 1.5 s."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, int]] = []

    def render(self, request: Any) -> Any:
        body = request.content.read()
        self.seen.append((request.method, request.uri, len(body)))
        request.setHeader(b"content-type", b"application/json")
        if b"stream" in request.path:
            pieces = [b"one\n", b"two\n", b"three\n"]

            def piece() -> None:
                if request._disconnected:
                    return
                request.write(pieces.pop(0))
                if pieces:
                    reactor.callLater(0.4, piece)
                else:
                    request.finish()

            piece()
            return NOT_DONE_YET
        answer = json.dumps({"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                             "uri": request.uri.decode()}).encode()
        if b"slow" in request.path:
            def later() -> None:
                if not request._disconnected:
                    request.write(answer)
                    request.finish()
            reactor.callLater(1.5, later)
            return NOT_DONE_YET
        return answer


class H2Case(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = Upstream()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(self.upstream))
        self.addCleanup(port.stopListening)
        self.upstream_url = f"http://127.0.0.1:{port.getHost().port}"
        self.key, self.cert = write_self_signed(self.mktemp())

    def start_relay(self, **environ: str) -> RelayProcess:
        port = free_port()
        env = {"UPSTREAM": self.upstream_url, "CLIENT_ID_SECRET": "h2-test-secret-" + "x" * 32,
               "LISTEN": ssl_listen(port, self.key, self.cert), "PASS_THROUGH_ROUTES": "/plain/*"}
        env.update(environ)
        relay = RelayProcess.start(env, self.mktemp() + ".log", port=port)
        self.addCleanup(lambda: relay.stop() if relay.process.poll() is None else None)
        deadline = time.monotonic() + 20
        while True:
            try:
                client = H2Client(port, timeout=2)
                client.close()
                return relay
            except OSError:
                if relay.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"relay did not listen:\n{relay.output()}")
                time.sleep(0.1)

    def in_thread(self, function: Any, *args: Any) -> "defer.Deferred[Any]":
        return threads.deferToThread(function, *args)


def pair(client: H2Client) -> tuple[str, Any]:
    head = client.request("HEAD", "/api/mte-relay")
    assert head.status == 200, head
    client_id = head.header("x-mte-relay")
    pending = start_pairing(client_id[:36])
    answer = client.request("POST", "/api/mte-pair",
                            [("x-mte-relay", client_id), ("content-type", "application/json")],
                            json.dumps([pending.request_entry()]).encode())
    assert answer.status == 200, answer
    return client_id, pending.finish(json.loads(answer.body)[0])


def sealed_exchange(client: H2Client, client_id: str, keys: Any, seq: int, method: str,
                    target: str, body: bytes | None, *, fixed_path: bool = True,
                    content_length: bool = False) -> tuple[int, bytes, Any]:
    """One encrypted request over h2; the body (MKE) is streamed without Content-Length."""
    out = seal_request(keys, client_id, seq, method, target, [], has_body=body is not None,
                       options=SealOptions.build(framing="MKE"),
                       fixed_path="/api/mte-relay/request" if fixed_path else None)
    headers = [(name, value) for name, value in out.headers]
    sealed = out.cipher.seal_body(body) if body is not None else None
    if sealed is not None and content_length:
        headers.append(("content-length", str(len(sealed))))
    stream = client.start(method, out.target, headers, end_stream=sealed is None)
    if sealed is not None:
        client.send_data(stream, sealed, end_stream=True)
    response = client.wait(stream)
    if response.header("x-mte-relay") is None:
        return response.status, response.body, None
    wire = [(k, v) for k, v in response.headers if not k.startswith(":")]
    opened = open_response(keys, out.header, response.status, wire)
    plain = opened.cipher.open_body(response.body) if opened.body_enc else b""
    return response.status, plain, opened


class Http2Tests(H2Case):
    @defer.inlineCallbacks
    def test_alpn_get_and_post_without_content_length(self) -> Any:
        relay = self.start_relay()

        def scenario(port: int) -> Any:
            client = H2Client(port)
            try:
                assert client.alpn == "h2", client.alpn
                echo = client.request("GET", "/api/mte-echo/h2")
                client_id, keys = pair(client)
                get = sealed_exchange(client, client_id, keys, 0, "GET", "/api/get?x=1", None)
                body = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, 17 MKE chunks
                post = sealed_exchange(client, client_id, keys, 1, "POST", "/api/up", body)
                with_length = sealed_exchange(client, client_id, keys, 2, "PUT", "/api/up2",
                                              b"small", content_length=True, fixed_path=False)
                plain = client.request("POST", "/plain/x", [], b"clear body, no length")
                return echo, get, post, with_length, plain, hashlib.sha256(body).hexdigest()
            finally:
                client.close()

        echo, get, post, with_length, plain, digest = yield self.in_thread(scenario, relay.port)
        self.assertEqual(echo.status, 200)
        self.assertEqual(json.loads(echo.body)["echo"], "h2")
        self.assertEqual(get[0], 200, get[1])
        self.assertEqual(json.loads(get[1])["uri"], "/api/get?x=1")
        self.assertEqual(post[0], 200, post[1])
        self.assertEqual(json.loads(post[1])["sha256"], digest)
        self.assertEqual(with_length[0], 200, with_length[1])
        self.assertEqual(json.loads(with_length[1])["size"], 5)
        self.assertEqual(plain.status, 200)
        self.assertEqual(json.loads(plain.body)["size"], len(b"clear body, no length"))

    @defer.inlineCallbacks
    def test_streamed_response(self) -> Any:
        """The first piece reaches the h2 client long before the upstream's last."""
        relay = self.start_relay()

        def scenario(port: int) -> Any:
            client = H2Client(port)
            try:
                client_id, keys = pair(client)
                sealed = sealed_exchange(client, client_id, keys, 0, "GET", "/api/stream", None)
                stream = client.start("GET", "/plain/stream")
                plain = client.wait(stream)
                return sealed, plain
            finally:
                client.close()

        sealed, plain = yield self.in_thread(scenario, relay.port)
        self.assertEqual((sealed[0], sealed[1]), (200, b"one\ntwo\nthree\n"))
        self.assertEqual(sealed[2].header.mode, "MKE")
        self.assertEqual((plain.status, plain.body), (200, b"one\ntwo\nthree\n"))
        # 0.8 s between the upstream's first and last piece.
        self.assertLess(plain.first_data, plain.ended - 0.5, plain)

    @defer.inlineCallbacks
    def test_connection_outlives_header_timeout(self) -> Any:
        """The replaced HTTP/1.1 channel's header deadline must not cut the h2 connection."""
        relay = self.start_relay(HEADER_TIMEOUT="1")

        def scenario(port: int) -> Any:
            client = H2Client(port)
            try:
                first = client.request("GET", "/api/mte-echo/a")
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline and not client.closed:
                    client.pump(0.2)
                    client.conn.ping(b"12345678")  # keep Twisted's idle timer fed
                    client._flush()
                second = client.request("GET", "/api/mte-echo/b")
                return first, second
            finally:
                client.close()

        first, second = yield self.in_thread(scenario, relay.port)
        self.assertEqual((first.status, second.status), (200, 200))

    @defer.inlineCallbacks
    def test_sigterm_drains_h2_streams(self) -> Any:
        relay = self.start_relay(SHUTDOWN_GRACE="10")

        def scenario(port: int) -> Any:
            client = H2Client(port)
            try:
                client_id, keys = pair(client)
                streams = [client.start("GET", f"/plain/slow/{n}") for n in range(3)]
                deadline = time.monotonic() + 10
                while len(self.upstream.seen) < 3 and time.monotonic() < deadline:
                    client.pump(0.05)
                relay.process.send_signal(signal.SIGTERM)
                answers = [client.wait(stream) for stream in streams]
                while not client.closed and time.monotonic() < deadline + 10:
                    client.pump(0.1)
                return answers, client.goaway, client.closed
            finally:
                client.close()

        answers, goaway, closed = yield self.in_thread(scenario, relay.port)
        self.assertEqual([a.status for a in answers], [200, 200, 200])
        self.assertTrue(all(json.loads(a.body)["uri"].startswith("/plain/slow/") for a in answers))
        self.assertIsNotNone(goaway, "the drain says GOAWAY")
        self.assertTrue(closed)
        code = yield self.in_thread(relay.process.wait, 20)
        output = relay.output()
        self.assertEqual(code, 0, output)
        self.assertNotIn("Draining failed", output)
        self.assertNotIn("Traceback", output)
        self.assertIn("Drained: 3 in-flight request(s) completed", output)

    @defer.inlineCallbacks
    def test_closed_h2_connections_are_not_counted(self) -> Any:
        """A connection the h2 client closes leaves the open-connection count.

        Before: RelaySite's close hook sat on the HTTP/1.1 channel HTTP/2 had
        replaced, so every h2 connection stayed counted (and held the drain).
        """
        from tests.integration.test_operations_integration import scrape

        metrics_port = free_port()
        relay = self.start_relay(METRICS_PORT=str(metrics_port))

        def scenario(port: int) -> Any:
            import urllib.request

            for _ in range(3):
                client = H2Client(port)
                assert client.request("GET", "/api/mte-echo/x").status == 200
                client.close()
            deadline = time.monotonic() + 10
            while True:
                text = urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
                count = scrape(text, "mterelay_open_connections")
                if count == 0 or time.monotonic() > deadline:
                    return count
                time.sleep(0.1)

        count = yield self.in_thread(scenario, relay.port)
        self.assertEqual(count, 0)


class _RawUpstream(Protocol):
    """Notes when the first bytes of a request arrive; answers once its chunked body ends."""

    def connectionMade(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory  # type: ignore[attr-defined]
        if not self.data:
            factory.first_bytes.append(time.monotonic())
        self.data += data
        if self.data.endswith(b"0\r\n\r\n"):
            head, _, body = self.data.partition(b"\r\n\r\n")
            factory.requests.append((head, body))
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                                 b"connection: close\r\n\r\nok")
            self.transport.loseConnection()


class Http2UploadStreamingTests(H2Case):
    @defer.inlineCallbacks
    def test_request_body_streams_to_the_upstream(self) -> Any:
        """The upstream gets the first bytes while the h2 client still holds back the rest."""
        factory = Factory.forProtocol(_RawUpstream)
        factory.first_bytes, factory.requests = [], []  # type: ignore[attr-defined]
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.upstream_url = f"http://127.0.0.1:{port.getHost().port}"
        relay = self.start_relay()

        def scenario(relay_port: int) -> Any:
            client = H2Client(relay_port)
            try:
                stream = client.start("POST", "/plain/upload", [], end_stream=False)
                client.send_data(stream, b"a" * 100_000)
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    client.pump(0.1)
                second = time.monotonic()
                client.send_data(stream, b"b" * 100_000, end_stream=True)
                return second, client.wait(stream)
            finally:
                client.close()

        second, response = yield self.in_thread(scenario, relay.port)
        self.assertEqual((response.status, response.body), (200, b"ok"))
        [(head, body)] = factory.requests  # type: ignore[attr-defined]
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        self.assertEqual(body.count(b"a") + body.count(b"b") >= 200_000, True)
        # Streamed: the upstream saw the request before the second half was sent.
        self.assertLess(factory.first_bytes[0], second)  # type: ignore[attr-defined]
