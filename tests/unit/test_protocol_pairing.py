"""Hybrid pairing and the PairKeys blob."""

from __future__ import annotations

import copy
import json

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol import pairing
from mterelay.protocol.encoding import b64decode, b64encode
from mterelay.protocol.errors import (MalformedPairRequest, MalformedPairResponse,
                                      StateNotFound, UnsupportedVersion)
from mterelay.protocol.keys import PairKeys

CLIENT = "12345678-1234-4234-8234-123456789abc"
OTHER_CLIENT = "22345678-1234-4234-8234-123456789abc"

# Generating ML-KEM keys is the slow part; share one pairing across tests.
PENDING = pairing.start_pairing(CLIENT, "pair-0123456789abcdef")
ENTRY = PENDING.request_entry()
RESPONSE, RELAY_KEYS = pairing.respond(CLIENT, ENTRY)

# A point of order 8 on Curve25519 (not all-zero, still low order).
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def mutated(entry: dict, path: list, value: object) -> dict:
    entry = copy.deepcopy(entry)
    target = entry
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return entry


class PairingTests(SynchronousTestCase):
    def test_agreement(self) -> None:
        keys = PENDING.finish(RESPONSE)
        self.assertEqual(keys, RELAY_KEYS)
        self.assertEqual((keys.version, keys.client_id, keys.pair_id),
                         (1, CLIENT, "pair-0123456789abcdef"))
        self.assertNotEqual(keys.c2s_key, keys.s2c_key)
        for secret in (keys.c2s_key, keys.s2c_key):
            self.assertNotIn(repr(secret), repr(keys))
        self.assertNotIn(repr(PENDING.c2s.x25519_private), repr(PENDING))
        self.assertNotIn(repr(PENDING.c2s.mlkem_seed), repr(PENDING))

    def test_entry_shape(self) -> None:
        self.assertEqual(set(ENTRY), {"version", "pairId", "c2s", "s2c"})
        self.assertEqual(len(b64decode(ENTRY["c2s"]["mlkem768"], "m")), 1184)
        self.assertEqual(len(b64decode(ENTRY["s2c"]["personalization"], "p")), 32)
        self.assertEqual(set(RESPONSE["c2s"]), {"x25519", "mlkem768", "nonce"})
        self.assertEqual(len(b64decode(RESPONSE["s2c"]["mlkem768"], "c")), 1088)
        json.dumps(ENTRY)
        json.dumps(RESPONSE)

    def test_fresh_randomness(self) -> None:
        response2, keys2 = pairing.respond(CLIENT, ENTRY)
        self.assertNotEqual(response2["c2s"]["nonce"], RESPONSE["c2s"]["nonce"])
        self.assertNotEqual(keys2.c2s_key, RELAY_KEYS.c2s_key)
        self.assertEqual(PENDING.finish(response2), keys2)

    def test_client_id_is_bound(self) -> None:
        """A relay answering under another client id derives other keys."""
        response, keys = pairing.respond(OTHER_CLIENT, ENTRY)
        self.assertEqual(keys.client_id, OTHER_CLIENT)
        mine = PENDING.finish(response)
        self.assertNotEqual(mine.c2s_key, keys.c2s_key)
        self.assertNotEqual(mine.s2c_key, keys.s2c_key)

    def test_transcript_tamper_changes_keys(self) -> None:
        """Any altered response value yields keys the relay does not have."""
        for path in (["c2s", "nonce"], ["s2c", "nonce"], ["c2s", "x25519"],
                     ["s2c", "mlkem768"]):
            raw = bytearray(b64decode(RESPONSE[path[0]][path[1]], "x"))
            raw[1] ^= 0x01
            keys = PENDING.finish(mutated(RESPONSE, path, b64encode(bytes(raw))))
            self.assertNotEqual(keys.c2s_key, RELAY_KEYS.c2s_key, path)
            self.assertNotEqual(keys.s2c_key, RELAY_KEYS.s2c_key, path)

    def test_deterministic(self) -> None:
        c = pairing.ClientDirectionSecrets(b"\x01" * 32, b"\x02" * 64, b"\x03" * 16)
        p1 = pairing.pairing_from_secrets(CLIENT, "a" * 16, c, c)
        p2 = pairing.pairing_from_secrets(CLIENT, "a" * 16, c, c)
        self.assertEqual(p1.request_entry(), p2.request_entry())
        self.assertRaises(ValueError, pairing.pairing_from_secrets, "not-a-uuid", "a" * 16, c, c)
        self.assertRaises(ValueError, pairing.pairing_from_secrets, CLIENT, "short", c, c)
        self.assertRaises(ValueError, pairing.pairing_from_secrets, CLIENT, "a" * 16, c, c,
                          version=2)
        for bad in [dict(x25519_private=b"1" * 31), dict(mlkem_seed=b"1" * 32),
                    dict(personalization=b"1" * 15), dict(personalization=b"1" * 65)]:
            args = dict(x25519_private=b"1" * 32, mlkem_seed=b"1" * 64,
                        personalization=b"1" * 16)
            args.update(bad)
            self.assertRaises(ValueError, pairing.ClientDirectionSecrets, **args)
        self.assertRaises(ValueError, pairing.RelayDirectionSecrets, b"1" * 32, b"2" * 32,
                          b"3" * 1088, None)
        self.assertRaises(ValueError, pairing.RelayDirectionSecrets, b"1" * 32, b"2" * 32,
                          b"3" * 1087, b"4" * 32)

    def test_new_pair_id(self) -> None:
        a = pairing.new_pair_id()
        self.assertEqual(len(a), 22)
        self.assertNotEqual(a, pairing.new_pair_id())
        self.assertEqual(len(pairing.start_pairing(CLIENT).pair_id), 22)

    def test_respond_requires_bare_uuid(self) -> None:
        self.assertRaises(ValueError, pairing.respond, CLIENT + ".abc", ENTRY)
        self.assertRaises(ValueError, pairing.respond_all, "x", json.dumps([ENTRY]))


class RequestValidationTests(SynchronousTestCase):
    def check(self, entry: object, field: str, reason: str = "") -> None:
        with self.assertRaises(MalformedPairRequest) as ctx:
            pairing.respond(CLIENT, entry)
        self.assertEqual(ctx.exception.field, field)
        self.assertIn(reason, ctx.exception.reason)

    def test_types(self) -> None:
        self.check([], "", "object")
        self.check(None, "", "object")
        self.check(mutated(ENTRY, ["c2s"], "x"), "c2s", "object")
        self.check(mutated(ENTRY, ["version"], "1"), "version", "integer")
        self.check(mutated(ENTRY, ["version"], True), "version", "integer")
        self.check(mutated(ENTRY, ["version"], 1.5), "version", "integer")
        self.check(mutated(ENTRY, ["version"], None), "version", "integer")
        self.check(mutated(ENTRY, ["c2s", "x25519"], 5), "c2s.x25519", "string")

    def test_missing_and_unknown(self) -> None:
        self.check(mutated(ENTRY, ["pairId"], KeyError), "pairId", "missing")
        self.check(mutated(ENTRY, ["s2c", "personalization"], KeyError),
                   "s2c.personalization", "missing")
        self.check(mutated(ENTRY, ["extra"], 1), "extra", "unknown")
        self.check(mutated(ENTRY, ["s2c", "nonce"], "AAAA"), "s2c.nonce", "unknown")

    def test_version(self) -> None:
        for other in (2, 2.0, 0, -1, 10 ** 30):
            with self.assertRaises(UnsupportedVersion) as ctx:
                pairing.respond(CLIENT, mutated(ENTRY, ["version"], other))
            self.assertEqual(ctx.exception.code, 567)

    def test_version_is_the_number_one_however_spelled(self) -> None:
        """JSON.parse cannot tell 1 from 1.0 or 1e0, so neither may the relay (spec 4.1)."""
        body = json.dumps([ENTRY])
        for spelling in ("1.0", "1e0", "10e-1", "1.00"):
            text = body.replace('"version": 1', '"version": ' + spelling, 1)
            self.assertNotEqual(text, body)
            [answer], _ = pairing.respond_all(CLIENT, text)
            self.assertIs(type(answer["version"]), int)  # answered as the integer 1
            self.assertEqual(answer["version"], 1)

    def test_not_json_for_a_browser_is_not_json_here(self) -> None:
        """NaN and Infinity literals: json.loads takes them, JSON.parse does not."""
        body = json.dumps([ENTRY])
        for literal in ("NaN", "Infinity", "-Infinity"):
            text = body.replace('"version": 1', '"version": ' + literal, 1)
            with self.assertRaises(MalformedPairRequest) as ctx:
                pairing.respond_all(CLIENT, text)
            self.assertEqual(ctx.exception.field, "$")

    def test_duplicate_names_keep_the_last_value(self) -> None:
        """As JSON.parse does: a client need not (and cannot) detect duplicates."""
        body = json.dumps([ENTRY])
        text = body.replace('"version": 1', '"version": 7, "version": 1', 1)
        [answer], _ = pairing.respond_all(CLIENT, text)
        self.assertEqual(answer["version"], 1)

    def test_pair_id(self) -> None:
        for bad in ("a" * 15, "a" * 65, "a" * 15 + "!", 12, None, "a" * 16 + "\n"):
            self.check(mutated(ENTRY, ["pairId"], bad), "pairId")

    def test_sizes(self) -> None:
        x = b64decode(ENTRY["c2s"]["x25519"], "x")
        ek = b64decode(ENTRY["c2s"]["mlkem768"], "m")
        self.check(mutated(ENTRY, ["c2s", "x25519"], b64encode(x + b"\0")), "c2s.x25519", "32")
        self.check(mutated(ENTRY, ["c2s", "mlkem768"], b64encode(ek[:-1])), "c2s.mlkem768",
                   "1184")
        self.check(mutated(ENTRY, ["s2c", "personalization"], b64encode(b"x" * 15)),
                   "s2c.personalization", "16..64")
        self.check(mutated(ENTRY, ["s2c", "personalization"], b64encode(b"x" * 65)),
                   "s2c.personalization", "16..64")
        for n in (16, 64):
            pairing.respond(CLIENT, mutated(ENTRY, ["s2c", "personalization"],
                                            b64encode(b"x" * n)))

    def test_base64(self) -> None:
        good = ENTRY["c2s"]["x25519"]
        for bad in (good + "=", good.replace(good[0], "+"), " " + good, ""):
            self.check(mutated(ENTRY, ["c2s", "x25519"], bad), "c2s.x25519")

    def test_bad_mlkem_key(self) -> None:
        ek = b64decode(ENTRY["s2c"]["mlkem768"], "m")
        self.check(mutated(ENTRY, ["s2c", "mlkem768"], b64encode(b"\xff" * 1184)),
                   "s2c.mlkem768", "encapsulation key")
        self.check(mutated(ENTRY, ["s2c", "mlkem768"], b64encode(b"\xff\xff\xff" + ek[3:])),
                   "s2c.mlkem768", "encapsulation key")

    def test_low_order_x25519(self) -> None:
        for point in (bytes(32), b"\x01" + bytes(31), LOW_ORDER):
            self.check(mutated(ENTRY, ["c2s", "x25519"], b64encode(point)), "c2s.x25519",
                       "low-order")


class BatchTests(SynchronousTestCase):
    def test_respond_all(self) -> None:
        other = pairing.start_pairing(CLIENT)
        body = json.dumps([ENTRY, other.request_entry()]).encode()
        responses, keys = pairing.respond_all(CLIENT, body)
        self.assertEqual(len(responses), 2)
        self.assertEqual(PENDING.finish(responses[0]), keys[0])
        self.assertEqual(other.finish(responses[1]), keys[1])

    def test_body_errors(self) -> None:
        for body, reason in [(b"{", "JSON"), (b"\xff", "JSON"), (b"{}", "array"),
                             (json.dumps([ENTRY]).encode("utf-16"), "JSON"),
                             (b"[]", "1..64"), (json.dumps([ENTRY] * 65), "1..64"),
                             (b"[" * 100000 + b"]" * 100000, "")]:
            with self.assertRaises(MalformedPairRequest) as ctx:
                pairing.respond_all(CLIENT, body)
            self.assertEqual(ctx.exception.field, "$")
            self.assertIn(reason, ctx.exception.reason)
        self.assertRaises(MalformedPairRequest, pairing.parse_pair_requests, b"[1, 2]", 1)

    def test_indexed_fields(self) -> None:
        bad = mutated(ENTRY, ["s2c", "nonce"], "x")
        with self.assertRaises(MalformedPairRequest) as ctx:
            pairing.respond_all(CLIENT, json.dumps([ENTRY, bad]))
        self.assertEqual(ctx.exception.field, "[1].s2c.nonce")
        with self.assertRaises(MalformedPairRequest) as ctx:
            pairing.respond_all(CLIENT, json.dumps([ENTRY, 5]))
        self.assertEqual(ctx.exception.field, "[1]")
        with self.assertRaises(MalformedPairRequest) as ctx:
            pairing.respond_all(CLIENT, json.dumps([ENTRY, ENTRY]))
        self.assertEqual((ctx.exception.field, ctx.exception.reason),
                         ("[1].pairId", "duplicate pair id"))
        low = mutated(ENTRY, ["c2s", "x25519"], b64encode(bytes(32)))
        low["pairId"] = "another-pair-id-0"
        with self.assertRaises(MalformedPairRequest) as ctx:
            pairing.respond_all(CLIENT, json.dumps([ENTRY, low]))
        self.assertEqual(ctx.exception.field, "[1].c2s.x25519")


class ResponseValidationTests(SynchronousTestCase):
    def check(self, response: object, field: str) -> None:
        with self.assertRaises(MalformedPairResponse) as ctx:
            PENDING.finish(response)
        self.assertEqual(ctx.exception.field, field)

    def test_errors(self) -> None:
        self.check([], "")
        self.check(mutated(RESPONSE, ["version"], 2), "version")
        self.check(mutated(RESPONSE, ["version"], True), "version")
        self.check(mutated(RESPONSE, ["version"], 1.5), "version")

    def test_version_one_point_zero_is_accepted(self) -> None:
        PENDING.finish(mutated(RESPONSE, ["version"], 1.0))
        self.check(mutated(RESPONSE, ["pairId"], "other-pair-id-000"), "pairId")
        self.check(mutated(RESPONSE, ["c2s", "nonce"], "AA"), "c2s.nonce")
        self.check(mutated(RESPONSE, ["s2c", "mlkem768"], "AAAA"), "s2c.mlkem768")
        self.check(mutated(RESPONSE, ["s2c", "personalization"], "AAAA"),
                   "s2c.personalization")
        self.check(mutated(RESPONSE, ["c2s", "x25519"], b64encode(bytes(32))), "c2s.x25519")
        self.check(mutated(RESPONSE, ["c2s", "x25519"], b64encode(LOW_ORDER)), "c2s.x25519")
        self.check(mutated(RESPONSE, ["s2c"], KeyError), "s2c")


class PairKeysTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        blob = RELAY_KEYS.to_bytes()
        self.assertEqual(blob[:4], b"MTRK")
        self.assertEqual(PairKeys.from_bytes(blob), RELAY_KEYS)
        self.assertEqual(PairKeys.from_bytes(bytearray(blob)), RELAY_KEYS)

    def test_corrupt(self) -> None:
        blob = RELAY_KEYS.to_bytes()
        bad = [b"", blob[:-1], blob + b"\0", b"XXXX" + blob[4:], blob[:4] + b"\x02" + blob[5:],
               blob[:5] + b"\x00\x02" + blob[7:], blob[:7] + b"\xff" + blob[8:],
               blob[:7] + b"\x05" + blob[8:], blob.replace(CLIENT.encode(), b"x" * 36),
               blob[:8] + b"\xff" + blob[9:], None]
        for value in bad:
            with self.assertRaises(StateNotFound, msg=repr(value)):
                PairKeys.from_bytes(value)  # type: ignore[arg-type]

    def test_validation(self) -> None:
        args = (1, CLIENT, "a" * 16, b"k" * 32, b"k" * 32)
        PairKeys(*args)
        for i, bad in [(0, 2), (1, CLIENT + ".x"), (2, "a"), (3, b"k" * 31), (4, "k" * 32)]:
            broken = list(args)
            broken[i] = bad
            self.assertRaises(ValueError, PairKeys, *broken)

    def test_aead_cached(self) -> None:
        self.assertIs(RELAY_KEYS.aead(True), RELAY_KEYS.aead(True))
        self.assertIsNot(RELAY_KEYS.aead(True), RELAY_KEYS.aead(False))


class FinishAllTests(SynchronousTestCase):
    """``finish_all``: how both clients read a whole pairing answer."""

    def setUp(self) -> None:
        self.client = "0" * 8 + "-0000-4000-8000-" + "0" * 12
        self.pending = [pairing.start_pairing(self.client) for _ in range(2)]
        request = json.dumps([p.request_entry() for p in self.pending])
        self.entries, self.relay_keys = pairing.respond_all(self.client, request)

    def test_one_key_set_per_entry_in_order(self) -> None:
        keys = pairing.finish_all(self.pending, json.dumps(self.entries).encode())
        self.assertEqual(keys, self.relay_keys)

    def test_refused_whole(self) -> None:
        for body, reason in ((b"\xff", "not UTF-8 JSON"), (b"{", "not UTF-8 JSON"),
                             (b"{}", "must be a JSON array of 2 entries"),
                             (json.dumps(self.entries[:1]).encode(),
                              "must be a JSON array of 2 entries")):
            with self.assertRaises(MalformedPairResponse) as caught:
                pairing.finish_all(self.pending, body)
            self.assertEqual(caught.exception.field, "$", body)
            self.assertIn(reason, str(caught.exception), body)

    def test_entry_error_names_its_index(self) -> None:
        entries = copy.deepcopy(self.entries)
        entries[1]["s2c"]["nonce"] = "AAAA"
        with self.assertRaises(MalformedPairResponse) as caught:
            pairing.finish_all(self.pending, json.dumps(entries).encode())
        self.assertTrue(caught.exception.field.startswith("[1]."), caught.exception.field)
