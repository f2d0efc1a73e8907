"""PASS_THROUGH_ROUTES in memory: what reaches the upstream, what comes back, the timeout."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.support import MemoryRelay


class PassThroughMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build(
            PASS_THROUGH_ROUTES="/pt/*", HEADERS='{"x-added": "yes"}', UPSTREAM="http://up.test/base"
        )

    def test_request_forwarded_faithfully(self) -> None:
        response, body = self.relay.call(
            "PUT",
            "/pt/items/7?a=1&b=%20x",
            headers={
                b"host": [b"relay.example.com"],
                b"x-custom": [b"one", b"two"],
                b"connection": [b"keep-alive, x-hop"],
                b"x-hop": [b"drop me"],
                b"keep-alive": [b"timeout=5"],
                b"te": [b"trailers"],
                b"proxy-authorization": [b"Basic Zm9vOmJhcg=="],
                b"x-forwarded-for": [b"10.0.0.1"],
                b"content-type": [b"application/octet-stream"],
            },
            data=b"\x00\x01binary\xff",
        )
        self.assertEqual(response.code, 200)
        [seen] = self.relay.upstream.received
        self.assertEqual(seen.method, b"PUT")
        self.assertEqual(seen.uri, b"/base/pt/items/7?a=1&b=%20x")
        self.assertEqual(seen.body, b"\x00\x01binary\xff")
        self.assertEqual(seen.headers[b"x-custom"], [b"one", b"two"])
        self.assertEqual(seen.headers[b"host"], [b"up.test"])
        self.assertEqual(seen.headers[b"x-forwarded-host"], [b"relay.example.com"])
        self.assertEqual(seen.headers[b"x-forwarded-proto"], [b"http"])
        self.assertTrue(seen.headers[b"x-forwarded-for"][0].startswith(b"10.0.0.1, "))
        self.assertEqual(seen.headers[b"x-added"], [b"yes"])
        self.assertEqual(seen.headers[b"content-type"], [b"application/octet-stream"])
        for hop in (b"x-hop", b"keep-alive", b"te", b"proxy-authorization"):
            self.assertNotIn(hop, seen.headers)

    def test_response_passed_back(self) -> None:
        up = self.relay.upstream
        up.status = 418
        up.headers = [
            (b"set-cookie", b"a=1; Path=/"),
            (b"set-cookie", b"b=2; HttpOnly"),
            (b"x-up", b"v"),
            (b"keep-alive", b"timeout=5"),
            (b"content-type", b"text/plain"),
        ]
        up.body = b"I'm a teapot"
        response, body = self.relay.call("GET", "/pt/x")
        self.assertEqual(response.code, 418)
        self.assertEqual(body, b"I'm a teapot")
        h = response.headers
        self.assertEqual(h.getRawHeaders(b"set-cookie"), [b"a=1; Path=/", b"b=2; HttpOnly"])
        self.assertEqual(h.getRawHeaders(b"x-up"), [b"v"])
        self.assertIsNone(h.getRawHeaders(b"keep-alive"))
        self.assertEqual(response.length, 12)  # sent as Content-Length, not chunked
        self.assertEqual(h.getRawHeaders(b"x-added"), [b"yes"])

    def test_empty_body_methods(self) -> None:
        response, body = self.relay.call("GET", "/pt/x")
        self.assertEqual(self.relay.upstream.received[0].body, b"")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b'{"ok":true}')

    def test_upstream_timeout_is_504(self) -> None:
        self.relay.upstream.hold = True
        responses: list = []
        self.relay.client.get("http://relay.test/pt/slow").addCallback(responses.append)
        self.relay.flush()
        self.assertEqual(responses, [])
        self.relay.clock.advance(self.relay.config.upstream_timeout + 0.1)
        self.relay.flush()
        [response] = responses
        self.assertEqual(response.code, 504)
        bodies: list = []
        self.relay.client.json_content(response).addCallback(bodies.append)
        self.relay.flush()
        self.assertEqual(bodies, [{"error": "Upstream timed out", "code": 504,
                                   "reason": "no answer within 30 s",
                                   "upstreamReached": "maybe"}])
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [b"maybe"])
