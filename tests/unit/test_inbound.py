"""The inbound relay's encrypted proxy, driven in memory (handshake and pairing: test_handshake).

The sealing side here is written against the protocol core directly (not
``mterelay.client``), so these tests check the relay against the spec, not
against our own client.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.header import RelayHeader
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import start_pairing
from tests.helpers.sealer import Sealer, header_value
from tests.helpers.support import FailingStore, MemoryRelay, json_of


class ProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build()
        self.client = Sealer(self.relay)
        self.keys = self.client.pair()[0]
        self.upstream = self.relay.upstream

    def test_round_trip(self) -> None:
        self.upstream.status = 201
        self.upstream.headers = [(b"content-type", b"application/json"),
                                 (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2; HttpOnly"),
                                 (b"x-upstream", b"yes")]
        self.upstream.body = b'{"created":true}'
        sent = self.client.send("POST", "/api/login?next=%2Fhome",
                                {"content-type": ["application/json"],
                                 "authorization": ["Bearer secret-token"],
                                 "accept": ["a/b", "c/d"]}, b'{"user":"a"}')
        self.assertEqual(sent.response.code, 201)
        [received] = self.upstream.received
        self.assertEqual(received.method, b"POST")
        self.assertEqual(received.uri, b"/api/login?next=%2Fhome")
        self.assertEqual(received.body, b'{"user":"a"}')
        self.assertEqual(received.headers[b"content-type"], [b"application/json"])
        self.assertEqual(received.headers[b"authorization"], [b"Bearer secret-token"])
        self.assertEqual(received.headers[b"accept"], [b"a/b", b"c/d"])
        self.assertFalse([name for name in received.headers if name.startswith(b"x-mte-")])
        headers, body = Sealer.open(sent, self.keys)
        self.assertEqual(body, b'{"created":true}')
        self.assertEqual(headers["set-cookie"], ["a=1", "b=2; HttpOnly"])
        self.assertEqual(headers["x-upstream"], ["yes"])
        self.assertEqual(headers["content-type"], ["application/json"])
        # Nothing the upstream said travels in clear.
        self.assertIsNone(sent.response.headers.getRawHeaders("set-cookie"))
        self.assertEqual(header_value(sent.response, "content-type"), "application/octet-stream")
        self.assertNotIn(b"created", sent.body)

    def test_clear_url_and_clear_headers(self) -> None:
        sent = self.client.send("PUT", "/api/upload", {"content-type": ["text/plain"]}, b"hello",
                                url_enc=False, headers_enc=False,
                                clear={"x-trace": ["t-1"]})
        self.assertEqual(sent.response.code, 200)
        [received] = self.upstream.received
        self.assertEqual((received.method, received.uri), (b"PUT", b"/api/upload"))
        self.assertEqual(received.headers[b"content-type"], [b"text/plain"])
        self.assertEqual(received.headers[b"x-trace"], [b"t-1"])
        self.assertEqual(received.body, b"hello")

    def test_whole_message_framing(self) -> None:
        self.upstream.body = b"x" * 200_000
        sent = self.client.send("POST", "/api/upload", {}, b"y" * 150_000, mode="MTE",
                                streaming=False)
        self.assertEqual(sent.response.code, 200)
        self.assertEqual(self.upstream.received[0].body, b"y" * 150_000)
        received = RelayHeader.parse(header_value(sent.response, "x-mte-relay"))
        self.assertEqual(received.mode, "MTE")
        self.assertEqual(Sealer.open(sent, self.keys)[1], b"x" * 200_000)
        self.assertEqual(sent.response.length, 200_000 + 16)

    def test_chunked_response_length(self) -> None:
        self.upstream.body = b"z" * 150_000
        sent = self.client.send("GET", "/api/items")
        self.assertEqual(sent.response.length, 150_000 + 3 * 16)
        self.assertEqual(Sealer.open(sent, self.keys)[1], b"z" * 150_000)

    def test_empty_and_binary_bodies(self) -> None:
        binary = bytes(range(256)) * 300
        self.upstream.body = b""
        sent = self.client.send("POST", "/api/upload", {}, binary)
        self.assertEqual(self.upstream.received[0].body, binary)
        self.assertEqual(Sealer.open(sent, self.keys)[1], b"")
        self.upstream.body = binary
        sent = self.client.send("POST", "/api/upload", {}, b"")
        self.assertEqual(self.upstream.received[1].body, b"")
        self.assertEqual(Sealer.open(sent, self.keys)[1], binary)

    def test_no_body_responses(self) -> None:
        sent = self.client.send("HEAD", "/api/items")
        self.assertEqual(sent.response.code, 200)
        headers, body = Sealer.open(sent, self.keys)
        self.assertIsNone(body)
        self.assertEqual(headers["content-type"], ["application/json"])
        self.upstream.status = 204
        self.upstream.body = b""
        sent = self.client.send("DELETE", "/api/items/3")
        self.assertEqual(sent.response.code, 204)
        self.assertIsNone(Sealer.open(sent, self.keys)[1])

    def test_error_statuses_are_sealed(self) -> None:
        for status in (404, 500, 503):
            self.upstream.status = status
            self.upstream.body = b'{"error":"upstream says no"}'
            sent = self.client.send("GET", "/api/items")
            self.assertEqual(sent.response.code, status)
            self.assertEqual(Sealer.open(sent, self.keys)[1], b'{"error":"upstream says no"}')

    def test_response_header_selection(self) -> None:
        self.upstream.headers = [(b"content-type", b"text/plain"), (b"set-cookie", b"s=1"),
                                 (b"etag", b'"v1"')]
        sent = self.client.send("GET", "/api/items",
                                {"x-mte-response-headers": ["set-cookie"]})
        headers, _ = Sealer.open(sent, self.keys)
        self.assertEqual(set(headers) & {"set-cookie", "content-type", "etag"},
                         {"set-cookie", "content-type"})
        self.assertEqual(sent.response.headers.getRawHeaders(b"etag"), [b'"v1"'])
        self.assertNotIn(b"x-mte-response-headers",
                         self.upstream.received[0].headers)

    def test_replay_refused(self) -> None:
        header, target, headers, body = self.client.wire("POST", "/api/login", {}, b"once")
        first = self.client.post_wire("POST", header, target, headers, body)
        again = self.client.post_wire("POST", header, target, headers, body)
        self.assertEqual(first.response.code, 200)
        self.assertEqual(again.response.code, 562)
        self.assertEqual(json_of(again.body)["code"], 562)
        self.assertEqual(len(self.upstream.received), 1)

    def test_forged_headers_item_does_not_burn_the_seq(self) -> None:
        header, target, headers, body = self.client.wire("GET", "/api/items")
        token = headers["x-mte-relay-eh"][0]
        forged = dict(headers, **{"x-mte-relay-eh": [token[:-2] + ("A" if token[-2] != "A"
                                                                     else "B") + token[-1]]})
        refused = self.client.post_wire("GET", header, target, forged, body)
        self.assertEqual(refused.response.code, 562)
        genuine = self.client.post_wire("GET", header, target, headers, body)
        self.assertEqual(genuine.response.code, 200)
        self.assertEqual(len(self.upstream.received), 1)

    def test_method_and_body_are_bound(self) -> None:
        header, target, headers, body = self.client.wire("GET", "/api/items")
        self.assertEqual(self.client.post_wire("DELETE", header, target, headers, body)
                         .response.code, 562)
        header, target, headers, body = self.client.wire("POST", "/api/login", {}, b"data")
        del headers["content-type"]
        self.assertEqual(self.client.post_wire("POST", header, target, headers, None)
                         .response.code, 562)
        self.assertEqual(self.upstream.received, [])

    def test_tampered_url_and_body(self) -> None:
        header, target, headers, body = self.client.wire("POST", "/api/login", {}, b"data" * 10)
        tampered = body[:5] + bytes([body[5] ^ 1]) + body[6:]
        sent = self.client.post_wire("POST", header, target, headers, tampered)
        self.assertEqual(sent.response.code, 562)
        self.assertEqual(self.upstream.received, [])

    def test_malformed_relay_headers(self) -> None:
        header, target, headers, body = self.client.wire("GET", "/api/items")
        value = headers["x-mte-relay"][0]
        cases = [
            ({"x-mte-relay": ["garbage"]}, 568),
            ({"x-mte-relay": [value.replace(",MKE,", ",XYZ,")]}, 568),
            ({"x-mte-relay": ["nope" + value[4:]]}, 566),
            ({"x-mte-relay": [value, value]}, 568),
            ({"x-mte-relay": [value], "x-mte-relay-eh": []}, 569),
            ({"x-mte-relay-eh": [headers["x-mte-relay-eh"][0]] * 2}, 568),
            ({"x-mte-relay": [value[:-1] + "99999999999999999"]}, 568),
        ]
        for change, code in cases:
            wire = dict(headers, **change)
            wire = {k: v for k, v in wire.items() if v}
            sent = self.client.post_wire("GET", header, target, wire, body)
            self.assertEqual(sent.response.code, code, change)
            self.assertEqual(json_of(sent.body)["code"], code)
        self.assertEqual(self.upstream.received, [])
        self.assertEqual(self.client.post_wire("GET", header, target, headers, body)
                         .response.code, 200)

    def test_unknown_pair_and_foreign_client(self) -> None:
        other = Sealer(self.relay)
        # The same pair id and keys, presented under another client's id.
        other.keys = [PairKeys(self.keys.version, other.client_id[:36], self.keys.pair_id,
                               self.keys.c2s_key, self.keys.s2c_key)]
        sent = other.send("GET", "/api/items")
        self.assertEqual(sent.response.code, 560)
        other.client_id = other.client_id[:37] + "0" * 64  # right uuid, wrong signature
        self.assertEqual(other.send("GET", "/api/items").response.code, 566)
        self.assertEqual(self.upstream.received, [])

    def test_clear_body_refused(self) -> None:
        header, target, headers, _ = self.client.wire("GET", "/api/items")
        sent = self.client.post_wire("POST", header, target, headers, b"clear body")
        self.assertEqual(sent.response.code, 400)
        self.assertIn("bodyEnc", json_of(sent.body)["reason"])
        self.assertEqual(self.upstream.received, [])

    def test_body_size_checks(self) -> None:
        self.relay.root.inbound.mte_body_limit = 1000
        sent = self.client.send("POST", "/api/upload", {}, b"a" * 2000, mode="MTE",
                                streaming=False)
        self.assertEqual(sent.response.code, 413)
        header, target, headers, body = self.client.wire("POST", "/api/upload", {}, b"b" * 10)
        sent = self.client.post_wire("POST", header, target, headers, body[:10])
        self.assertEqual(sent.response.code, 562)  # shorter than one tag
        self.assertEqual(self.upstream.received, [])

    def test_whole_message_response_limit(self) -> None:
        self.relay.root.inbound.mte_body_limit = 1000
        self.upstream.body = b"r" * 2000
        sent = self.client.send("GET", "/api/items", streaming=False)
        self.assertEqual(sent.response.code, 502)
        self.assertIn("streaming=1", json_of(sent.body)["reason"])
        sent = self.client.send("GET", "/api/items")  # streamed: no limit
        self.assertEqual(Sealer.open(sent, self.keys)[1], b"r" * 2000)

    def test_opened_path_is_checked(self) -> None:
        for target in ("/api/../admin", "/api/%2e%2e/admin"):
            sent = self.client.send("GET", target)
            self.assertEqual(sent.response.code, 400, target)
        self.assertEqual(self.upstream.received, [])

    def test_mte_routes_apply_to_the_opened_path(self) -> None:
        relay = MemoryRelay.build(MTE_ROUTES="/api/allowed/*")
        client = Sealer(relay)
        client.pair()
        self.assertEqual(client.send("GET", "/api/allowed/x").response.code, 200)
        self.assertEqual(client.send("GET", "/api/other").response.code, 404)
        self.assertEqual(len(relay.upstream.received), 1)

    def test_exhausted_pair_is_559(self) -> None:
        relay = MemoryRelay.build(PAIR_MAX_MESSAGES="1")
        client = Sealer(relay)
        client.pair()
        self.assertEqual(client.send("GET", "/api/items").response.code, 200)
        self.assertEqual(client.send("GET", "/api/items").response.code, 559)
        self.assertEqual(client.send("GET", "/api/items").response.code, 560)

    def test_idle_pair_expires(self) -> None:
        self.relay.clock.advance(self.relay.config.pair_idle_ttl + 1)
        self.assertEqual(self.client.send("GET", "/api/items").response.code, 560)

    def test_store_down_is_503(self) -> None:
        down = FailingStore(self.relay.clock)
        relay = MemoryRelay.build(store=down)
        client = Sealer(relay)
        client.keys = [self.keys]
        client.client_id = self.client.client_id
        sent = client.send("GET", "/api/items")
        self.assertEqual(sent.response.code, 503)
        self.assertEqual(json_of(sent.body)["code"], 503)

    def test_upstream_unreachable_is_502(self) -> None:
        relay = MemoryRelay.build(UPSTREAM_TIMEOUT="5")
        client = Sealer(relay)
        client.pair()
        relay.upstream.hold = True
        header, target, headers, body = client.wire("GET", "/api/items")
        responses: list[Any] = []
        relay.client.request("GET", "http://relay.test" + target,
                             headers=headers).addCallback(responses.append)
        relay.flush()
        relay.clock.advance(6)
        relay.flush()
        self.assertEqual(responses[0].code, 504)

    def test_pair_id_in_use_is_refused_on_another_replica(self) -> None:
        """Re-pairing an existing id is 409 and leaves the pair (and caches) working."""
        replica = MemoryRelay.build(store=self.relay.root.store)
        replica.clock = self.relay.clock
        other = Sealer(replica)
        other.client_id = self.client.client_id
        self.assertEqual(other.send("GET", "/api/items", keys=self.keys, seq=100)
                         .response.code, 200)  # replica caches the keys
        pending = start_pairing(self.client.client_id[:36], self.keys.pair_id)
        for relay in (self.relay, replica):
            response, body = relay.call(
                "POST", "/api/mte-pair", headers={"x-mte-relay": [self.client.client_id]},
                data=json.dumps([pending.request_entry()]).encode())
            self.assertEqual(response.code, 409)
            self.assertEqual(json_of(body)["field"], "[0].pairId")
        for seq, relay in ((101, self.relay), (102, replica)):
            sealer = Sealer(relay)
            sealer.client_id = self.client.client_id
            sent = sealer.send("GET", "/api/items", keys=self.keys, seq=seq)
            self.assertEqual(sent.response.code, 200)
            self.assertEqual(Sealer.open(sent, self.keys)[1], b'{"ok":true}')


class AbandonedExchangeTests(SynchronousTestCase):
    """A client that hung up cancels the upstream call; that is not an upstream failure."""

    def run_failing(self, gone: bool) -> list[dict[str, Any]]:
        from twisted.internet.defer import ensureDeferred
        from twisted.logger import LogLevel, globalLogPublisher
        from twisted.web.test.requesthelper import DummyRequest

        from mterelay.http.upstream import UpstreamError
        from mterelay.web.inbound import Exchange

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        exchange = Exchange.__new__(Exchange)
        exchange.request = DummyRequest([b"x"])
        exchange.gone = gone

        async def cancelled_connect() -> None:
            raise UpstreamError("DNSLookupError: DNS lookup failed (cancelled)")

        exchange._exchange = cancelled_connect
        exchange._send = lambda body: None
        self.successResultOf(ensureDeferred(exchange.run()))
        return [e for e in events if e.get("log_level") == LogLevel.warn]

    def test_gone_client_is_not_a_warning(self) -> None:
        self.assertEqual(self.run_failing(gone=True), [])

    def test_live_client_still_warned(self) -> None:
        self.assertEqual(len(self.run_failing(gone=False)), 1)


class ReturnedNamesTests(SynchronousTestCase):
    """The memo of response header names gives what the uncached rule gives."""

    def test_memo_matches_the_rule_and_is_bounded(self) -> None:
        from twisted.web.http_headers import Headers

        from mterelay.web import inbound

        names = [b"Server", b"Content-Type", b"Content-Length", b"Connection", b"Keep-Alive",
                 b"Transfer-Encoding", b"Access-Control-Allow-Origin", b"X-Mte-Relay",
                 b"X-Custom", b"Set-Cookie", b"\xffOdd"]
        self.patch(inbound, "_returned_names", {})
        self.patch(inbound, "RETURNED_NAMES_MAX", 4)
        for _ in range(2):  # first computed, then (partly) remembered
            for name in names:
                lower = name.lower()
                skipped = (lower in inbound.NOT_RETURNED
                           or lower.startswith((b"access-control-", b"x-mte-")))
                expected = None if skipped else (lower, lower.decode("ascii", "replace"))
                self.assertEqual(inbound._returned_name(name), expected, name)
                self.assertLessEqual(len(inbound._returned_names), 4)
        headers = Headers({b"Server": [b"nginx"], b"Connection": [b"close"],
                           b"Set-Cookie": [b"a=1", b"b=2"], b"X-Custom": [b"\xe9"]})
        sealed, clear = inbound.split_response_headers(headers, frozenset({"server"}))
        self.assertEqual(sealed, {"server": ["nginx"]})
        self.assertEqual(sorted(clear), [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                                         (b"x-custom", b"\xe9")])
        sealed, clear = inbound.split_response_headers(headers, None)
        self.assertEqual(sealed, {"server": ["nginx"], "set-cookie": ["a=1", "b=2"],
                                  "x-custom": ["\xe9"]})
        self.assertEqual(clear, [])


def reference_upstream_request_headers(clear: Any, sealed: dict[str, list[str]],
                                       body_enc: bool) -> list[tuple[bytes, list[bytes]]]:
    """The rule without memos, as main had it, after outgoing_headers' Host/Content-Length drop."""
    from mterelay.http.headers import hop_by_hop_names
    from mterelay.web.inbound import NOT_FORWARDED

    merged: dict[bytes, list[bytes]] = {}
    hop = hop_by_hop_names(clear)
    for name, values in clear.getAllRawHeaders():
        lower = name.lower()
        if (lower in hop or lower.startswith(b"x-mte-")
                or (body_enc and lower == b"content-type")):
            continue
        merged[lower] = list(values)
    for name, values in sealed.items():
        raw = name.encode("ascii")
        if raw in NOT_FORWARDED or raw.startswith(b"x-mte-"):
            continue
        merged[raw] = [value.encode("utf-8") for value in values]
    merged.pop(b"host", None)
    merged.pop(b"content-length", None)
    return sorted(merged.items())


class UpstreamRequestHeadersTests(SynchronousTestCase):
    """The name memos give what the rule without them gives (minus Host/Content-Length)."""

    def test_same_headers_as_the_rule(self) -> None:
        from twisted.web.http_headers import Headers

        from mterelay.web import inbound

        self.patch(inbound, "_clear_names", {})
        self.patch(inbound, "_sealed_names", {})
        self.patch(inbound, "NAMES_MAX", 3)
        clear = Headers({b"Host": [b"relay.test"], b"Content-Length": [b"40"],
                         b"Content-Type": [b"application/octet-stream"],
                         b"X-Mte-Relay": [b"h"], b"X-Mte-Relay-Eh": [b"e"],
                         b"Connection": [b"keep-alive, X-Hop"], b"X-Hop": [b"1"],
                         b"Keep-Alive": [b"timeout=5"], b"X-Trace": [b"t-1", b"t-2"],
                         b"User-Agent": [b"wrk"]})
        sealed = {"content-type": ["application/json"], "x-request-id": ["r-1"],
                  "host": ["evil.test"], "content-length": ["1"], "x-mte-thing": ["no"],
                  "connection": ["close"], "x-hop": ["sealed, so kept"],
                  "accept": ["a/b", "c/\u00e9"]}
        for body_enc in (True, False, True, False):  # memos empty, then full and emptied
            merged = inbound.upstream_request_headers(clear, sealed, body_enc)
            got = sorted((name.lower(), values) for name, values in merged.getAllRawHeaders())
            self.assertEqual(got, reference_upstream_request_headers(clear, sealed, body_enc))
            self.assertLessEqual(len(inbound._clear_names), 3)
            self.assertLessEqual(len(inbound._sealed_names), 3)
        self.assertEqual(merged.getRawHeaders(b"x-hop"), [b"sealed, so kept"])
        self.assertIsNone(merged.getRawHeaders(b"host"))
