"""The clear x-mte-relay header: strict grammar, round trip, typed errors only."""

from __future__ import annotations

import uuid

import attrs
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.clientid import new_client_id
from mterelay.protocol.errors import InvalidClientId, MalformedHeader, RelayError
from mterelay.protocol.header import MAX_SEQ, RelayHeader, is_pair_id

CLIENT_ID = new_client_id(b"s" * 32, lambda: uuid.UUID("12345678-1234-4234-8234-123456789abc"))
PAIR = "pair_id-0123456789"


def value(*fields: str) -> str:
    return ",".join((CLIENT_ID, PAIR) + fields)


headers = st.builds(
    RelayHeader,
    client_id=st.just(CLIENT_ID),
    pair_id=st.text(alphabet="ABCxyz019_-", min_size=16, max_size=64),
    mode=st.sampled_from(["MTE", "MKE"]),
    url_enc=st.booleans(), headers_enc=st.booleans(), body_enc=st.booleans(),
    streaming=st.booleans(), seq=st.integers(0, MAX_SEQ))


class RelayHeaderTests(SynchronousTestCase):
    def test_parse(self) -> None:
        h = RelayHeader.parse(value("MKE", "1", "0", "1", "0", "12"))
        self.assertEqual(h, RelayHeader(CLIENT_ID, PAIR, "MKE", True, False, True, False, 12))
        self.assertEqual(h.flags_byte(), 0x01 | 0x02 | 0x08)
        self.assertEqual(h.flags_bytes(), b"\x0b")
        self.assertEqual(RelayHeader.parse(value("MKE", "1", "0", "1", "0", "12").encode()), h)
        self.assertEqual(RelayHeader.parse(" \t" + value("MKE", "1", "0", "1", "0", "12") + " "),
                         h)

    def test_all_flags(self) -> None:
        h = RelayHeader(CLIENT_ID, PAIR, "MTE", False, False, False, False, 0)
        self.assertEqual(h.flags_byte(), 0)
        self.assertEqual(attrs.evolve(h, streaming=True).flags_byte(), 0x10)
        self.assertEqual(attrs.evolve(h, headers_enc=True).flags_byte(), 0x04)

    def test_malformed(self) -> None:
        cases = {
            value("MTE", "1", "1", "1", "1"): "8 comma",
            value("MTE", "1", "1", "1", "1", "1", "1"): "8 comma",
            value("MTE", "1", "1", "1", "1", "01"): "seq",
            value("MTE", "1", "1", "1", "1", "-1"): "seq",
            value("MTE", "1", "1", "1", "1", "+1"): "seq",
            value("MTE", "1", "1", "1", "1", ""): "seq",
            value("MTE", "1", "1", "1", "1", str(MAX_SEQ + 1)): "seq",
            value("MTE", "1", "1", "1", "1", "1" * 17): "seq",
            value("MTE", "1", "1", "1", "1", "١"): "not ASCII",
            value("MTE", "1", "1", "1", "1", " 1"): "seq",
            value("mte", "1", "1", "1", "1", "1"): "mode",
            value("MTE", "true", "1", "1", "1", "1"): "urlEnc",
            value("MTE", "1", "2", "1", "1", "1"): "headersEnc",
            value("MTE", "1", "1", "", "1", "1"): "bodyEnc",
            value("MTE", "1", "1", "1", "01", "1"): "streaming",
            ",".join((CLIENT_ID, "short", "MTE", "1", "1", "1", "1", "1")): "pairId",
            ",".join((CLIENT_ID, "x" * 65, "MTE", "1", "1", "1", "1", "1")): "pairId",
            ",".join((CLIENT_ID, "pair.id.with.dots", "MTE", "1", "1", "1", "1", "1")): "pairId",
            "": "8 comma",
            value("MTE", "1", "1", "1", "1", "1") + "," * 100: "8 comma",
            value("MTE", "1", "1", "1", "1", "1") + "x" * 300: "too long",
        }
        for text, reason in cases.items():
            with self.assertRaises(MalformedHeader, msg=text) as ctx:
                RelayHeader.parse(text)
            self.assertEqual(ctx.exception.code, 568)
            self.assertIn(reason, ctx.exception.info, text)

    def test_malformed_bytes_and_types(self) -> None:
        for raw in (b"\xff" * 10, b"x" * 300, value("MTE", "1", "1", "1", "1", "\xe9").encode(
                "latin-1")):
            self.assertRaises(MalformedHeader, RelayHeader.parse, raw)
        self.assertRaises(MalformedHeader, RelayHeader.parse, None)  # type: ignore[arg-type]
        self.assertRaises(MalformedHeader, RelayHeader.parse, 5)  # type: ignore[arg-type]

    def test_length_limit_same_for_str_and_bytes(self) -> None:
        # A valid header padded past 256 characters with white space is
        # refused whether it arrives as bytes or as str (it used to pass as
        # str, because the str path trimmed before measuring).
        padded = value("MTE", "1", "1", "1", "1", "1") + " " * 256
        for raw in (padded, padded.encode("ascii")):
            with self.assertRaises(MalformedHeader) as ctx:
                RelayHeader.parse(raw)
            self.assertIn("too long", ctx.exception.info)
        with self.assertRaises(MalformedHeader) as ctx:
            RelayHeader.parse(value("MTE", "1", "1", "1", "1", "1") + "\u00e9")
        self.assertIn("not ASCII", ctx.exception.info)

    def test_bad_client_id_is_566(self) -> None:
        for cid in ("", "abc", CLIENT_ID.upper(), CLIENT_ID[:-1]):
            text = ",".join((cid, PAIR, "MTE", "1", "1", "1", "1", "1"))
            with self.assertRaises(InvalidClientId):
                RelayHeader.parse(text)

    def test_constructor_validates(self) -> None:
        good = dict(client_id=CLIENT_ID, pair_id=PAIR, mode="MTE", url_enc=True,
                    headers_enc=True, body_enc=True, streaming=False, seq=1)
        for name, bad in [("client_id", "x"), ("pair_id", "x"), ("mode", "ABC"),
                          ("url_enc", 1), ("seq", -1), ("seq", MAX_SEQ + 1), ("seq", True),
                          ("seq", 1.0)]:
            self.assertRaises(ValueError, RelayHeader, **dict(good, **{name: bad}))

    def test_for_response(self) -> None:
        h = RelayHeader(CLIENT_ID, PAIR, "MTE", True, True, True, True, 5)
        r = h.for_response(mode="MKE", body_enc=True)
        self.assertEqual((r.client_id, r.pair_id, r.seq, r.streaming), (CLIENT_ID, PAIR, 5, True))
        self.assertEqual((r.mode, r.url_enc, r.headers_enc), ("MKE", False, True))
        self.assertRaises(ValueError, attrs.evolve(h, streaming=False).for_response,
                          mode="MKE", body_enc=True)

    def test_for_response_checks_its_own_arguments(self) -> None:
        h = RelayHeader(CLIENT_ID, PAIR, "MTE", True, True, True, True, 5, True)
        for bad in (dict(mode="ABC", body_enc=True), dict(mode="MKE", body_enc=1),
                    dict(mode="MKE", body_enc=True, headers_enc=None)):
            self.assertRaises(ValueError, h.for_response, **bad)

    def test_built_without_validators_equals_validated(self) -> None:
        # parse and for_response skip the attrs validators: the instances
        # must still be indistinguishable from validated ones.
        wire = RelayHeader.parse(value("MKR", "1", "1", "1", "2", "77"))
        built = RelayHeader(CLIENT_ID, PAIR, "MKR", True, True, True, True, 77, True)
        self.assertEqual(wire, built)
        self.assertEqual(hash(wire), hash(built))
        self.assertEqual(attrs.asdict(wire), attrs.asdict(built))
        response = wire.for_response(mode="MKR", body_enc=False)
        self.assertEqual(response, attrs.evolve(built, url_enc=False, body_enc=False))
        self.assertEqual(hash(response), hash(attrs.evolve(built, url_enc=False, body_enc=False)))
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, wire, "seq", 1)
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, response, "seq", 1)

    def test_client_id_checked_once(self) -> None:
        # The client-id grammar (the costliest check) runs once per parsed
        # header and not again when the relay builds its answer's header.
        import mterelay.protocol.header as header_module

        calls: list[object] = []
        real = header_module.is_client_id

        def counting(value: object) -> bool:
            calls.append(value)
            return real(value)

        self.patch(header_module, "is_client_id", counting)
        h = RelayHeader.parse(value("MKE", "1", "1", "1", "1", "9"))
        self.assertEqual(len(calls), 1)
        h.for_response(mode="MKE", body_enc=True)
        self.assertEqual(len(calls), 1)

    def test_pair_id(self) -> None:
        self.assertTrue(is_pair_id("a" * 16))
        self.assertTrue(is_pair_id("A-_" * 21 + "z"))
        self.assertFalse(is_pair_id("a" * 15))
        self.assertFalse(is_pair_id("a" * 65))
        self.assertFalse(is_pair_id("a" * 15 + "\n"))
        self.assertFalse(is_pair_id(None))

    @settings(max_examples=200)
    @given(headers)
    def test_round_trip(self, h: RelayHeader) -> None:
        self.assertEqual(RelayHeader.parse(h.format()), h)
        self.assertEqual(RelayHeader.parse(h.format().encode("ascii")), h)

    @settings(max_examples=300)
    @given(st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.lists(st.sampled_from([CLIENT_ID, PAIR, "MTE", "MKE", "0", "1", "2", "", "00",
                                  "9007199254740991", "9007199254740992", " ", "x"]),
                 max_size=10).map(",".join),
    ))
    def test_garbage_only_typed_errors(self, garbage: str | bytes) -> None:
        try:
            h = RelayHeader.parse(garbage)
        except RelayError as e:
            self.assertIn(e.code, (566, 568))
        else:
            self.assertEqual(RelayHeader.parse(h.format()), h)
