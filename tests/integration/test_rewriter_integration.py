"""Header integrity both ways, with an on-path rewriter between the relays (real sockets).

application → relay A → rewriter → relay B → upstream, and RelayClient →
rewriter → relay B → upstream.  The relays are in-process RelaySites on
127.0.0.1, the upstream a recording twisted.web site, the rewriter
(:mod:`tests.helpers.rewriter`) a real HTTP proxy that adds and changes clear
headers: what an on-path attacker can do to everything that is not sealed.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from mterelay.http.bodies import BytesProducer
from mterelay.client import RelayClient
from tests.helpers.rewriter import RewiredRelays, add
from tests.helpers.support import RecordingUpstream, relay_config

TOKEN = "rewriter-test-token-0123456789"


class RewriterCase(RewiredRelays, TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = RecordingUpstream()
        self.upstream.headers = [(b"content-type", b"application/json"),
                                 (b"set-cookie", b"session=upstream"), (b"etag", b'"v1"'),
                                 (b"x-secret", b"upstream-only")]
        yield defer.ensureDeferred(self.rewire(Site(self.upstream)))

    def client(self, **options: Any) -> RelayClient:
        client = RelayClient(reactor, **options)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def through_relay_a(self, method: bytes, path: bytes, headers: dict[bytes, list[bytes]],
                        body: bytes | None = None) -> Any:
        """The application's plain request to an in-process relay A; (response, body)."""
        a = yield self.listen(self.relay_site(relay_config(
            OUTBOUND_TOKEN=TOKEN, OUTBOUND_UPSTREAMS="http://127.0.0.1:*"), self.agent()))
        sent = Headers(headers)
        sent.setRawHeaders(b"x-mte-outbound-token", [TOKEN.encode()])
        sent.setRawHeaders(b"x-mte-upstream", [self.rewriter.url.encode()])
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield Agent(reactor, pool=pool).request(
            method, b"http://127.0.0.1:%d%s" % (a, path), sent,
            None if body is None else BytesProducer(body))
        content = yield readBody(response)
        return response, content


class RequestHeaderTests(RewriterCase):
    @defer.inlineCallbacks
    def test_on_path_connection_header_cannot_strip_sealed_headers(self) -> Any:
        # Failed before the fix: relay B applied the clear Connection header's
        # nominations to the sealed headers and dropped both.
        self.rewriter.request_edits.append(add(b"connection", b"authorization, x-api-key"))
        client = self.client()
        response = yield client.get(self.rewriter.url + "/api/items", headers={
            "authorization": ["Bearer sealed"], "x-api-key": ["k-123"]})
        yield treq.content(response)
        self.assertEqual(response.code, 200)
        seen = self.upstream.received[-1].headers
        self.assertEqual(seen.get(b"authorization"), [b"Bearer sealed"])
        self.assertEqual(seen.get(b"x-api-key"), [b"k-123"])
        # It did travel to B: the rewriter really added it.
        self.assertTrue(self.rewriter.requests[-1][2].hasHeader(b"connection"))

    @defer.inlineCallbacks
    def test_through_relay_a(self) -> Any:
        self.rewriter.request_edits.append(add(b"connection", b"authorization"))
        response, body = yield self.through_relay_a(
            b"POST", b"/api/login", {b"authorization": [b"Bearer app"],
                                     b"content-type": [b"application/json"]}, b"{}")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.upstream.received[-1].headers.get(b"authorization"),
                         [b"Bearer app"])


class ResponseHeaderTests(RewriterCase):
    def inject(self) -> None:
        self.rewriter.response_edits.append(add(b"set-cookie", b"evil=1"))
        self.rewriter.response_edits.append(add(b"x-injected", b"1"))

    @defer.inlineCallbacks
    def test_injected_response_headers_do_not_reach_relay_client_callers(self) -> Any:
        # Failed before the fix: the clear Set-Cookie was merged into the
        # decrypted answer as if the upstream had sent it.
        self.inject()
        client = self.client()
        response = yield client.get(self.rewriter.url + "/api/items")
        yield treq.content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"session=upstream"])
        self.assertIsNone(response.headers.getRawHeaders(b"x-injected"))
        self.assertEqual(response.clear_headers.getRawHeaders(b"set-cookie"), [b"evil=1"])

    @defer.inlineCallbacks
    def test_injected_response_headers_do_not_reach_the_application(self) -> Any:
        self.inject()
        response, body = yield self.through_relay_a(b"GET", b"/api/items", {})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"session=upstream"])
        self.assertIsNone(response.headers.getRawHeaders(b"x-injected"))
        self.assertEqual(response.headers.getRawHeaders(b"x-secret"), [b"upstream-only"])

    @defer.inlineCallbacks
    def test_clear_selection_cannot_downgrade_a_sealed_request(self) -> Any:
        # Failed before the fix: relay B took the clear x-mte-response-headers
        # added on the way and sent the upstream's headers in clear.
        self.rewriter.request_edits.append(add(b"x-mte-response-headers", b"content-type"))
        client = self.client()
        response = yield client.get(self.rewriter.url + "/api/items")
        yield treq.content(response)
        self.assertEqual(response.headers.getRawHeaders(b"x-secret"), [b"upstream-only"])
        _, on_the_wire = self.rewriter.responses[-1]
        self.assertIsNone(on_the_wire.getRawHeaders(b"x-secret"))
        self.assertIsNone(on_the_wire.getRawHeaders(b"set-cookie"))

    @defer.inlineCallbacks
    def test_clear_headers_asked_for_pass_but_never_over_sealed_ones(self) -> Any:
        # seal_headers="none" with response_headers: the selection travels in
        # clear; it was a 500 with a critical traceback before the fix.
        self.rewriter.response_edits.append(add(b"etag", b'"forged"'))
        client = self.client(seal_headers="none", response_headers=["etag"])
        response = yield client.get(self.rewriter.url + "/api/items")
        yield treq.content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"v1"'])
        # Asked for in clear: passed, unauthenticated.
        self.assertEqual(response.headers.getRawHeaders(b"x-secret"), [b"upstream-only"])
        self.assertEqual(self.flushLoggedErrors(), [])
