"""The gaps issue 15 found in docs/protocol.md, closed in the relay (in memory, StubTreq).

Pairing batches of 1..64 whatever MAX_POOL_SIZE is (sections 2, 4, 11);
one error shape with ``upstreamReached`` on every route (section 10.1);
CORS (section 14): allowed request headers, exposed response headers,
CORS headers on the relay's own errors, ``Vary`` on preflights and on
every answer that depends on the Origin, ``Access-Control-Max-Age`` from
CORS_MAX_AGE; sealed answers ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.clientid import client_uuid
from mterelay.protocol.pairing import start_pairing
from mterelay.web.cors import EXPOSED
from tests.helpers.support import MemoryRelay, json_of

ORIGIN = b"https://app.example.com"
SHAPE = {"error", "code", "reason", "upstreamReached"}


def client_id(relay: MemoryRelay) -> str:
    response, _ = relay.call("HEAD", "/api/mte-relay")
    return response.headers.getRawHeaders(b"x-mte-relay")[0].decode("ascii")


def pair(relay: MemoryRelay, count: int, ident: str | None = None,
         body: bytes | None = None) -> tuple[Any, bytes]:
    ident = ident or client_id(relay)
    if body is None:
        entries = [start_pairing(client_uuid(ident)).request_entry() for _ in range(count)]
        body = json.dumps(entries, separators=(",", ":")).encode("ascii")
    return relay.call("POST", "/api/mte-pair", data=body,
                      headers={b"x-mte-relay": [ident.encode("ascii")],
                               b"content-type": [b"application/json"]})


class PairingBatchTests(SynchronousTestCase):
    """Spec 1..64 and the relay agree; MAX_POOL_SIZE is not a protocol limit."""

    def test_sixty_four_entries_are_accepted(self) -> None:
        relay = MemoryRelay.build()  # MAX_POOL_SIZE 25 by default
        response, body = pair(relay, 64)
        self.assertEqual(response.code, 200, body[:300])  # was 413 (body cap of 25 entries)
        self.assertEqual(len(json_of(body)), 64)

    def test_more_than_max_pool_size_is_accepted(self) -> None:
        relay = MemoryRelay.build(MAX_POOL_SIZE="2")
        response, body = pair(relay, 26)
        self.assertEqual(response.code, 200, body[:300])  # was 400 ("must hold 1..2")

    def test_sixty_five_entries_are_400_naming_the_body(self) -> None:
        relay = MemoryRelay.build()
        ident = client_id(relay)
        one = start_pairing(client_uuid(ident)).request_entry()
        entries = [dict(one, pairId=f"pair-{i:020d}") for i in range(65)]
        response, body = pair(relay, 0, ident, json.dumps(entries).encode("ascii"))
        self.assertEqual(response.code, 400)
        answer = json_of(body)
        self.assertEqual((answer["field"], answer["upstreamReached"]), ("$", "no"))
        self.assertIn("1..64", answer["reason"])

    def test_body_above_the_cap_is_413(self) -> None:
        relay = MemoryRelay.build()
        ident = client_id(relay)
        entry = json.dumps(start_pairing(client_uuid(ident)).request_entry())
        padded = ("[" + entry + " " * (64 * 6 * 1024) + "]").encode("ascii")
        response, body = pair(relay, 0, ident, padded)
        self.assertEqual(response.code, 413)
        self.assertEqual(set(json_of(body)) - {"field"}, SHAPE)


class ErrorShapeTests(SynchronousTestCase):
    """Every relay-made error: {"error", "code", "reason", "upstreamReached"} (+ route members)."""

    def setUp(self) -> None:
        self.relay = MemoryRelay.build()

    def check(self, response: Any, body: bytes, code: int, message: str) -> dict[str, Any]:
        answer = json_of(body)
        self.assertEqual(response.code, code)
        self.assertLessEqual(SHAPE, set(answer))
        self.assertEqual((answer["error"], answer["code"]), (message, code))
        self.assertIsInstance(answer["reason"], str)
        self.assertTrue(answer["reason"])
        self.assertEqual(answer["upstreamReached"], "no")
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [b"no"])
        return answer

    def test_569_is_the_same_on_every_route(self) -> None:
        """It was "Missing required header" + reason here, "...header." + info there."""
        response, body = self.relay.call("POST", "/api/login", data=b"{}")
        routed = self.check(response, body, 569, "Missing required header.")
        response, body = self.relay.call("POST", "/api/mte-pair", data=b"[]")
        paired = self.check(response, body, 569, "Missing required header.")
        response, body = self.relay.call(
            "GET", "/api/x", headers={b"x-mte-relay": [b"a" * 101 + b",b,MTE,0,0,0,0,0"]})
        self.assertEqual(response.code, 566)  # (bad client id before the missing -eh)
        self.assertEqual(set(routed) - {"reason"}, set(paired) - {"reason"})

    def test_55x_has_reason_not_info(self) -> None:
        response, body = self.relay.call("HEAD", "/api/mte-relay",
                                         headers={b"x-mte-relay": [b"not-an-id"]})
        self.assertEqual(response.code, 566)
        response, body = pair(self.relay, 0, "0" * 36 + "." + "0" * 64, b"[]")
        answer = self.check(response, body, 566, "Invalid Client ID header.")
        self.assertNotIn("info", answer)

    def test_pairing_400_and_refusals(self) -> None:
        response, body = pair(self.relay, 0, body=b"{")
        answer = self.check(response, body, 400, "Malformed pair request.")
        self.assertEqual(answer["field"], "$")
        response, body = self.relay.call("GET", "/api/mte-pair")
        self.check(response, body, 405, "Method not allowed")


class CorsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build(CORS_ORIGINS="https://app.example.com")

    def preflight(self, origin: bytes = ORIGIN, headers: bytes = b"x-mte-relay") -> Any:
        response, _ = self.relay.call("OPTIONS", "/api/x", headers={
            b"origin": [origin], b"access-control-request-method": [b"POST"],
            b"access-control-request-headers": [headers]})
        return response

    def vary(self, response: Any) -> list[str]:
        return [name.strip().lower() for value in response.headers.getRawHeaders(b"vary", [])
                for name in value.decode("ascii").split(",")]

    def test_preflight_varies_on_origin(self) -> None:
        """Missing before: a cache could give one origin's preflight answer to another."""
        for origin in (ORIGIN, b"https://evil.example.com"):
            response = self.preflight(origin)
            self.assertIn("origin", self.vary(response))
            self.assertIn("access-control-request-headers", self.vary(response))

    def test_protocol_request_headers_always_allowed(self) -> None:
        response = self.preflight(headers=b"x-custom")
        allowed = response.headers.getRawHeaders(b"access-control-allow-headers")[0]
        names = {n.strip() for n in allowed.decode("ascii").split(",")}
        self.assertLessEqual({"x-mte-relay", "x-mte-relay-eh", "content-type", "x-custom"},
                             names)

    def test_max_age_is_a_setting(self) -> None:
        self.assertEqual(self.preflight().headers.getRawHeaders(b"access-control-max-age"),
                         [b"600"])
        relay = MemoryRelay.build(CORS_ORIGINS="https://app.example.com", CORS_MAX_AGE="30")
        response, _ = relay.call("OPTIONS", "/x", headers={
            b"origin": [ORIGIN], b"access-control-request-method": [b"GET"]})
        self.assertEqual(response.headers.getRawHeaders(b"access-control-max-age"), [b"30"])

    def test_relay_errors_carry_cors_headers(self) -> None:
        """A 55x a script cannot read is one it cannot act on; also the 400 of a bad target."""
        for path in ("/api/login", "/api/%00"):
            response, _ = self.relay.call("POST", path, data=b"{}",
                                          headers={b"origin": [ORIGIN]})
            self.assertIn(response.code, (569, 400))
            self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                             [ORIGIN], path)
            self.assertIn("origin", self.vary(response))
            exposed = response.headers.getRawHeaders(b"access-control-expose-headers")[0]
            self.assertEqual(exposed, EXPOSED)
            for name in (b"x-mte-relay", b"x-mte-relay-eh", b"x-request-id",
                         b"x-mte-upstream-reached", b"retry-after"):
                self.assertIn(name, exposed)

    def test_no_cors_no_vary(self) -> None:
        relay = MemoryRelay.build()
        response, _ = relay.call("GET", "/api/mte-echo/x", headers={b"origin": [ORIGIN]})
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))


class SealedAnswerTests(SynchronousTestCase):
    """Relay B's sealed answers and its own errors after forwarding began."""

    def setUp(self) -> None:
        from tests.helpers.sealer import Sealer

        self.relay = MemoryRelay.build(CORS_ORIGINS="https://app.example.com")
        self.client = Sealer(self.relay)
        self.keys = self.client.pair()[0]

    def test_sealed_answers_are_no_store(self) -> None:
        """A shared cache must not keep what only one client can open (missing before)."""
        from tests.helpers.sealer import Sealer

        self.relay.upstream.headers = [(b"content-type", b"text/plain"),
                                       (b"cache-control", b"public, max-age=3600")]
        for method, streaming in (("GET", True), ("GET", False), ("HEAD", True)):
            sent = self.client.send(method, "/cached", streaming=streaming,
                                    clear={"origin": [ORIGIN.decode()]})
            self.assertEqual(sent.response.code, 200)
            self.assertEqual(sent.response.headers.getRawHeaders(b"cache-control"),
                             [b"no-store"], method)
            self.assertIn(b"Origin", sent.response.headers.getRawHeaders(b"vary"))
            headers, _ = Sealer.open(sent, self.keys)
            self.assertEqual(headers["cache-control"], ["public, max-age=3600"])

    def test_cache_control_is_sealed_even_when_asked_in_clear(self) -> None:
        from tests.helpers.sealer import Sealer

        self.relay.upstream.headers = [(b"content-type", b"text/plain"),
                                       (b"cache-control", b"private"), (b"etag", b'"1"')]
        sent = self.client.send("GET", "/x", {"x-mte-response-headers": ["etag"]})
        headers, _ = Sealer.open(sent, self.keys)
        self.assertEqual((headers["cache-control"], headers["etag"]), (["private"], ['"1"']))
        self.assertEqual(sent.response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_refusals_before_forwarding_say_no(self) -> None:
        sent = self.client.send("GET", "/x", seq=0)
        self.assertEqual(sent.response.code, 200)
        replay = self.client.send("GET", "/x", seq=0)  # the same seq again: 562
        self.assertEqual(replay.response.code, 562)
        self.assertEqual(json_of(replay.body)["upstreamReached"], "no")
        self.assertEqual(replay.response.headers.getRawHeaders(b"x-mte-upstream-reached"),
                         [b"no"])
        self.assertEqual(len(self.relay.upstream.received), 1)

    def test_upstream_timeout_says_maybe(self) -> None:
        self.relay.upstream.hold = True
        _, target, headers, _ = self.client.wire("GET", "/slow")
        pending = self.relay.client.request("GET", "http://relay.test" + target,
                                            headers=headers)
        answers: list[Any] = []
        pending.addCallback(answers.append)
        self.relay.flush()
        self.relay.clock.advance(self.relay.config.upstream_timeout + 1)
        self.relay.flush()
        [response] = answers
        self.assertEqual(response.code, 504)
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [b"maybe"])

    def test_empty_header_values_are_allowed(self) -> None:
        """Spec 6.3: an empty value is a field line with an empty value, both ways."""
        from tests.helpers.sealer import Sealer

        self.relay.upstream.headers = [(b"content-type", b"text/plain"), (b"x-blank", b"")]
        sent = self.client.send("GET", "/e", {"x-empty": [""], "x-two": ["", "b"]})
        self.assertEqual(sent.response.code, 200)
        [received] = self.relay.upstream.received
        self.assertEqual((received.headers[b"x-empty"], received.headers[b"x-two"]),
                         ([b""], [b"", b"b"]))
        headers, _ = Sealer.open(sent, self.keys)
        self.assertEqual(headers["x-blank"], [""])
