"""Pass-through against a real upstream on loopback, through a real relay process."""

from __future__ import annotations

import hashlib
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.helpers.support import SECRET, RelayProcess, collect_digest, free_port, write_random_file

MB = 1024 * 1024
BIG = 50 * MB
# A streaming relay holds a few socket buffers per transfer, not the body.
MAX_GROWTH_KIB = 24 * 1024


class StreamingUpstream(Resource):
    """Hashes uploads in chunks, produces downloads lazily, can stall."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.uploads: list[tuple[int, str]] = []
        self.seen: list[Any] = []
        self.stalled: list[Any] = []

    def render(self, request: Any) -> Any:
        self.seen.append(request)
        if request.path == b"/pt/upload":
            digest, size = hashlib.sha256(), 0
            while chunk := request.content.read(MB):
                digest.update(chunk)
                size += len(chunk)
            self.uploads.append((size, digest.hexdigest()))
            return b"%d" % size
        if request.path == b"/pt/download":
            size = int(request.args[b"size"][0])
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-length", b"%d" % size)
            request.registerProducer(_Pattern(request, size), False)
            return NOT_DONE_YET
        if request.path == b"/pt/slow":
            self.stalled.append(request)
            request.notifyFinish().addErrback(lambda _: None)
            return NOT_DONE_YET
        request.setResponseCode(201)
        request.responseHeaders.addRawHeader(b"set-cookie", b"a=1")
        request.responseHeaders.addRawHeader(b"set-cookie", b"b=2")
        return request.method + b" " + request.uri


class _Pattern:
    """A pull producer of ``size`` bytes of a repeating pattern (back-pressure for free)."""

    CHUNK = bytes(range(256)) * 256  # 64 KiB

    def __init__(self, request: Any, size: int) -> None:
        self.request, self.left = request, size

    def resumeProducing(self) -> None:
        if self.left > 0:
            piece = self.CHUNK[: min(len(self.CHUNK), self.left)]
            self.left -= len(piece)
            self.request.write(piece)
        if self.left == 0:
            self.left = -1
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.left = -1


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(_Pattern.CHUNK))
    for _ in range(full):
        digest.update(_Pattern.CHUNK)
    digest.update(_Pattern.CHUNK[:rest])
    return digest.hexdigest()


class PassThroughIntegrationTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = StreamingUpstream()
        self.upstream_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(self.upstream)
        )
        self.addCleanup(self.upstream_port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def start_relay(self, **environ: str) -> RelayProcess:
        env = {
            "UPSTREAM": f"http://127.0.0.1:{self.upstream_port.getHost().port}",
            "CLIENT_ID_SECRET": SECRET,
            "PASS_THROUGH_ROUTES": "/pt/*",
        }
        env.update(environ)
        relay = RelayProcess.start(env, self.mktemp() + ".log")
        self.addCleanup(relay.stop)
        relay.wait_listening()
        return relay

    @defer.inlineCallbacks
    def test_round_trip_over_sockets(self) -> Any:
        relay = self.start_relay()
        response = yield self.http.post(relay.url + "/pt/echo?x=1&y=%2F", data=b"hi")
        body = yield treq.content(response)
        self.assertEqual(response.code, 201)
        self.assertEqual(body, b"POST /pt/echo?x=1&y=%2F")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
        [seen] = self.upstream.seen
        self.assertEqual(seen.getHeader(b"host"), f"127.0.0.1:{self.upstream_port.getHost().port}".encode())
        self.assertEqual(seen.getHeader(b"x-forwarded-for"), b"127.0.0.1")

    @defer.inlineCallbacks
    def test_upload_streams_50mb(self) -> Any:
        relay = self.start_relay()
        yield self.http.get(relay.url + "/pt/echo").addCallback(treq.content)
        before = relay.rss_peak_kib()
        path = self.mktemp()
        uploaded = write_random_file(path, BIG)
        with open(path, "rb") as handle:
            response = yield self.http.post(relay.url + "/pt/upload", data=FileBodyProducer(handle))
            body = yield treq.content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"%d" % BIG)
        self.assertEqual(self.upstream.uploads, [(BIG, uploaded)])
        growth = relay.rss_peak_kib() - before
        self.assertLess(growth, MAX_GROWTH_KIB, f"relay memory grew by {growth} KiB")

    @defer.inlineCallbacks
    def test_download_streams_50mb(self) -> Any:
        relay = self.start_relay()
        yield self.http.get(relay.url + "/pt/echo").addCallback(treq.content)
        before = relay.rss_peak_kib()
        response = yield self.http.get(relay.url + f"/pt/download?size={BIG}", unbuffered=True)
        size, downloaded = yield collect_digest(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(size, BIG)
        self.assertEqual(downloaded, pattern_digest(BIG))
        growth = relay.rss_peak_kib() - before
        self.assertLess(growth, MAX_GROWTH_KIB, f"relay memory grew by {growth} KiB")

    @defer.inlineCallbacks
    def test_upstream_down_is_502(self) -> Any:
        relay = self.start_relay(UPSTREAM=f"http://127.0.0.1:{free_port()}")
        response = yield self.http.get(relay.url + "/pt/x")
        body = yield treq.json_content(response)
        self.assertEqual(response.code, 502)
        self.assertEqual((body["error"], body["code"]), ("Upstream unreachable", 502))
        # The connection was refused: nothing was sent, and the answer says so.
        self.assertEqual(body["upstreamReached"], "no")
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [b"no"])

    @defer.inlineCallbacks
    def test_slow_upstream_is_504(self) -> Any:
        relay = self.start_relay(UPSTREAM_TIMEOUT="0.5")
        response = yield self.http.get(relay.url + "/pt/slow")
        body = yield treq.json_content(response)
        self.assertEqual(response.code, 504)
        self.assertEqual((body["error"], body["code"], body["upstreamReached"]),
                         ("Upstream timed out", 504, "maybe"))
        self.assertEqual(len(self.upstream.stalled), 1)
        # The relay gave up on the upstream connection: the upstream sees it go.
        for _ in range(100):
            if self.upstream.stalled[0]._disconnected:
                break
            yield deferLater(0.02)
        self.assertTrue(self.upstream.stalled[0]._disconnected)


def deferLater(seconds: float) -> Any:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
