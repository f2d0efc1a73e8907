"""The Resource tree, driven in memory with treq.testing (no sockets, a fake clock)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.web.echo import iso_timestamp
from mterelay.web.paths import path_problem
from tests.helpers.support import MemoryRelay, json_of


class EchoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build()
        self.relay.clock.advance(1_795_000_000.25)

    def test_path_form(self) -> None:
        response, body = self.relay.call("GET", "/api/mte-echo/test")
        self.assertEqual(response.code, 200)
        self.assertEqual(json_of(body), {"echo": "test", "time": "2026-11-18T11:06:40.250Z"})
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )

    def test_path_form_is_unquoted(self) -> None:
        _, body = self.relay.call("GET", "/api/mte-echo/hello%20w%C3%B6rld")
        self.assertEqual(json_of(body)["echo"], "hello w\u00f6rld")

    def test_query_form(self) -> None:
        _, body = self.relay.call("GET", "/api/mte-echo?msg=test")
        self.assertEqual(json_of(body), {"message": "test", "timestamp": "2026-11-18T11:06:40.250Z"})

    def test_bare_form(self) -> None:
        _, body = self.relay.call("GET", "/api/mte-echo")
        self.assertEqual(json_of(body)["message"], "")

    def test_wrong_method(self) -> None:
        response, body = self.relay.call("POST", "/api/mte-echo/x", data=b"x")
        self.assertEqual(response.code, 405)
        self.assertEqual(json_of(body)["code"], 405)
        self.assertEqual(self.relay.upstream.received, [])

    def test_not_utf8(self) -> None:
        response, body = self.relay.call("GET", "/api/mte-echo/%ff")
        self.assertEqual(response.code, 400)
        self.assertIn("UTF-8", json_of(body)["reason"])

    def test_timestamp_format(self) -> None:
        self.assertEqual(iso_timestamp(0), "1970-01-01T00:00:00.000Z")


class RoutingTests(SynchronousTestCase):
    def test_mte_route_without_header_is_569(self) -> None:
        relay = MemoryRelay.build()
        response, body = relay.call("POST", "/api/login", data=b"{}")
        self.assertEqual(response.code, 569)
        self.assertEqual(json_of(body), {"error": "Missing required header.", "code": 569,
                                         "reason": "x-mte-relay header is required",
                                         "upstreamReached": "no"})
        self.assertEqual(relay.upstream.received, [])

    def test_not_in_mte_routes_is_404(self) -> None:
        relay = MemoryRelay.build(MTE_ROUTES="/api/v1/*", PASS_THROUGH_ROUTES="/health")
        response, body = relay.call("GET", "/other")
        self.assertEqual(response.code, 404)
        self.assertEqual(json_of(body)["code"], 404)
        response, _ = relay.call("GET", "/api/v1/users")
        self.assertEqual(response.code, 569)
        response, _ = relay.call("GET", "/health")
        self.assertEqual(response.code, 200)
        response, _ = relay.call("GET", "/api/mte-echo/x")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(relay.upstream.received), 1)

    def test_dot_segments_refused(self) -> None:
        relay = MemoryRelay.build(PASS_THROUGH_ROUTES="/assets/*")
        for path in ("/assets/../admin", "/assets/%2e%2e/admin", "/assets/%2E%2E%2Fadmin",
                     "/assets/./x"):
            response, body = relay.call("GET", path)
            self.assertEqual(response.code, 400, path)
            self.assertIn("segments", json_of(body)["reason"])
        self.assertEqual(relay.upstream.received, [])

    def test_path_problem(self) -> None:
        self.assertIsNone(path_problem(b"/a/b.c/..d"))
        self.assertIsNotNone(path_problem(b"/a/%00"))
        self.assertIsNotNone(path_problem(b"/a\\b"))

    def test_headers_added_to_responses(self) -> None:
        relay = MemoryRelay.build(HEADERS='{"x-service-name": "relay"}')
        for path in ("/api/mte-echo/x", "/nope"):
            response, _ = relay.call("GET", path)
            self.assertEqual(response.headers.getRawHeaders(b"x-service-name"), [b"relay"])


class CorsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build(
            CORS_ORIGINS="https://app.example.com", PASS_THROUGH_ROUTES="/pt",
            CORS_METHODS="GET,POST",
        )

    def preflight(self, origin: bytes, method: bytes = b"POST", headers: bytes = b"content-type"):
        return self.relay.call(
            "OPTIONS",
            "/api/anything",
            headers={
                b"origin": [origin],
                b"access-control-request-method": [method],
                b"access-control-request-headers": [headers],
            },
        )

    def test_preflight_allowed(self) -> None:
        response, body = self.preflight(b"https://app.example.com")
        self.assertEqual(response.code, 204)
        h = response.headers
        self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [b"https://app.example.com"])
        self.assertEqual(h.getRawHeaders(b"access-control-allow-credentials"), [b"true"])
        self.assertEqual(h.getRawHeaders(b"access-control-allow-methods"), [b"GET, POST, OPTIONS, HEAD"])
        self.assertEqual(h.getRawHeaders(b"access-control-allow-headers"),
                         [b"x-mte-relay, x-mte-relay-eh, x-mte-relay-url, content-type,"
                          b" x-mte-response-headers, x-request-id"])
        self.assertEqual(h.getRawHeaders(b"access-control-max-age"), [b"600"])
        self.assertIn(b"x-mte-relay-eh", h.getRawHeaders(b"access-control-expose-headers")[0])
        self.assertEqual(self.relay.upstream.received, [])

    def test_preflight_origin_refused(self) -> None:
        response, body = self.preflight(b"https://evil.example.com")
        self.assertEqual(response.code, 403)
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))
        self.assertIn("CORS_ORIGINS", json_of(body)["reason"])

    def test_preflight_method_refused(self) -> None:
        response, body = self.preflight(b"https://app.example.com", method=b"DELETE")
        self.assertEqual(response.code, 403)
        self.assertIn("CORS_METHODS", json_of(body)["reason"])

    def test_preflight_bad_headers(self) -> None:
        response, _ = self.preflight(b"https://app.example.com", headers=b"a\x01b")
        self.assertEqual(response.code, 403)

    def test_actual_response_allowed_origin(self) -> None:
        response, _ = self.relay.call(
            "GET", "/api/mte-echo/x", headers={b"origin": [b"https://app.example.com"]}
        )
        h = response.headers
        self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [b"https://app.example.com"])
        self.assertIn(b"Origin", h.getRawHeaders(b"vary"))
        self.assertIn(b"x-mte-relay", h.getRawHeaders(b"access-control-expose-headers")[0])

    def test_actual_response_disallowed_origin(self) -> None:
        response, _ = self.relay.call(
            "GET", "/api/mte-echo/x", headers={b"origin": [b"https://evil.example.com"]}
        )
        names = [name.lower() for name, _ in response.headers.getAllRawHeaders()]
        self.assertFalse([n for n in names if n.startswith(b"access-control-")])

    def test_upstream_cors_headers_replaced(self) -> None:
        self.relay.upstream.headers.append((b"Access-Control-Allow-Origin", b"*"))
        self.relay.upstream.headers.append((b"Access-Control-Allow-Methods", b"PATCH"))
        response, _ = self.relay.call("GET", "/pt", headers={b"origin": [b"https://app.example.com"]})
        h = response.headers
        self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [b"https://app.example.com"])
        self.assertIsNone(h.getRawHeaders(b"access-control-allow-methods"))
        response, _ = self.relay.call("GET", "/pt", headers={b"origin": [b"https://evil.example.com"]})
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))


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
