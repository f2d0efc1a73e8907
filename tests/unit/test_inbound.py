"""The inbound relay's routes, driven in memory: handshake, pairing, the encrypted proxy.

The sealing side here is written against the protocol core directly (not
``mterelay.client``), so these tests check the relay against the spec, not
against our own client.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.clientid import new_client_id
from mterelay.protocol.header import RelayHeader
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import start_pairing
from mterelay.protocol.sealing import Direction, MessageCipher
from mterelay.store.interface import StoreUnavailable
from mterelay.store.memory import MemoryPairStore
from tests.helpers.support import SECRET, MemoryRelay, json_of

PREVIOUS = "a-previous-client-id-secret-0123456789"


def header_value(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode("latin-1") if values else None


@attrs.define
class Sent:
    header: RelayHeader
    response: Any
    body: bytes
    wire: dict[str, Any]


class Sealer:
    """A minimal spec-following client over a MemoryRelay."""

    def __init__(self, relay: MemoryRelay) -> None:
        self.relay = relay
        response, _ = relay.call("HEAD", "/api/mte-relay")
        assert response.code == 200, response.code
        self.client_id = header_value(response, "x-mte-relay")
        self.keys: list[PairKeys] = []
        self.seq = 0

    def pair(self, count: int = 1) -> list[PairKeys]:
        pending = [start_pairing(self.client_id[:36]) for _ in range(count)]
        response, body = self.relay.call(
            "POST", "/api/mte-pair",
            headers={"x-mte-relay": [self.client_id], "content-type": ["application/json"]},
            data=json.dumps([p.request_entry() for p in pending]).encode())
        assert response.code == 200, body
        keys = [p.finish(entry) for p, entry in zip(pending, json_of(body))]
        self.keys.extend(keys)
        return keys

    def wire(self, method: str, target: str, headers: dict[str, list[str]] | None = None,
             body: bytes | None = None, *, mode: str = "MKE", url_enc: bool = True,
             headers_enc: bool = True, streaming: bool = True, seq: int | None = None,
             keys: PairKeys | None = None, clear: dict[str, list[str]] | None = None
             ) -> tuple[RelayHeader, str, dict[str, list[str]], bytes | None]:
        keys = keys or self.keys[-1]
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        header = RelayHeader(self.client_id, keys.pair_id, mode, url_enc, headers_enc,
                             body is not None, streaming, seq)
        cipher = MessageCipher(keys, header, Direction.C2S)
        wire_target = "/" + cipher.seal_url(target) if url_enc else target
        item = cipher.seal_request_headers(headers or {}, method, wire_target,
                                           has_body=body is not None)
        wire_headers = {"x-mte-relay": [header.format()], "x-mte-relay-eh": [item]}
        wire_headers.update(clear or {})
        sealed = None
        if body is not None:
            sealed = cipher.seal_body(body)
            wire_headers["content-type"] = ["application/octet-stream"]
        return header, wire_target, wire_headers, sealed

    def send(self, method: str, target: str, headers: dict[str, list[str]] | None = None,
             body: bytes | None = None, **options: Any) -> Sent:
        header, wire_target, wire_headers, sealed = self.wire(method, target, headers, body,
                                                              **options)
        return self.post_wire(method, header, wire_target, wire_headers, sealed)

    def post_wire(self, method: str, header: RelayHeader, target: str,
                  headers: dict[str, list[str]], body: bytes | None) -> Sent:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["data"] = body
        response, raw = self.relay.call(method, target, **kwargs)
        return Sent(header, response, raw, {"target": target, "headers": headers, "body": body})

    @staticmethod
    def open(sent: Sent, keys: PairKeys) -> tuple[dict[str, list[str]], bytes | None]:
        received = RelayHeader.parse(header_value(sent.response, "x-mte-relay"))
        expected = sent.header.for_response(mode=received.mode, body_enc=received.body_enc)
        assert received == expected, (received, expected)
        cipher = MessageCipher(keys, expected, Direction.S2C)
        headers = cipher.open_response_headers(header_value(sent.response, "x-mte-relay-eh"),
                                               sent.response.code)
        body = cipher.open_body(sent.body) if received.body_enc else None
        return headers, body


class HandshakeTests(SynchronousTestCase):
    def test_new_id(self) -> None:
        relay = MemoryRelay.build()
        response, _ = relay.call("HEAD", "/api/mte-relay")
        self.assertEqual(response.code, 200)
        client_id = header_value(response, "x-mte-relay")
        self.assertEqual(len(client_id), 101)
        self.assertEqual(header_value(response, "cache-control"), "no-store")
        again, _ = relay.call("HEAD", "/api/mte-relay", headers={"x-mte-relay": [client_id]})
        self.assertEqual(header_value(again, "x-mte-relay"), client_id)

    def test_previous_secret_is_resigned(self) -> None:
        relay = MemoryRelay.build(CLIENT_ID_SECRET_PREVIOUS=PREVIOUS)
        old = new_client_id(PREVIOUS.encode())
        response, _ = relay.call("HEAD", "/api/mte-relay", headers={"x-mte-relay": [old]})
        self.assertEqual(response.code, 200)
        renewed = header_value(response, "x-mte-relay")
        self.assertEqual(renewed[:36], old[:36])
        self.assertNotEqual(renewed, old)
        self.assertEqual(renewed, new_client_id(SECRET.encode(), lambda: __import__("uuid")
                                                .UUID(old[:36])))

    def test_invalid_id_is_566(self) -> None:
        relay = MemoryRelay.build()
        forged = new_client_id(b"some-other-secret-that-is-long-enough")
        for headers in ({"x-mte-relay": [forged]}, {"x-mte-relay": ["nonsense"]},
                        {"x-mte-relay": [new_client_id(SECRET.encode())] * 2}):
            response, body = relay.call("GET", "/api/mte-relay", headers=headers)
            self.assertEqual(response.code, 566, headers)
            self.assertEqual(json_of(body)["code"], 566)
            self.assertIsNone(header_value(response, "x-mte-relay"))

    def test_wrong_method(self) -> None:
        relay = MemoryRelay.build()
        response, body = relay.call("POST", "/api/mte-relay")
        self.assertEqual(response.code, 405)
        self.assertEqual(header_value(response, "allow"), "HEAD, GET")
        response, body = relay.call("GET", "/api/mte-pair")
        self.assertEqual(response.code, 405)
        self.assertEqual(json_of(body)["code"], 405)


class FailingStore(MemoryPairStore):
    """A store that is down: every call fails with StoreUnavailable."""

    def _down(self, *args: Any) -> Any:
        return fail(StoreUnavailable("redis is down"))

    create = get = accept = _down


class PairingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build(MAX_POOL_SIZE="4")
        self.client = Sealer(self.relay)

    def post(self, body: Any, headers: dict[str, list[str]] | None = None) -> tuple[Any, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response, raw = self.relay.call(
            "POST", "/api/mte-pair",
            headers=headers if headers is not None else {"x-mte-relay": [self.client.client_id]},
            data=data)
        return response, json_of(raw) if raw else None

    def entries(self, count: int) -> list[dict[str, Any]]:
        return [start_pairing(self.client.client_id[:36]).request_entry() for _ in range(count)]

    def test_pairs_are_stored(self) -> None:
        keys = self.client.pair(3)
        self.assertEqual(len({k.pair_id for k in keys}), 3)
        store = self.relay.root.store
        self.assertEqual(len(store), 3)
        sent = self.client.send("GET", "/api/items?page=2", keys=keys[1])
        self.assertEqual(sent.response.code, 200)

    def test_malformed_bodies(self) -> None:
        entries = self.entries(2)
        entries[1]["c2s"]["x25519"] = "AAAA"
        cases = [
            (b"not json", "$"),
            (b"{}", "$"),
            (b"[]", "$"),
            (self.entries(65), "$"),  # above the protocol's 64 (MAX_POOL_SIZE is no limit)
            ([1], "[0]"),
            (entries, "[1].c2s.x25519"),
        ]
        for body, field in cases:
            response, answer = self.post(body)
            self.assertEqual(response.code, 400, field)
            self.assertEqual(answer["field"], field)
            self.assertEqual(answer["code"], 400)
            self.assertIn("reason", answer)
        self.assertEqual(len(self.relay.root.store), 0)

    def test_unsupported_version(self) -> None:
        entries = self.entries(1)
        entries[0]["version"] = 2
        response, answer = self.post(entries)
        self.assertEqual(response.code, 567)
        self.assertEqual(answer["code"], 567)

    def test_client_id_required_and_verified(self) -> None:
        response, answer = self.post(self.entries(1), headers={})
        self.assertEqual(response.code, 569)
        forged = new_client_id(b"some-other-secret-that-is-long-enough")
        response, answer = self.post(self.entries(1), headers={"x-mte-relay": [forged]})
        self.assertEqual(response.code, 566)
        self.assertEqual(len(self.relay.root.store), 0)

    def test_body_size_capped(self) -> None:
        response, answer = self.post(b"[" + b" " * 400_000 + b"]")  # cap: 64 entries
        self.assertEqual(response.code, 413)
        self.assertEqual(answer["field"], "$")

    def test_rate_limited(self) -> None:
        # Burst is 4 s of PAIRING_CLIENT_RATE but at least one full batch (64),
        # refilled at PAIRING_CLIENT_RATE (4) per second.
        self.relay = MemoryRelay.build(MAX_POOL_SIZE="4", PAIRING_CLIENT_RATE="4")
        self.client = Sealer(self.relay)
        for _ in range(16):
            self.assertEqual(self.post(self.entries(4))[0].code, 200)
        response, answer = self.post(self.entries(1))
        self.assertEqual(response.code, 429)
        self.assertEqual(header_value(response, "retry-after"), "1")
        self.relay.clock.advance(1)
        self.assertEqual(self.post(self.entries(4))[0].code, 200)

    def test_store_down_is_503(self) -> None:
        relay = MemoryRelay.build(store=FailingStore(None))
        client = Sealer(relay)
        pending = start_pairing(client.client_id[:36])
        response, body = relay.call(
            "POST", "/api/mte-pair", headers={"x-mte-relay": [client.client_id]},
            data=json.dumps([pending.request_entry()]).encode())
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(body)["code"], 503)


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
