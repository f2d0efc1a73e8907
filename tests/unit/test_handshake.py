"""The handshake routes (web/handshake.py), driven in memory: ``HEAD /api/mte-relay``
hands out or re-signs client ids, ``POST /api/mte-pair`` pairs; every refusal is a
status and a JSON body naming the problem, and nothing is stored."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from mterelay.protocol.clientid import new_client_id
from mterelay.protocol.header import FIXED_PATH, FIXED_PATH_HEADER, FRAMING_HEADER, RELAY_FRAMINGS
from mterelay.protocol.pairing import MAX_PAIRS_PER_REQUEST, start_pairing
from mterelay.web.handshake import BYTES_PER_ENTRY, single_header
from tests.helpers.sealer import Sealer, header_value
from tests.helpers.support import SECRET, FailingStore, MemoryRelay, json_of

PREVIOUS = "a-previous-client-id-secret-0123456789"


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


class SingleHeaderTests(SynchronousTestCase):
    def test_none_one_or_refused(self) -> None:
        request = DummyRequest([b""])
        self.assertIsNone(single_header(request, b"x-mte-relay"))
        request.requestHeaders.setRawHeaders(b"x-mte-relay", [b"id"])
        self.assertEqual(single_header(request, b"x-mte-relay"), b"id")
        request.requestHeaders.setRawHeaders(b"x-mte-relay", [b"id", b"id"])
        self.assertRaises(ValueError, single_header, request, b"x-mte-relay")


class RelayHeadRuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build()

    def test_announces_framings_and_the_fixed_path(self) -> None:
        response, body = self.relay.call("HEAD", "/api/mte-relay")
        self.assertEqual(body, b"")
        self.assertEqual(header_value(response, FRAMING_HEADER), RELAY_FRAMINGS)
        self.assertEqual(header_value(response, FIXED_PATH_HEADER), FIXED_PATH)

    def test_presented_id_may_carry_surrounding_blanks(self) -> None:
        client_id = new_client_id(SECRET.encode())
        response, _ = self.relay.call("HEAD", "/api/mte-relay",
                                      headers={"x-mte-relay": [f" \t{client_id} "]})
        self.assertEqual(response.code, 200)
        self.assertEqual(header_value(response, "x-mte-relay"), client_id)

    def test_refusals_name_the_problem(self) -> None:
        client_id = new_client_id(SECRET.encode())
        response, body = self.relay.call("HEAD", "/api/mte-relay",
                                         headers={"x-mte-relay": [client_id, client_id]})
        self.assertEqual(response.code, 566)
        answer = json_of(self.relay.call("GET", "/api/mte-relay",
                                         headers={"x-mte-relay": [client_id, client_id]})[1])
        self.assertEqual(answer["code"], 566)
        self.assertEqual(answer["reason"], "x-mte-relay sent more than once")
        answer = json_of(self.relay.call("GET", "/api/mte-relay",
                                         headers={"x-mte-relay": ["nonsense"]})[1])
        self.assertEqual(answer["code"], 566)
        self.assertIn("error", answer)
        self.assertTrue(answer["reason"])
        self.assertEqual(self.relay.upstream.received, [])


class PairRuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build()
        self.client = Sealer(self.relay)
        self.store = self.relay.root.store

    def post(self, entries: list[dict[str, Any]] | bytes,
             headers: dict[str, list[str]] | None = None) -> tuple[Any, Any]:
        data = entries if isinstance(entries, bytes) else json.dumps(entries).encode()
        response, raw = self.relay.call(
            "POST", "/api/mte-pair", data=data,
            headers=headers if headers is not None else {"x-mte-relay": [self.client.client_id]})
        return response, json_of(raw)

    def entry(self, pair_id: str | None = None) -> dict[str, Any]:
        entry = start_pairing(self.client.client_id[:36]).request_entry()
        if pair_id is not None:
            entry["pairId"] = pair_id
        return entry

    def test_answer_is_one_entry_per_pair_and_the_keys_are_cached(self) -> None:
        entries = [self.entry(), self.entry()]
        response, answer = self.post(entries)
        self.assertEqual(response.code, 200)
        self.assertEqual([a["pairId"] for a in answer], [e["pairId"] for e in entries])
        self.assertEqual(len(self.store), 2)
        for entry in entries:
            self.assertIsNotNone(self.relay.root.keys.peek(self.client.client_id[:36],
                                                           entry["pairId"]))

    def test_client_id_sent_twice_is_566(self) -> None:
        response, answer = self.post([self.entry()], headers={
            "x-mte-relay": [self.client.client_id, self.client.client_id]})
        self.assertEqual(response.code, 566)
        self.assertEqual(answer["reason"], "x-mte-relay sent more than once")
        self.assertEqual(len(self.store), 0)

    def test_missing_client_id_names_the_header(self) -> None:
        response, answer = self.post([self.entry()], headers={})
        self.assertEqual(response.code, 569)
        self.assertEqual(answer["code"], 569)
        self.assertIn("x-mte-relay", answer["reason"])

    def test_declared_length_over_the_cap_is_refused_naming_the_limit(self) -> None:
        limit = MAX_PAIRS_PER_REQUEST * BYTES_PER_ENTRY
        response, answer = self.post(b"[" + b" " * limit + b"]")
        self.assertEqual(response.code, 413)
        self.assertEqual(answer["code"], 413)
        self.assertEqual(answer["field"], "$")
        self.assertIn(f"at most {limit} bytes", answer["reason"])
        self.assertEqual(len(self.store), 0)

    def test_pair_id_in_use_is_409_and_nothing_is_stored(self) -> None:
        [taken] = self.client.pair(1)
        response, answer = self.post([self.entry(), self.entry(taken.pair_id)])
        self.assertEqual(response.code, 409)
        self.assertEqual(answer["code"], 409)
        self.assertEqual(answer["field"], "[1].pairId")
        self.assertIn("already in use", answer["reason"])
        self.assertEqual(len(self.store), 1)  # the batch is undone; the old pair is untouched
        sent = self.client.send("GET", "/api/items", keys=taken)
        self.assertEqual(sent.response.code, 200)

    def test_store_down_names_the_problem(self) -> None:
        relay = MemoryRelay.build(store=FailingStore(None))
        client = Sealer(relay)
        response, raw = relay.call(
            "POST", "/api/mte-pair", headers={"x-mte-relay": [client.client_id]},
            data=json.dumps([start_pairing(client.client_id[:36]).request_entry()]).encode())
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(raw), {"error": "Pair store unavailable", "code": 503,
                                        "reason": "the relay cannot store pairs right now; retry",
                                        "upstreamReached": "no"})
