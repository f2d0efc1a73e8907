"""The implementation reproduces every published test vector byte for byte.

These vectors are the interoperability contract with other clients (the
browser client, other languages): a change that breaks one of these tests is a
wire-format change and needs a protocol version bump.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol import pairing, sealing
from mterelay.protocol.clientid import new_client_id, verify_client_id
from mterelay.protocol.encoding import b64decode, b64encode
from mterelay.protocol.errors import DecodeFailed, RelayError, UnsupportedVersion
from mterelay.protocol.header import RelayHeader, parse_framings
from mterelay.protocol.items import encode_headers
from mterelay.protocol.keys import PairKeys

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vectors")
DIRS = ("c2s", "s2c")


def load(name: str) -> dict:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


def body_bytes(length: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(length))


class PairingVectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load("pairing.json")

    def test_client_ids(self) -> None:
        for case in self.data["clientIds"]:
            minted = new_client_id(case["secret"].encode(), lambda: uuid.UUID(case["uuid"]))
            self.assertEqual(minted, case["clientId"])
            self.assertEqual(verify_client_id(case["clientId"], [case["secret"].encode()]),
                             case["uuid"])

    def _client(self, vector: dict) -> pairing.PendingPairing:
        c = vector["inputs"]["client"]
        secrets = {d: pairing.ClientDirectionSecrets(
            bytes.fromhex(c[d]["x25519Private"]), bytes.fromhex(c[d]["mlkemSeed"]),
            bytes.fromhex(c[d]["personalization"])) for d in DIRS}
        return pairing.pairing_from_secrets(vector["clientUuid"], vector["pairId"],
                                            secrets["c2s"], secrets["s2c"])

    def _relay_secrets(self, vector: dict) -> dict:
        r = vector["inputs"]["relay"]
        return {d: pairing.RelayDirectionSecrets(
            bytes.fromhex(r[d]["x25519Private"]), bytes.fromhex(r[d]["nonce"]),
            bytes.fromhex(r[d]["mlkemCiphertext"]), bytes.fromhex(r[d]["mlkemSharedSecret"]))
            for d in DIRS}

    def test_request_entries(self) -> None:
        for vector in self.data["vectors"]:
            self.assertEqual(self._client(vector).request_entry(), vector["request"])

    def test_recorded_mlkem_ciphertexts_decapsulate(self) -> None:
        for vector in self.data["vectors"]:
            for d in DIRS:
                seed = bytes.fromhex(vector["inputs"]["client"][d]["mlkemSeed"])
                relay = vector["inputs"]["relay"][d]
                ss = MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(
                    bytes.fromhex(relay["mlkemCiphertext"]))
                self.assertEqual(ss.hex(), relay["mlkemSharedSecret"])

    def test_relay_response_and_keys(self) -> None:
        for vector in self.data["vectors"]:
            response, keys = pairing.respond(vector["clientUuid"], vector["request"],
                                             secrets=self._relay_secrets(vector))
            self.assertEqual(response, vector["response"])
            self.assertEqual(keys.c2s_key.hex(), vector["c2sKey"])
            self.assertEqual(keys.s2c_key.hex(), vector["s2cKey"])
            self.assertEqual(keys.to_bytes().hex(), vector["pairKeysBlob"])

    def test_pair_generation(self) -> None:
        """The store's generation of the blob (spec 9.3), recomputed from the spec's words."""
        from mterelay.store.interface import pair_generation

        for vector in self.data["vectors"]:
            blob = bytes.fromhex(vector["pairKeysBlob"])
            spec = hashlib.sha256(b"mterelay pair generation v1" + b"\x00" + blob).digest()
            self.assertEqual(spec[:16].hex(), vector["pairGeneration"])
            self.assertEqual(pair_generation(blob), vector["pairGeneration"])

    def test_client_finish(self) -> None:
        for vector in self.data["vectors"]:
            keys = self._client(vector).finish(vector["response"])
            self.assertEqual(keys.c2s_key.hex(), vector["c2sKey"])
            self.assertEqual(keys.s2c_key.hex(), vector["s2cKey"])
            self.assertEqual(PairKeys.from_bytes(bytes.fromhex(vector["pairKeysBlob"])), keys)

    def test_transcript_and_schedule(self) -> None:
        """The documented transcript and HKDF reproduce the keys independently."""
        for vector in self.data["vectors"]:
            parts = {}
            shared = {}
            for d in DIRS:
                req, resp = vector["request"][d], vector["response"][d]
                cpriv = bytes.fromhex(vector["inputs"]["client"][d]["x25519Private"])
                ss_x = X25519PrivateKey.from_private_bytes(cpriv).exchange(
                    X25519PublicKey.from_public_bytes(b64decode(resp["x25519"], "x")))
                self.assertEqual(ss_x.hex(), vector["x25519SharedSecrets"][d])
                parts[d] = [b"c2s" if d == "c2s" else b"s2c", b64decode(req["x25519"], "x"),
                            b64decode(req["mlkem768"], "m"),
                            b64decode(req["personalization"], "p"),
                            b64decode(resp["x25519"], "x"), b64decode(resp["mlkem768"], "c"),
                            b64decode(resp["nonce"], "n")]
                shared[d] = bytes.fromhex(vector["inputs"]["relay"][d]["mlkemSharedSecret"]) + ss_x

            def lp(b: bytes) -> bytes:
                return len(b).to_bytes(4, "big") + b
            transcript = b"".join(
                [lp(b"mterelay pairing"), lp(b"\x00\x01"), lp(vector["clientUuid"].encode()),
                 lp(vector["pairId"].encode())]
                + [lp(x) for d in DIRS for x in parts[d]])
            self.assertEqual(transcript.hex(), vector["transcript"])
            salt = hashlib.sha256(transcript).digest()
            self.assertEqual(salt.hex(), vector["transcriptSha256"])
            for d, key in (("c2s", "c2sKey"), ("s2c", "s2cKey")):
                derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                               info=b"mterelay " + d.encode()).derive(shared[d])
                self.assertEqual(derived.hex(), vector[key])

    def test_invalid_requests(self) -> None:
        uuid_ = self.data["vectors"][0]["clientUuid"]
        self.assertTrue(self.data["invalidRequests"])
        for case in self.data["invalidRequests"]:
            with self.assertRaises(pairing.MalformedPairRequest) as ctx:
                pairing.respond(uuid_, case["entry"])
            self.assertEqual(ctx.exception.field, case["field"], case["description"])

    def test_unsupported_version(self) -> None:
        vector = self.data["vectors"][0]
        entry = dict(vector["request"], version=2)
        self.assertRaises(UnsupportedVersion, pairing.respond, vector["clientUuid"], entry)


class SealingVectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load("sealing.json")
        k = self.data["keys"]
        self.keys = PairKeys(1, k["clientUuid"], k["pairId"], bytes.fromhex(k["c2sKey"]),
                             bytes.fromhex(k["s2cKey"]))
        self.request_header = RelayHeader.parse(self.data["request"]["header"])
        self.response_header = RelayHeader.parse(self.data["response"]["header"])

    def cipher(self, direction: str, header: str | None = None) -> sealing.MessageCipher:
        if direction == "c2s":
            h = RelayHeader.parse(header) if header else self.request_header
            return sealing.MessageCipher(self.keys, h, sealing.Direction.C2S)
        return sealing.MessageCipher(self.keys, self.response_header, sealing.Direction.S2C)

    def test_blob(self) -> None:
        self.assertEqual(self.keys.to_bytes().hex(), self.data["keys"]["pairKeysBlob"])

    def test_request(self) -> None:
        req = self.data["request"]
        c = self.cipher("c2s")
        self.assertEqual(self.request_header.flags_byte(), req["flagsByte"])
        self.assertEqual(self.request_header.format(), req["header"])
        url = req["url"]
        self.assertEqual(sealing.item_nonce(req["seq"], 0).hex(), url["nonce"])
        self.assertEqual(c.seal_url(url["plaintext"]), url["token"])
        self.assertEqual("/" + url["token"], url["wireTarget"])
        self.assertEqual(c.open_url(url["token"]), url["plaintext"])
        # The AAD published is the one used: raw AES-GCM with it reproduces the token.
        raw = AESGCM(self.keys.c2s_key).encrypt(bytes.fromhex(url["nonce"]),
                                                url["plaintext"].encode(),
                                                bytes.fromhex(url["aad"]))
        self.assertEqual(b64encode(raw), url["token"])
        hdr = req["headers"]
        headers = json.loads(bytes.fromhex(hdr["plaintext"]))
        self.assertEqual(encode_headers(headers).hex(), hdr["plaintext"])
        binding = sealing.request_binding(hdr["method"], hdr["target"], hdr["hasBody"])
        self.assertEqual(binding.hex(), hdr["binding"])
        raw = AESGCM(self.keys.c2s_key).encrypt(bytes.fromhex(hdr["nonce"]),
                                                bytes.fromhex(hdr["plaintext"]),
                                                bytes.fromhex(hdr["aad"]))
        self.assertEqual(b64encode(raw), hdr["token"])
        self.assertEqual(c.seal_request_headers(headers, hdr["method"], hdr["target"],
                                                has_body=hdr["hasBody"]),
                         hdr["token"])
        self.assertEqual(c.open_request_headers(hdr["token"], hdr["method"], hdr["target"],
                                                has_body=hdr["hasBody"]),
                         headers)
        body = req["body"]
        self.assertEqual(c.seal_body(bytes.fromhex(body["plaintext"])).hex(), body["sealed"])
        self.assertEqual(c.open_body(bytes.fromhex(body["sealed"])).hex(), body["plaintext"])
        raw = AESGCM(self.keys.c2s_key).encrypt(bytes.fromhex(body["nonce"]),
                                                bytes.fromhex(body["plaintext"]),
                                                bytes.fromhex(body["aad"]))
        self.assertEqual(raw.hex(), body["sealed"])

    def test_response(self) -> None:
        resp = self.data["response"]
        c = self.cipher("s2c")
        self.assertEqual(self.request_header.for_response(mode="MTE", body_enc=True),
                         self.response_header)
        self.assertEqual(self.response_header.flags_byte(), resp["flagsByte"])
        hdr = resp["headers"]
        headers = json.loads(bytes.fromhex(hdr["plaintext"]))
        self.assertEqual(sealing.response_binding(resp["status"]).hex(), hdr["binding"])
        self.assertEqual(c.seal_response_headers(headers, resp["status"]), hdr["token"])
        self.assertEqual(c.open_response_headers(hdr["token"], resp["status"]), headers)
        body = resp["body"]
        self.assertEqual(c.seal_body(bytes.fromhex(body["plaintext"])).hex(), body["sealed"])
        self.assertEqual(c.open_body(bytes.fromhex(body["sealed"])).hex(), body["plaintext"])
        raw = AESGCM(self.keys.s2c_key).decrypt(
            sealing.item_nonce(42, 1), b64decode(hdr["token"], "t"), bytes.fromhex(hdr["aad"]))
        self.assertEqual(raw.hex(), hdr["plaintext"])

    def test_must_fail(self) -> None:
        req = self.data["request"]
        for case in self.data["mustFail"]:
            c = self.cipher(case["direction"], case.get("header"))
            with self.assertRaises(DecodeFailed, msg=case["description"]):
                if case["item"] == "url":
                    c.open_url(case["token"])
                elif case["item"] == "body":
                    c.open_body(bytes.fromhex(case["sealed"]))
                elif case["direction"] == "c2s":
                    c.open_request_headers(case["token"], case.get("method", "POST"),
                                           case.get("target", req["url"]["wireTarget"]),
                                           has_body=case.get("hasBody", True))
                else:
                    c.open_response_headers(case["token"], case["status"])

    def test_relay_headers(self) -> None:
        for case in self.data["relayHeaders"]:
            if "error" in case:
                with self.assertRaises(RelayError) as ctx:
                    RelayHeader.parse(case["value"])
                self.assertEqual(ctx.exception.code, case["error"], case["value"])
            else:
                h = RelayHeader.parse(case["value"])
                self.assertEqual((h.flags_byte(), h.seq), (case["flagsByte"], case["seq"]))
                self.assertEqual(h.format(), case["value"])


class FramingVectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load("framing.json")
        k = load("sealing.json")["keys"]
        self.keys = PairKeys(1, k["clientUuid"], k["pairId"], bytes.fromhex(k["c2sKey"]),
                             bytes.fromhex(k["s2cKey"]))

    def _cipher(self, header: str) -> sealing.MessageCipher:
        return sealing.MessageCipher(self.keys, RelayHeader.parse(header), sealing.Direction.C2S)

    def test_vectors(self) -> None:
        self.assertEqual(self.data["sealedChunkSize"], sealing.SEALED_CHUNK_SIZE)
        for vector in self.data["vectors"]:
            c = self._cipher(vector["header"])
            plain = body_bytes(vector["plainLength"])
            self.assertEqual(hashlib.sha256(plain).hexdigest(), vector["plainSha256"])
            sealed = c.seal_body(plain)
            self.assertEqual(len(sealed), vector["sealedLength"])
            self.assertEqual(hashlib.sha256(sealed).hexdigest(), vector["sealedSha256"])
            if "sealed" in vector:
                self.assertEqual(sealed.hex(), vector["sealed"])
            offset = 0
            for chunk in vector["chunks"]:
                piece = sealed[offset:offset + chunk["length"]]
                offset += chunk["length"]
                self.assertEqual(piece[-16:].hex(), chunk["tag"])
                header = RelayHeader.parse(vector["header"])
                self.assertEqual(sealing.item_nonce(header.seq, chunk["index"]).hex(),
                                 chunk["nonce"])
                self.assertEqual(sealing.item_aad(1, sealing.Direction.C2S, sealing.Kind.BODY,
                                                  chunk["final"], header.flags_byte(),
                                                  header.seq, header.pair_id).hex(),
                                 chunk["aad"])
            self.assertEqual(offset, len(sealed))
            self.assertEqual(c.open_body(sealed), plain)

    def test_sealed_lengths(self) -> None:
        for case in self.data["sealedLengths"]:
            self.assertEqual(sealing.sealed_length(case["plain"], case["mode"]), case["sealed"])
            self.assertEqual(sealing.plain_length(case["sealed"], case["mode"]), case["plain"])

    def test_must_fail(self) -> None:
        header = next(v["header"] for v in self.data["vectors"] if v["mode"] == "MKE")
        size = sealing.SEALED_CHUNK_SIZE
        for case in self.data["mustFail"]:
            c = self._cipher(header)
            sealed = bytearray(c.seal_body(body_bytes(case["plainLength"])))
            chunks = [bytes(sealed[i:i + size]) for i in range(0, len(sealed), size)]
            op = case["operation"]
            if op == "drop":
                del chunks[case["chunk"]]
            elif op == "swap":
                i = case["chunk"]
                chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
            elif op == "duplicate":
                chunks.insert(case["chunk"], chunks[case["chunk"]])
            elif op == "truncate":
                chunks[-1] = chunks[-1][:-case["bytes"]]
            elif op == "flip":
                chunk = bytearray(chunks[case["chunk"]])
                chunk[0] ^= 1
                chunks[case["chunk"]] = bytes(chunk)
            self.assertRaises(DecodeFailed, c.open_body, b"".join(chunks))


class RecordVectorTests(SynchronousTestCase):
    """records.json, recomputed without the package's record code.

    The opener below is written from docs/protocol.md section 7.2 alone (raw
    AES-GCM, struct), so a vector the implementation got wrong in a way the
    spec does not say cannot pass.  The package's sealer must still produce
    the same bytes.
    """

    def setUp(self) -> None:
        self.data = load("records.json")
        k = load("sealing.json")["keys"]
        self.keys = PairKeys(1, k["clientUuid"], k["pairId"], bytes.fromhex(k["c2sKey"]),
                             bytes.fromhex(k["s2cKey"]))

    @staticmethod
    def _flags(value: str) -> tuple[int, int, str]:
        """(flags byte, seq, pair id) of an x-mte-relay value, by the section 5 table."""
        f = value.split(",")
        mode, url, hdr, body, streaming = f[2], f[3], f[4], f[5], f[6]
        flags = ((mode == "MKE") | (url == "1") << 1 | (hdr == "1") << 2 | (body == "1") << 3
                 | (streaming in ("1", "2")) << 4 | (mode == "MKR") << 5
                 | (streaming == "2") << 6)
        return flags, int(f[7]), f[1]

    def _aad(self, direction: str, final: bool, header: str) -> bytes:
        flags, seq, pair = self._flags(header)
        return (b"mterelay" + bytes((0, 1, 1 if direction == "c2s" else 2, 3, int(final),
                                     flags)) + seq.to_bytes(8, "big")
                + bytes((len(pair),)) + pair.encode())

    def _open(self, wire: bytes, direction: str, header: str,
              declared: int | None = None) -> list[bytes]:
        """Section 7.2's receiver rules, step by step; ValueError on any failure."""
        key = self.keys.c2s_key if direction == "c2s" else self.keys.s2c_key
        aead = AESGCM(key)
        seq = self._flags(header)[1]
        out, offset, index, done = [], 0, 2, False
        while offset < len(wire):
            if done:
                raise ValueError("trailing bytes")
            if len(wire) - offset < 4:
                raise ValueError("truncated prefix")
            word = int.from_bytes(wire[offset:offset + 4], "big")
            final, n = bool(word >> 31), word & 0x7FFFFFFF
            if n > 65536 or (n == 0 and not final):
                raise ValueError("bad length")
            end = offset + 4 + n + 16
            if end > len(wire):
                raise ValueError("truncated record")
            nonce = seq.to_bytes(8, "big") + index.to_bytes(4, "big")
            try:
                out.append(aead.decrypt(nonce, wire[offset + 4:end],
                                        self._aad(direction, final, header)))
            except Exception:
                raise ValueError("tag") from None
            index, offset, done = index + 1, end, final
        if not done:
            raise ValueError("no final record")
        if declared is not None and sum(map(len, out)) != declared:
            raise ValueError("declared length")
        return out

    def test_negotiation_headers(self) -> None:
        n = self.data["negotiation"]
        self.assertEqual(n["announcement"]["header"], "x-mte-relay-framing")
        for case in n["headers"]:
            self.assertEqual(self._flags(case["value"])[0], case["flagsByte"])
            parsed = RelayHeader.parse(case["value"])
            self.assertEqual((parsed.flags_byte(), parsed.format()),
                             (case["flagsByte"], case["value"]))
        for case in n["invalidHeaders"]:
            with self.assertRaises(RelayError) as ctx:
                RelayHeader.parse(case["value"])
            self.assertEqual(ctx.exception.code, case["error"])
        for case in n["announcementParsing"]:
            value = case["value"]
            tokens = set() if value is None else {t.strip(" \t") for t in value.split(",")}
            self.assertEqual("MKR" in tokens, case["records"], value)
            self.assertEqual("MKR" in parse_framings(value), case["records"], value)

    def test_refused_responses(self) -> None:
        for case in self.data["negotiation"]["refusedResponses"]:
            request = RelayHeader.parse(case["request"])
            received = RelayHeader.parse(case["response"])
            self.assertRaises(ValueError, request.for_response, mode=received.mode,
                              body_enc=received.body_enc)

    def test_bodies(self) -> None:
        for vector in self.data["bodies"]:
            header, direction = vector["header"], vector["direction"]
            pieces, wire, offset = [], b"", 0
            for record in vector["records"]:
                length = record["plainLength"]
                plain = (bytes.fromhex(record["plaintext"]) if "plaintext" in record
                         else body_bytes(length))
                pieces.append(plain)
                nonce = sealing.item_nonce(self._flags(header)[1], record["index"])
                self.assertEqual(nonce.hex(), record["nonce"])
                aad = self._aad(direction, record["final"], header)
                self.assertEqual(aad.hex(), record["aad"], vector["name"])
                prefix = ((1 << 31) * record["final"] + length).to_bytes(4, "big")
                self.assertEqual(prefix.hex(), record["prefix"])
                key = self.keys.c2s_key if direction == "c2s" else self.keys.s2c_key
                sealed = AESGCM(key).encrypt(nonce, plain, aad)
                self.assertEqual(sealed[-16:].hex(), record["tag"])
                self.assertEqual(4 + len(sealed), record["wireLength"])
                wire += prefix + sealed
                offset += record["wireLength"]
            self.assertEqual((len(wire), offset), (vector["wireLength"],) * 2)
            self.assertEqual(hashlib.sha256(wire).hexdigest(), vector["wireSha256"])
            if "wire" in vector:
                self.assertEqual(wire.hex(), vector["wire"])
            self.assertEqual(self._open(wire, direction, header), pieces)
            plain = b"".join(pieces)
            self.assertEqual(hashlib.sha256(plain).hexdigest(), vector["plainSha256"])
            # The package seals the same records the same way, and opens them.
            d = sealing.Direction.C2S if direction == "c2s" else sealing.Direction.S2C
            cipher = sealing.MessageCipher(self.keys, RelayHeader.parse(header), d)
            sealer = cipher.body_sealer()
            again = b"".join(sealer.feed(p) for p in pieces[:-1]) + sealer.finish(pieces[-1])
            self.assertEqual(again, wire)
            self.assertEqual(cipher.open_body(wire), plain)

    def test_declared_length(self) -> None:
        case = self.data["declaredLength"]
        self.assertEqual(case["name"], "x-mte-body-length")
        wire = bytes.fromhex(case["wire"])
        self.assertEqual(sum(map(len, self._open(wire, "c2s", case["header"],
                                                 case["plainLength"]))), case["plainLength"])

    def test_must_fail(self) -> None:
        for case in self.data["mustFail"]:
            if "wire" in case:
                wire = bytes.fromhex(case["wire"])
            else:
                wire = bytes.fromhex(case["wirePrefix"]) + bytes(case["wireLength"] - 4)
            declared = case.get("declaredLength")
            self.assertRaises(ValueError, self._open, wire, case["direction"], case["header"],
                              declared)
            cipher = sealing.MessageCipher(self.keys, RelayHeader.parse(case["header"]),
                                           sealing.Direction.C2S)
            with self.assertRaises(DecodeFailed, msg=case["description"]):
                opener = cipher.body_opener(declared)
                opener.feed(wire)
                opener.finish()
