"""Sealing a request and opening a response, against the relay's half of the core."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from mterelay.client.messages import (SealOptions, end_to_end, normalize_headers,
                                      open_response, parse_relay_error, seal_request)
from mterelay.protocol.errors import DecodeFailed, EncodeFailed, StateNotFound, UnsupportedVersion
from mterelay.protocol.header import MODE_MKE, MODE_MTE, RelayHeader
from mterelay.protocol.sealing import Direction, MessageCipher
from tests.helpers.clientsupport import paired_keys

HEADERS = [("content-type", "application/json"), ("x-api-key", "k-1"),
           ("accept", "a/b"), ("accept", "c/d")]


class RelaySide:
    """What the inbound relay does with a sealed request, using the core directly."""

    def __init__(self, relay_keys, outgoing, method: str) -> None:
        wire = dict((n, v) for n, v in outgoing.headers if n.startswith("x-mte-relay"))
        self.header = RelayHeader.parse(wire["x-mte-relay"])
        self.cipher = MessageCipher(relay_keys, self.header, Direction.C2S)
        self.target = (self.cipher.open_url(outgoing.target[1:]) if self.header.url_enc
                       else outgoing.target)
        self.sealed = self.cipher.open_request_headers(
            wire["x-mte-relay-eh"], method, outgoing.target, has_body=outgoing.has_body)
        self.relay_keys = relay_keys

    def answer(self, status: int, headers: dict, *, mode: str = MODE_MKE,
               body_enc: bool = True, clear=()) -> list[tuple[str, str]]:
        reply = self.header.for_response(mode=mode, body_enc=body_enc)
        cipher = MessageCipher(self.relay_keys, reply, Direction.S2C)
        token = cipher.seal_response_headers(headers, status)
        self.response_cipher = cipher
        return [("x-mte-relay", reply.format()), ("x-mte-relay-eh", token), *clear]


class SealRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client_id, self.keys, self.relay_keys = paired_keys()

    def seal(self, method="POST", target="/api/login?next=%2Fhome", headers=HEADERS,
             has_body=True, seq=7, **options):
        return seal_request(self.keys, self.client_id, seq, method, target, list(headers),
                            has_body=has_body, options=SealOptions.build(**options))

    def test_seal_everything_by_default(self) -> None:
        out = self.seal()
        self.assertEqual(out.header, RelayHeader(self.client_id, self.keys.pair_id, MODE_MKE,
                                                 True, True, True, True, 7))
        names = [n for n, _ in out.headers]
        self.assertEqual(names, ["x-mte-relay", "x-mte-relay-eh", "content-type"])
        self.assertIn(("content-type", "application/octet-stream"), out.headers)
        self.assertNotIn("login", out.target)
        relay = RelaySide(self.relay_keys, out, "POST")
        self.assertEqual(relay.target, "/api/login?next=%2Fhome")
        self.assertEqual(relay.sealed, {"content-type": ["application/json"],
                                        "x-api-key": ["k-1"], "accept": ["a/b", "c/d"]})

    def test_body_round_trip(self) -> None:
        out = self.seal()
        sealer = out.cipher.body_sealer()
        data = bytes(range(256)) * 1000
        sealed = sealer.feed(data[:1000]) + sealer.feed(data[1000:]) + sealer.finish()
        relay = RelaySide(self.relay_keys, out, "POST")
        self.assertEqual(relay.cipher.open_body(sealed), data)

    def test_no_body(self) -> None:
        out = self.seal(method="GET", has_body=False)
        self.assertFalse(out.header.body_enc)
        self.assertEqual(out.header.mode, MODE_MTE, "with no body the mode frames nothing: MTE")
        self.assertNotIn("application/octet-stream", [v for _, v in out.headers])
        RelaySide(self.relay_keys, out, "GET")  # opens with has_body=False

    def test_mte_framing(self) -> None:
        out = self.seal(framing="MTE")
        self.assertEqual(out.header.mode, MODE_MTE)
        self.assertTrue(out.header.streaming, "responses may still stream")

    def test_seal_headers_none(self) -> None:
        out = self.seal(seal_headers="none")
        self.assertFalse(out.header.headers_enc)
        relay = RelaySide(self.relay_keys, out, "POST")
        self.assertEqual(relay.sealed, {"content-type": ["application/json"]})
        self.assertEqual([(n, v) for n, v in out.headers if not n.startswith(("x-mte", "content"))],
                         [("x-api-key", "k-1"), ("accept", "a/b"), ("accept", "c/d")])

    def test_seal_headers_list(self) -> None:
        out = self.seal(seal_headers=["X-Api-Key"])
        self.assertTrue(out.header.headers_enc)
        relay = RelaySide(self.relay_keys, out, "POST")
        self.assertEqual(relay.sealed, {"content-type": ["application/json"],
                                        "x-api-key": ["k-1"]})
        self.assertIn(("accept", "c/d"), out.headers)
        self.assertNotIn(("x-api-key", "k-1"), out.headers)

    def test_clear_url(self) -> None:
        out = self.seal(seal_url=False)
        self.assertFalse(out.header.url_enc)
        self.assertEqual(out.target, "/api/login?next=%2Fhome")
        self.assertEqual(RelaySide(self.relay_keys, out, "POST").target, out.target)

    def test_response_headers_selection(self) -> None:
        out = self.seal(response_headers=["ETag", "x-total"])
        relay = RelaySide(self.relay_keys, out, "POST")
        self.assertEqual(relay.sealed["x-mte-response-headers"], ["etag,x-total"])
        clear = self.seal(seal_headers="none", response_headers=["etag"])
        self.assertIn(("x-mte-response-headers", "etag"), clear.headers)

    def test_headers_item_is_bound_to_the_request_line(self) -> None:
        out = self.seal()
        relay = MessageCipher(self.relay_keys, out.header, Direction.C2S)
        token = dict(out.headers)["x-mte-relay-eh"]
        for method, target, has_body in (("DELETE", out.target, True),
                                         ("POST", "/other", True),
                                         ("POST", out.target, False)):
            with self.assertRaises(DecodeFailed):
                relay.open_request_headers(token, method, target, has_body=has_body)

    def test_unsealable_target_is_561(self) -> None:
        with self.assertRaises(EncodeFailed):
            self.seal(target="/a b")

    def test_options_are_validated(self) -> None:
        for bad in (dict(framing="XYZ"), dict(seal_headers="some"), dict(seal_url=1),
                    dict(response_headers="etag"), dict(seal_headers=[""])):
            with self.assertRaises(ValueError, msg=repr(bad)):
                SealOptions.build(**bad)


class HeaderInputTests(SynchronousTestCase):
    def test_normalize_dict_and_headers(self) -> None:
        self.assertEqual(
            normalize_headers({"Accept": ["a", b"b"], b"X-One": "1", "x-raw": b"\xff"}),
            [("accept", "a"), ("accept", "b"), ("x-one", "1"), ("x-raw", "\xff")])
        self.assertEqual(normalize_headers(Headers({b"X-A": [b"1", b"2"]})),
                         [("x-a", "1"), ("x-a", "2")])
        self.assertEqual(normalize_headers(None), [])
        with self.assertRaises(TypeError):
            normalize_headers([("a", "b")])  # type: ignore[arg-type]

    def test_end_to_end_drops_hop_by_hop_framing_and_protocol_headers(self) -> None:
        headers = [("connection", "close, x-hop"), ("x-hop", "1"), ("keep-alive", "5"),
                   ("host", "h"), ("content-length", "3"), ("transfer-encoding", "chunked"),
                   ("te", "trailers"), ("x-mte-relay", "forged"), ("x-keep", "yes")]
        self.assertEqual(end_to_end(headers), [("x-keep", "yes")])


class OpenResponseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client_id, self.keys, self.relay_keys = paired_keys()
        self.out = seal_request(self.keys, self.client_id, 42, "GET", "/x", [],
                                has_body=False, options=SealOptions())
        self.relay = RelaySide(self.relay_keys, self.out, "GET")

    CLEAR = [("content-type", "application/octet-stream"), ("content-length", "21"),
             ("x-a", "clear"), ("x-b", "clear"), ("set-cookie", "injected=1"),
             ("connection", "keep-alive, x-hop"), ("x-hop", "1"), ("x-mte-other", "1")]

    def test_round_trip_exposes_only_sealed_headers(self) -> None:
        # Before the fix the clear x-b and set-cookie were merged in, as if
        # the upstream had sent them (finding 4).
        wire = self.relay.answer(201, {"content-type": ["text/plain"], "x-a": ["sealed"]},
                                 clear=self.CLEAR)
        opened = open_response(self.keys, self.out.header, 201, wire)
        self.assertEqual(sorted(opened.headers), [("content-type", "text/plain"),
                                                  ("x-a", "sealed")])
        self.assertEqual(sorted(opened.clear), [("set-cookie", "injected=1"),
                                                ("x-a", "clear"), ("x-b", "clear")])
        sealed = self.relay.response_cipher.seal_body(b"hello")
        self.assertEqual(opened.cipher.open_body(sealed), b"hello")

    def test_clear_headers_taken_only_when_asked_for_and_never_over_sealed(self) -> None:
        wire = self.relay.answer(201, {"content-type": ["text/plain"], "x-a": ["sealed"]},
                                 clear=self.CLEAR + [("etag", "forged")])
        opened = open_response(self.keys, self.out.header, 201, wire, ("x-a", "etag"))
        # x-a is sealed (the clear one is dropped, not added); etag was asked
        # to be sealed, so a clear one is not the relay's; the rest was asked
        # to come in clear.
        self.assertEqual(sorted(opened.headers), [
            ("content-type", "text/plain"), ("set-cookie", "injected=1"), ("x-a", "sealed"),
            ("x-b", "clear")])

    def test_wrong_status_fails(self) -> None:
        wire = self.relay.answer(200, {})
        with self.assertRaises(DecodeFailed):
            open_response(self.keys, self.out.header, 500, wire)

    def mismatch(self, **changes) -> None:
        # The items are sealed correctly; only the clear header lies.  Opening
        # under our own request's values would succeed: the check must refuse.
        expected = self.out.header.for_response(mode=MODE_MTE, body_enc=True)
        token = MessageCipher(self.relay_keys, expected, Direction.S2C) \
            .seal_response_headers({}, 200)
        lying = attrs.evolve(expected, **changes)
        with self.assertRaises(DecodeFailed, msg=repr(changes)):
            open_response(self.keys, self.out.header, 200,
                          [("x-mte-relay", lying.format()), ("x-mte-relay-eh", token)])
        open_response(self.keys, self.out.header, 200,
                      [("x-mte-relay", expected.format()), ("x-mte-relay-eh", token)])

    def test_header_mismatches_are_562(self) -> None:
        other_id, _, _ = paired_keys()
        for changes in (dict(seq=43), dict(pair_id="P" * 22), dict(streaming=False),
                        dict(url_enc=True), dict(headers_enc=False), dict(client_id=other_id)):
            self.mismatch(**changes)

    def test_mke_response_needs_streaming_request(self) -> None:
        request = attrs.evolve(self.out.header, streaming=False)
        reply = attrs.evolve(request, mode=MODE_MKE, url_enc=False)
        with self.assertRaises(DecodeFailed):
            open_response(self.keys, request, 200,
                          [("x-mte-relay", reply.format()), ("x-mte-relay-eh", "AAAA")])

    def test_malformed_or_missing_relay_headers(self) -> None:
        good = self.relay.answer(200, {})
        for wire in ([("x-mte-relay", "nonsense"), good[1]],
                     [good[0]],
                     [good[0], good[0], good[1]],
                     [good[0], ("x-mte-relay-eh", good[1][1][:-2] + "AA")]):
            with self.assertRaises(DecodeFailed, msg=repr(wire)[:80]):
                open_response(self.keys, self.out.header, 200, wire)

    def test_relay_error_bodies(self) -> None:
        error = parse_relay_error(560, b'{"error":"State not found.","code":560,"info":"expired"}')
        self.assertIsInstance(error, StateNotFound)
        self.assertEqual(error.info, "expired")
        self.assertEqual(parse_relay_error(567, b'{"reason":"v2"}').info, "v2")
        self.assertIsInstance(parse_relay_error(567, b"<html>"), UnsupportedVersion)
