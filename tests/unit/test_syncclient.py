"""SyncRelayClient (the Locust user's protocol core) against the real inbound relay, in memory.

``send`` drives a :class:`~tests.helpers.support.MemoryRelay`, so every byte goes
through the relay's own checks; no Locust (and no gevent) in this process.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from mterelay.client.messages import SealOptions
from mterelay.protocol.errors import DecodeFailed, RelayError
from mterelay.syncclient import SyncRelayClient, WireAnswer
from tests.helpers.support import MemoryRelay

ORIGIN = "http://relay.test:80"


class Wire:
    """``send`` over a MemoryRelay that can be swapped (a restart) or tampered with."""

    def __init__(self, relay: MemoryRelay) -> None:
        self.relay = relay
        self.sent: list[tuple[str, str, list[tuple[str, str]], bytes | None]] = []
        self.tamper: Any = None

    def __call__(self, method: str, url: str, headers: list[tuple[str, str]],
                 body: bytes | None) -> WireAnswer:
        self.sent.append((method, url, headers, body))
        wire = Headers()
        for name, value in headers:
            wire.addRawHeader(name.encode("latin-1"), value.encode("utf-8"))
        path = url[len(ORIGIN):]
        kwargs: dict[str, Any] = {"headers": wire}
        if body is not None:
            kwargs["data"] = body
        response, content = self.relay.call(method, path, **kwargs)
        answer = WireAnswer(response.code, response.phrase.decode("latin-1"),
                            [(k.decode("latin-1").lower(), v.decode("latin-1"))
                             for k, values in response.headers.getAllRawHeaders()
                             for v in values], content)
        if self.tamper is not None:
            answer = self.tamper(answer)
        return answer


class SyncClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire(MemoryRelay.build())
        self.handshakes: list[tuple[str, str, BaseException | None]] = []
        self.client = self.make_client()

    def make_client(self, **kwargs: Any) -> SyncRelayClient:
        def on_handshake(method: str, path: str, url: str, ms: float, length: int,
                         error: BaseException | None) -> None:
            self.assertGreaterEqual(ms, 0)
            self.handshakes.append((method, path, error))

        return SyncRelayClient(self.wire, ORIGIN, on_handshake=on_handshake, **kwargs)

    @property
    def upstream(self) -> Any:
        return self.wire.relay.upstream

    def test_round_trip_pairs_once_and_seals_everything(self) -> None:
        self.upstream.body = b'{"token":"t-1"}'
        for i in range(3):
            answer = self.client.request(
                "POST", f"{ORIGIN}/api/login?n={i}",
                [("content-type", "application/json"), ("x-api-key", "k")],
                b'{"user": "a"}')
            self.assertIsNone(answer.error)
            self.assertTrue(answer.sealed)
            self.assertEqual((answer.status, json.loads(answer.body)), (200, {"token": "t-1"}))
            self.assertIn(("content-type", "application/json"), answer.headers)
        self.assertEqual([(m, p) for m, p, _ in self.handshakes],
                         [("HEAD", "/api/mte-relay"), ("POST", "/api/mte-pair")])
        self.assertEqual([(r.method, r.uri, r.body) for r in self.upstream.received],
                         [(b"POST", b"/api/login?n=%d" % i, b'{"user": "a"}') for i in range(3)])
        self.assertEqual(self.upstream.received[0].headers[b"x-api-key"], [b"k"])
        # On the wire: the fixed path, no plaintext path, key or body.
        for method, url, headers, body in self.wire.sent[2:]:
            self.assertEqual(url, ORIGIN + "/api/mte-relay/request")
            self.assertNotIn("x-api-key", dict(headers))
            self.assertNotIn(b"user", body)
        seqs = [dict(h)["x-mte-relay"].split(",")[-1] for _, _, h, _ in self.wire.sent[2:]]
        self.assertEqual(len(set(seqs)), 3, "every request a seq of its own")

    def test_options_clear_url_and_listed_headers_mte(self) -> None:
        client = self.make_client(options=SealOptions.build(
            seal_url=False, seal_headers=["x-secret"], framing="MTE"))
        answer = client.request("PUT", f"{ORIGIN}/api/items/7",
                                [("x-secret", "s"), ("x-trace", "t")], b"abc")
        self.assertEqual((answer.status, answer.sealed, answer.error), (200, True, None))
        method, url, headers, body = self.wire.sent[-1]
        self.assertEqual(url, ORIGIN + "/api/items/7")
        self.assertEqual(dict(headers)["x-trace"], "t")
        self.assertNotIn("x-secret", dict(headers))
        self.assertEqual(dict(headers)["x-mte-relay"].split(",")[2], "MTE")
        [seen] = self.upstream.received
        self.assertEqual((seen.uri, seen.body, seen.headers[b"x-secret"]),
                         (b"/api/items/7", b"abc", [b"s"]))

    def test_relay_restart_repairs_and_resends_once(self) -> None:
        self.client.request("GET", f"{ORIGIN}/before", [], None)
        self.wire.relay = MemoryRelay.build()  # same secret, empty pair store: 560
        answer = self.client.request("POST", f"{ORIGIN}/after", [], b"x")
        self.assertEqual((answer.status, answer.sealed, answer.error, answer.resent),
                         (200, True, None, True))
        self.assertEqual([(r.uri, r.body) for r in self.upstream.received], [(b"/after", b"x")])
        self.assertEqual([p for _, p, _ in self.handshakes],
                         ["/api/mte-relay", "/api/mte-pair", "/api/mte-pair"])

    def test_rotated_secret_validates_again(self) -> None:
        self.client.request("GET", f"{ORIGIN}/before", [], None)
        self.wire.relay = MemoryRelay.build(CLIENT_ID_SECRET="another-secret-0123456789abcdefghij")
        answer = self.client.request("GET", f"{ORIGIN}/after", [], None)
        self.assertEqual((answer.status, answer.error, answer.resent), (200, None, True))
        self.assertEqual([p for _, p, _ in self.handshakes],
                         ["/api/mte-relay", "/api/mte-pair", "/api/mte-relay", "/api/mte-pair"])

    def test_tampered_answer_fails_and_is_never_resent(self) -> None:
        self.client.request("GET", f"{ORIGIN}/warm", [], None)
        [pair] = self.client.pool

        def flip(answer: WireAnswer) -> WireAnswer:
            if not answer.body:
                return answer
            body = bytes([answer.body[0] ^ 1]) + answer.body[1:]
            return WireAnswer(answer.status, answer.reason, answer.headers, body)

        self.wire.tamper = flip
        answer = self.client.request("POST", f"{ORIGIN}/pay", [], b"1")
        self.assertIsInstance(answer.error, DecodeFailed)
        self.assertFalse(answer.sealed)
        self.assertEqual([r.uri for r in self.upstream.received], [b"/warm", b"/pay"])
        self.assertNotIn(pair, self.client.pool, "the pair that failed to open is dropped")

    def _refuse_once(self, reached: str) -> None:
        refusal = json.dumps({"error": "Failed to decode.", "code": 562,
                              "upstreamReached": reached}).encode()
        refused: list[bool] = []

        def tamper(answer: WireAnswer) -> WireAnswer:
            method, url, headers, body = self.wire.sent[-1]
            if refused or "x-mte-relay-eh" not in dict(headers):
                return answer
            refused.append(True)
            return WireAnswer(562, "Failed to decode", [("content-type", "application/json")],
                              refusal)

        self.wire.tamper = tamper

    def test_562_maybe_is_not_resent_for_post(self) -> None:
        self._refuse_once("maybe")
        answer = self.client.request("POST", f"{ORIGIN}/order", [], b"once")
        self.assertIsInstance(answer.error, RelayError)
        self.assertEqual((answer.status, answer.error.code, answer.resent), (562, 562, False))
        self.assertEqual(len([s for s in self.wire.sent if s[1].endswith("/request")]), 1)

    def test_562_maybe_is_resent_for_put(self) -> None:
        self._refuse_once("maybe")
        answer = self.client.request("PUT", f"{ORIGIN}/order", [], b"twice is fine")
        self.assertEqual((answer.status, answer.error, answer.resent), (200, None, True))
        self.assertEqual(len([p for _, p, _ in self.handshakes if p == "/api/mte-pair"]), 2)

    def test_562_no_is_resent_for_post(self) -> None:
        self._refuse_once("no")
        answer = self.client.request("POST", f"{ORIGIN}/order", [], b"x")
        self.assertEqual((answer.status, answer.error, answer.resent), (200, None, True))

    def test_not_a_relay(self) -> None:
        self.wire.relay = MemoryRelay.build()

        def plain(answer: WireAnswer) -> WireAnswer:
            return WireAnswer(200, "OK", [], b"")

        self.wire.tamper = plain
        from mterelay.client.errors import NotARelay
        self.assertRaises(NotARelay, self.client.request, "GET", f"{ORIGIN}/x", [], None)
        self.assertIsInstance(self.handshakes[-1][2], NotARelay)

    def test_other_origin_refused(self) -> None:
        self.assertRaises(ValueError, self.client.request, "GET", "http://other.test/x", [], None)
