"""Routing in the Resource tree: MTE_ROUTES, PASS_THROUGH_ROUTES, path checks, HEADERS (in memory)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.web.paths import path_problem
from tests.helpers.support import MemoryRelay, json_of


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
