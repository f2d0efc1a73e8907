"""CORS: the policy's rules (web/cors.py) and through the whole Resource tree (in memory)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from mterelay.web.cors import (EXPOSED, MAX_AGE, PREFLIGHT_VARY, PROTOCOL_REQUEST_HEADERS,
                               CorsPolicy, allowed_headers)
from tests.helpers.support import MemoryRelay, json_of

APP = "https://app.example.com"
POLICY = CorsPolicy((APP, "http://localhost:3000"), ("GET", "POST", "OPTIONS", "HEAD"))


def request(method: bytes = b"GET", **headers: bytes) -> DummyRequest:
    """A bare request; header names as keywords (``access_control_request_method=...``)."""
    req = DummyRequest([b""])
    req.method = method
    for name, value in headers.items():
        req.requestHeaders.setRawHeaders(name.replace("_", "-").encode("ascii"), [value])
    return req


def preflight(origin: bytes = APP.encode(), method: bytes = b"POST",
              requested: bytes | None = b"content-type") -> DummyRequest:
    headers = {"origin": origin, "access_control_request_method": method}
    if requested is not None:
        headers["access_control_request_headers"] = requested
    return request(b"OPTIONS", **headers)


def header(req: DummyRequest, name: bytes) -> list[bytes] | None:
    return req.responseHeaders.getRawHeaders(name)


class AllowedOriginTests(SynchronousTestCase):
    def test_listed_origin_is_echoed_as_sent(self) -> None:
        self.assertEqual(POLICY.allowed_origin(request(origin=APP.encode())), APP.encode())
        # listed origins are compared lowercase; the answer carries what the browser sent
        self.assertEqual(POLICY.allowed_origin(request(origin=b"HTTPS://APP.example.com")),
                         b"HTTPS://APP.example.com")

    def test_unlisted_or_missing_origin(self) -> None:
        for origin in (b"https://evil.example.com", b"https://app.example.com.evil.test",
                       b"https://app.example.com:8443", b"http://app.example.com", b"null", b"*"):
            self.assertIsNone(POLICY.allowed_origin(request(origin=origin)), origin)
        self.assertIsNone(POLICY.allowed_origin(request()))

    def test_no_origins_configured_allows_none(self) -> None:
        self.assertIsNone(CorsPolicy((), ("GET",)).allowed_origin(request(origin=APP.encode())))


class IsPreflightTests(SynchronousTestCase):
    def test_needs_options_origin_and_requested_method(self) -> None:
        self.assertTrue(POLICY.is_preflight(preflight()))
        self.assertFalse(POLICY.is_preflight(request(b"OPTIONS", origin=APP.encode())))
        self.assertFalse(POLICY.is_preflight(
            request(b"OPTIONS", access_control_request_method=b"POST")))
        self.assertFalse(POLICY.is_preflight(
            request(b"POST", origin=APP.encode(), access_control_request_method=b"POST")))


class DecorateTests(SynchronousTestCase):
    def test_allowed_origin_gets_the_cors_headers(self) -> None:
        req = request(origin=APP.encode())
        POLICY.decorate(req)
        self.assertEqual(header(req, b"access-control-allow-origin"), [APP.encode()])
        self.assertEqual(header(req, b"access-control-allow-credentials"), [b"true"])
        self.assertEqual(header(req, b"access-control-expose-headers"), [EXPOSED])
        self.assertEqual(header(req, b"vary"), [b"Origin"])

    def test_other_origin_gets_only_vary(self) -> None:
        req = request(origin=b"https://evil.example.com")
        POLICY.decorate(req)
        self.assertEqual(header(req, b"vary"), [b"Origin"])
        self.assertEqual([n for n, _ in req.responseHeaders.getAllRawHeaders()
                          if n.lower().startswith(b"access-control-")], [])

    def test_without_cors_origins_nothing_is_added(self) -> None:
        req = request(origin=APP.encode())
        CorsPolicy((), ("GET",)).decorate(req)
        self.assertEqual(list(req.responseHeaders.getAllRawHeaders()), [])

    def test_vary_added_once(self) -> None:
        req = request(origin=APP.encode())
        req.responseHeaders.addRawHeader(b"vary", b"Accept-Encoding")
        POLICY.decorate(req)
        POLICY.decorate(req)
        self.assertEqual(header(req, b"vary"), [b"Accept-Encoding", b"Origin"])

    def test_exposes_what_a_client_must_read(self) -> None:
        exposed = {name.strip() for name in EXPOSED.split(b",")}
        for name in (b"x-mte-relay", b"x-mte-relay-eh", b"x-mte-relay-framing",
                     b"x-mte-relay-fixed-path", b"x-mte-upstream-reached", b"retry-after",
                     b"x-request-id"):
            self.assertIn(name, exposed)


class PreflightTests(SynchronousTestCase):
    def test_allowed(self) -> None:
        req = preflight(requested=b"Content-Type, X-Custom")
        self.assertEqual(POLICY.preflight(req), (True, ""))
        self.assertEqual(req.responseCode, 204)
        self.assertEqual(header(req, b"access-control-allow-origin"), [APP.encode()])
        self.assertEqual(header(req, b"access-control-allow-credentials"), [b"true"])
        self.assertEqual(header(req, b"access-control-allow-methods"), [b"GET, POST, OPTIONS, HEAD"])
        self.assertEqual(header(req, b"access-control-allow-headers"),
                         [b", ".join(PROTOCOL_REQUEST_HEADERS + (b"x-custom",))])
        self.assertEqual(header(req, b"access-control-max-age"), [b"%d" % MAX_AGE])
        self.assertEqual(header(req, b"access-control-expose-headers"), [EXPOSED])
        self.assertEqual(header(req, b"vary"), [PREFLIGHT_VARY])

    def test_method_compared_trimmed_and_uppercase(self) -> None:
        self.assertEqual(POLICY.preflight(preflight(method=b" post ")), (True, ""))

    def test_max_age_from_the_policy(self) -> None:
        req = preflight()
        CorsPolicy((APP,), ("POST",), max_age=5).preflight(req)
        self.assertEqual(header(req, b"access-control-max-age"), [b"5"])

    def test_no_requested_headers_still_allows_the_protocol_ones(self) -> None:
        req = preflight(requested=None)
        self.assertEqual(POLICY.preflight(req), (True, ""))
        self.assertEqual(header(req, b"access-control-allow-headers"),
                         [b", ".join(PROTOCOL_REQUEST_HEADERS)])

    def refused(self, req: DummyRequest, reason: str) -> None:
        self.assertEqual(POLICY.preflight(req), (False, reason))
        self.assertEqual(header(req, b"vary"), [PREFLIGHT_VARY])  # refusals vary too
        self.assertIsNone(header(req, b"access-control-allow-origin"))
        self.assertIsNone(header(req, b"access-control-allow-methods"))
        self.assertNotEqual(req.responseCode, 204)

    def test_origin_refused(self) -> None:
        self.refused(preflight(origin=b"https://evil.example.com"), "origin is not in CORS_ORIGINS")

    def test_method_refused(self) -> None:
        self.refused(preflight(method=b"DELETE"), "method is not in CORS_METHODS")
        self.refused(preflight(method=b""), "method is not in CORS_METHODS")

    def test_malformed_requested_headers_refused(self) -> None:
        for bad in (b"a\x01b", b"x-a;x-b", b"(x)", b"x\xff", b"x-a:1"):
            self.refused(preflight(requested=bad), "access-control-request-headers is malformed")


class AllowedHeadersTests(SynchronousTestCase):
    def test_protocol_headers_first_then_the_requested_ones_once_lowercase(self) -> None:
        self.assertEqual(allowed_headers(b""), b", ".join(PROTOCOL_REQUEST_HEADERS))
        self.assertEqual(allowed_headers(b"X-B,  x-a ,,X-B, Content-Type, X-MTE-RELAY"),
                         b", ".join(PROTOCOL_REQUEST_HEADERS + (b"x-b", b"x-a")))




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

    def test_refused_preflight_body_names_the_problem(self) -> None:
        response, body = self.preflight(b"https://app.example.com", headers=b"a;b")
        self.assertEqual(response.code, 403)
        self.assertEqual(json_of(body), {"error": "CORS preflight refused", "code": 403,
                                         "reason": "access-control-request-headers is malformed",
                                         "upstreamReached": "no"})
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json; charset=utf-8"])
        self.assertEqual(self.relay.upstream.received, [])

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
