"""Regenerate the protocol test vectors (pairing.json, sealing.json, framing.json,
records.json).

Run with the project's interpreter:  .venv/bin/python tests/vectors/generate.py

Every input is fixed (derived from labels with SHAKE-256) so the output is
byte-for-byte reproducible, with one exception: ``cryptography``'s ML-KEM
``encapsulate()`` takes no randomness, so the relay's ML-KEM ciphertexts and
shared secrets are *recorded*.  They are kept from the existing pairing.json
when they still decapsulate correctly under the fixed client seeds, so
re-running this script does not churn the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from mterelay.protocol import pairing, sealing  # noqa: E402
from mterelay.protocol.clientid import new_client_id  # noqa: E402
from mterelay.protocol.encoding import b64decode, b64encode  # noqa: E402
from mterelay.protocol.errors import RelayError  # noqa: E402
from mterelay.protocol.header import RelayHeader  # noqa: E402
from mterelay.protocol.items import encode_headers  # noqa: E402
from mterelay.protocol.keys import PairKeys  # noqa: E402
from mterelay.store.interface import pair_generation  # noqa: E402

DIRS = ("c2s", "s2c")


def fixed(label: str, length: int) -> bytes:
    """Deterministic 'random' bytes for a vector input."""
    return hashlib.shake_256(b"mterelay test vector " + label.encode()).digest(length)


def body_bytes(length: int) -> bytes:
    """The framing vectors' plaintext: bytes (i * 7 + 3) mod 256."""
    return bytes((i * 7 + 3) & 0xFF for i in range(length))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(name: str, value: object) -> None:
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=False, ensure_ascii=True)
        f.write("\n")


# ------------------------------------------------------------------ pairing

CLIENT_SECRET = "vector-client-id-secret-0123456789abcdef"
CLIENT_UUID = str(uuid.UUID(bytes=fixed("client uuid", 16), version=4))
CLIENT_ID = new_client_id(CLIENT_SECRET.encode(), lambda: uuid.UUID(CLIENT_UUID))


def previous_kem(name: str) -> dict[str, dict[str, str]]:
    """Recorded ML-KEM ciphertexts/shared secrets from the existing file."""
    try:
        with open(os.path.join(HERE, "pairing.json"), encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return {}
    for vector in old.get("vectors", []):
        if vector.get("name") == name:
            return vector.get("inputs", {}).get("relay", {})
    return {}


def pairing_vector(name: str, pair_id: str, personalization_lengths: tuple[int, int]) -> dict:
    client = {
        d: pairing.ClientDirectionSecrets(
            fixed(f"{name} client {d} x25519", 32), fixed(f"{name} client {d} mlkem", 64),
            fixed(f"{name} client {d} personalization", n))
        for d, n in zip(DIRS, personalization_lengths)
    }
    old = previous_kem(name)
    relay = {}
    for d in DIRS:
        dk = MLKEM768PrivateKey.from_seed_bytes(client[d].mlkem_seed)
        ct = ss = None
        if d in old:
            ct = bytes.fromhex(old[d]["mlkemCiphertext"])
            ss = bytes.fromhex(old[d]["mlkemSharedSecret"])
            if len(ct) != 1088 or dk.decapsulate(ct) != ss:
                ct = ss = None
        if ct is None:
            ss, ct = dk.public_key().encapsulate()
        relay[d] = pairing.RelayDirectionSecrets(
            fixed(f"{name} relay {d} x25519", 32), fixed(f"{name} relay {d} nonce", 32), ct, ss)
    pending = pairing.pairing_from_secrets(CLIENT_UUID, pair_id, client["c2s"], client["s2c"])
    request = pending.request_entry()
    response, relay_keys = pairing.respond(CLIENT_UUID, request, secrets=relay)
    client_keys = pending.finish(response)
    assert client_keys == relay_keys
    parts = {}
    x_shared = {}
    for d in DIRS:
        cpriv = X25519PrivateKey.from_private_bytes(client[d].x25519_private)
        rpub = b64decode(response[d]["x25519"], "x")
        x_shared[d] = cpriv.exchange(
            X25519PrivateKey.from_private_bytes(relay[d].x25519_private).public_key())
        parts[d] = pairing.DirectionTranscript(
            b64decode(request[d]["x25519"], "x"), b64decode(request[d]["mlkem768"], "m"),
            client[d].personalization, rpub, relay[d].mlkem_ciphertext, relay[d].nonce)
    transcript = pairing.transcript_bytes(1, CLIENT_UUID, pair_id, parts["c2s"], parts["s2c"])
    return {
        "name": name,
        "clientId": CLIENT_ID,
        "clientUuid": CLIENT_UUID,
        "pairId": pair_id,
        "inputs": {
            "client": {d: {"x25519Private": client[d].x25519_private.hex(),
                           "mlkemSeed": client[d].mlkem_seed.hex(),
                           "personalization": client[d].personalization.hex()} for d in DIRS},
            "relay": {d: {"x25519Private": relay[d].x25519_private.hex(),
                          "nonce": relay[d].nonce.hex(),
                          "mlkemCiphertext": relay[d].mlkem_ciphertext.hex(),
                          "mlkemSharedSecret": relay[d].mlkem_shared_secret.hex()}
                      for d in DIRS},
        },
        "request": request,
        "response": response,
        "x25519SharedSecrets": {d: x_shared[d].hex() for d in DIRS},
        "transcript": transcript.hex(),
        "transcriptSha256": sha256(transcript),
        "c2sKey": client_keys.c2s_key.hex(),
        "s2cKey": client_keys.s2c_key.hex(),
        "pairKeysBlob": client_keys.to_bytes().hex(),
        "pairGeneration": pair_generation(client_keys.to_bytes()),
    }


def invalid_pair_requests(valid: dict) -> list[dict]:
    """Mutations of a valid request entry, each with the field it must name."""
    cases = []

    def case(description: str, field: str, mutate) -> None:
        entry = json.loads(json.dumps(valid))
        mutate(entry)
        try:
            pairing.respond(CLIENT_UUID, entry)
        except pairing.MalformedPairRequest as e:
            assert e.field == field, (description, e.field)
            cases.append({"description": description, "entry": entry, "field": field})
            return
        raise AssertionError(f"{description}: accepted")

    def set_(path, value):
        def mutate(entry):
            target = entry
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return mutate

    x = b64decode(valid["c2s"]["x25519"], "x")
    ek = b64decode(valid["s2c"]["mlkem768"], "m")
    case("padded base64url", "c2s.x25519", set_(["c2s", "x25519"], b64encode(x) + "="))
    case("X25519 key one byte short", "c2s.x25519", set_(["c2s", "x25519"], b64encode(x[:31])))
    case("low-order X25519 key (all zero)", "s2c.x25519",
         set_(["s2c", "x25519"], b64encode(bytes(32))))
    case("ML-KEM key with an unreduced coefficient", "s2c.mlkem768",
         set_(["s2c", "mlkem768"], b64encode(b"\xff\xff\xff" + ek[3:])))
    case("personalization of 15 bytes", "c2s.personalization",
         set_(["c2s", "personalization"], b64encode(bytes(15))))
    case("pair id of 15 characters", "pairId", set_(["pairId"], "A" * 15))
    case("version as a string", "version", set_(["version"], "1"))
    case("unknown field", "c2s.extra", set_(["c2s", "extra"], "x"))
    return cases


def gen_pairing() -> dict:
    vectors = [
        pairing_vector("basic", "vectorPair-000000001", (32, 32)),
        pairing_vector("limits", "p" * 64, (16, 64)),
    ]
    return {
        "description": "Hybrid X25519 + ML-KEM-768 pairing (docs/protocol.md section 4). "
                       "Byte strings are hex unless inside request/response, which are the "
                       "exact JSON entries (base64url without padding).",
        "protocolVersion": 1,
        "clientIds": [{"secret": CLIENT_SECRET, "uuid": CLIENT_UUID, "clientId": CLIENT_ID}],
        "vectors": vectors,
        "invalidRequests": invalid_pair_requests(vectors[0]["request"]),
    }


# ------------------------------------------------------------------ sealing

def vector_keys() -> PairKeys:
    return PairKeys(1, CLIENT_UUID, "vectorPair-000000001",
                    fixed("sealing c2s key", 32), fixed("sealing s2c key", 32))


def flip(token: str, bit: int = 0) -> str:
    raw = bytearray(b64decode(token, "t"))
    raw[bit // 8] ^= 1 << (bit % 8)
    return b64encode(bytes(raw))


def gen_sealing() -> dict:
    keys = vector_keys()
    request_header = RelayHeader(CLIENT_ID, keys.pair_id, "MTE", True, True, True, True, 42)
    response_header = request_header.for_response(mode="MTE", body_enc=True)
    req = sealing.MessageCipher(keys, request_header, sealing.Direction.C2S)
    resp = sealing.MessageCipher(keys, response_header, sealing.Direction.S2C)

    url = "/api/login?next=%2Fhome&lang=en"
    url_token = req.seal_url(url)
    target = "/" + url_token
    method = "POST"
    req_headers = {"content-type": ["application/json"], "x-api-key": ["k-123"],
                   "accept": ["application/json", "text/plain"]}
    req_headers_plain = encode_headers(req_headers)
    req_headers_token = req.seal_request_headers(req_headers, method, target, has_body=True)
    req_body = b'{"user":"alice","password":"correct horse battery staple"}'
    req_body_sealed = req.seal_body(req_body)

    status = 200
    resp_headers = {"content-type": ["application/json; charset=utf-8"],
                    "set-cookie": ["a=1; HttpOnly", "b=2"]}
    resp_headers_plain = encode_headers(resp_headers)
    resp_headers_token = resp.seal_response_headers(resp_headers, status)
    resp_body = b'{"ok":true,"msg":"caf\xc3\xa9"}'
    resp_body_sealed = resp.seal_body(resp_body)

    flags_req = request_header.flags_byte()
    flags_resp = response_header.flags_byte()
    aad = sealing.item_aad
    C2S, S2C = sealing.Direction.C2S, sealing.Direction.S2C
    K = sealing.Kind

    other_seq = RelayHeader(CLIENT_ID, keys.pair_id, "MTE", True, True, True, True, 43)
    other = sealing.MessageCipher(keys, other_seq, C2S)
    must_fail = [
        {"description": "one bit flipped in the url item", "direction": "c2s",
         "item": "url", "token": flip(url_token, 5)},
        {"description": "headers item opened with method PUT instead of POST",
         "direction": "c2s", "item": "headers", "token": req_headers_token, "method": "PUT",
         "target": target},
        {"description": "headers item opened with another target", "direction": "c2s",
         "item": "headers", "token": req_headers_token, "method": method, "target": "/other"},
        {"description": "headers item of a request whose body was stripped",
         "direction": "c2s", "item": "headers", "token": req_headers_token, "method": method,
         "target": target, "hasBody": False},
        {"description": "url item spliced from the message with seq 43", "direction": "c2s",
         "item": "url", "token": other.seal_url(url)},
        {"description": "request body spliced in as the response body", "direction": "s2c",
         "item": "body", "sealed": req_body_sealed.hex()},
        {"description": "response headers item checked against status 500",
         "direction": "s2c", "item": "headers", "token": resp_headers_token, "status": 500},
        {"description": "last bit of the body tag flipped", "direction": "c2s", "item": "body",
         "sealed": (req_body_sealed[:-1] + bytes((req_body_sealed[-1] ^ 0x80,))).hex()},
        {"description": "headers item opened under the MKE flag (header altered in transit)",
         "direction": "c2s", "item": "headers", "token": req_headers_token, "method": method,
         "target": target, "header": RelayHeader(
             CLIENT_ID, keys.pair_id, "MKE", True, True, True, True, 42).format()},
    ]

    return {
        "description": "AES-256-GCM item sealing (docs/protocol.md section 6). Hex unless "
                       "named token (base64url, no padding).",
        "keys": {"clientUuid": keys.client_id, "pairId": keys.pair_id,
                 "c2sKey": keys.c2s_key.hex(), "s2cKey": keys.s2c_key.hex(),
                 "pairKeysBlob": keys.to_bytes().hex()},
        "request": {
            "header": request_header.format(),
            "flagsByte": flags_req,
            "seq": 42,
            "url": {"plaintext": url, "nonce": sealing.item_nonce(42, 0).hex(),
                    "aad": aad(1, C2S, K.URL, True, flags_req, 42, keys.pair_id).hex(),
                    "token": url_token, "wireTarget": target},
            "headers": {"method": method, "target": target, "hasBody": True,
                        "plaintext": req_headers_plain.hex(),
                        "nonce": sealing.item_nonce(42, 1).hex(),
                        "binding": sealing.request_binding(method, target, True).hex(),
                        "aad": (aad(1, C2S, K.HEADERS, True, flags_req, 42, keys.pair_id)
                                + sealing.request_binding(method, target, True)).hex(),
                        "token": req_headers_token},
            "body": {"plaintext": req_body.hex(), "nonce": sealing.item_nonce(42, 2).hex(),
                     "aad": aad(1, C2S, K.BODY, True, flags_req, 42, keys.pair_id).hex(),
                     "sealed": req_body_sealed.hex()},
        },
        "response": {
            "header": response_header.format(),
            "flagsByte": flags_resp,
            "status": status,
            "headers": {"plaintext": resp_headers_plain.hex(),
                        "binding": sealing.response_binding(status).hex(),
                        "aad": (aad(1, S2C, K.HEADERS, True, flags_resp, 42, keys.pair_id)
                                + sealing.response_binding(status)).hex(),
                        "token": resp_headers_token},
            "body": {"plaintext": resp_body.hex(),
                     "aad": aad(1, S2C, K.BODY, True, flags_resp, 42, keys.pair_id).hex(),
                     "sealed": resp_body_sealed.hex()},
        },
        "mustFail": must_fail,
        "relayHeaders": relay_header_cases(),
    }


def relay_header_cases() -> list[dict]:
    good = f"{CLIENT_ID},vectorPair-000000001,MKE,0,1,1,1,9007199254740991"
    cases = [good, f"{CLIENT_ID},vectorPair-000000001,MTE,1,1,0,0,0",
             f"{CLIENT_ID},vectorPair-000000001,MTE,1,1,0,0",
             f"{CLIENT_ID},vectorPair-000000001,MTE,1,1,0,0,01",
             f"{CLIENT_ID},vectorPair-000000001,MTE,1,1,0,0,9007199254740992",
             f"{CLIENT_ID},vectorPair-000000001,mte,1,1,0,0,1",
             f"{CLIENT_ID},vectorPair-000000001,MTE,2,1,0,0,1",
             f"{CLIENT_ID},short,MTE,1,1,0,0,1",
             f"{CLIENT_ID.upper()},vectorPair-000000001,MTE,1,1,0,0,1",
             f"{CLIENT_ID}, vectorPair-000000001,MTE,1,1,0,0,1"]
    out = []
    for value in cases:
        try:
            h = RelayHeader.parse(value)
        except RelayError as e:
            out.append({"value": value, "error": e.code})
        else:
            out.append({"value": value, "flagsByte": h.flags_byte(), "seq": h.seq})
    return out


# ------------------------------------------------------------------ framing

def chunk_table(cipher: sealing.MessageCipher, sealed: bytes, mode: str) -> list[dict]:
    size = sealing.SEALED_CHUNK_SIZE if mode == "MKE" else len(sealed)
    pieces = [sealed[i:i + size] for i in range(0, len(sealed), size)] or [b""]
    header = cipher.header
    return [{"index": 2 + i, "final": i == len(pieces) - 1, "length": len(p),
             "nonce": sealing.item_nonce(header.seq, 2 + i).hex(),
             "aad": sealing.item_aad(1, cipher.direction, sealing.Kind.BODY,
                                     i == len(pieces) - 1, header.flags_byte(), header.seq,
                                     header.pair_id).hex(),
             "tag": p[-16:].hex()} for i, p in enumerate(pieces)]


def gen_framing() -> dict:
    keys = vector_keys()
    vectors = []
    for mode, length in (("MKE", 0), ("MKE", 1), ("MKE", 65535), ("MKE", 65536),
                         ("MKE", 65537), ("MKE", 2 * 65536 + 100), ("MTE", 0),
                         ("MTE", 100000)):
        header = RelayHeader(CLIENT_ID, keys.pair_id, mode, False, True, True, True, 7)
        cipher = sealing.MessageCipher(keys, header, sealing.Direction.C2S)
        plain = body_bytes(length)
        sealed = cipher.seal_body(plain)
        assert len(sealed) == sealing.sealed_length(length, mode)
        vector = {"mode": mode, "header": header.format(), "direction": "c2s",
                  "plainLength": length, "plainSha256": sha256(plain),
                  "sealedLength": len(sealed), "sealedSha256": sha256(sealed),
                  "chunks": chunk_table(cipher, sealed, mode)}
        if len(sealed) <= 64:
            vector["sealed"] = sealed.hex()
        vectors.append(vector)

    tampered = [
        {"description": "last chunk dropped (truncated at a chunk boundary)",
         "plainLength": 65537, "operation": "drop", "chunk": 1},
        {"description": "first two chunks swapped", "plainLength": 2 * 65536 + 100,
         "operation": "swap", "chunk": 0},
        {"description": "first chunk duplicated", "plainLength": 65537,
         "operation": "duplicate", "chunk": 0},
        {"description": "final chunk cut by one byte", "plainLength": 65537,
         "operation": "truncate", "bytes": 1},
        {"description": "one bit flipped in chunk 0", "plainLength": 65537,
         "operation": "flip", "chunk": 0},
    ]
    return {
        "description": "Body framing (docs/protocol.md section 7). Plaintext byte i is "
                       "(7 * i + 3) mod 256; keys and client/pair ids as in sealing.json. "
                       "Chunk tags are the last 16 bytes of each sealed chunk.",
        "chunkSize": sealing.CHUNK_SIZE,
        "sealedChunkSize": sealing.SEALED_CHUNK_SIZE,
        "vectors": vectors,
        "mustFail": tampered,
        "sealedLengths": [{"mode": m, "plain": n, "sealed": sealing.sealed_length(n, m)}
                          for m in ("MTE", "MKE")
                          for n in (0, 1, 65535, 65536, 65537, 131072, 131073, 10**9)],
    }


# ------------------------------------------------------------------ records

def record_table(cipher: sealing.MessageCipher, pieces: list[bytes]) -> tuple[bytes, list]:
    """Seal ``pieces`` as records (the last one final) one by one, as a sender
    that flushes each piece the moment it has it; returns (wire, table)."""
    header = cipher.header
    sealer = cipher.body_sealer()
    wires = [sealer.feed(p) for p in pieces[:-1]] + [sealer.finish(pieces[-1])]
    table = []
    for i, (plain, wire) in enumerate(zip(pieces, wires)):
        final = i == len(pieces) - 1
        entry = {"index": 2 + i, "final": final, "plainLength": len(plain),
                 "prefix": wire[:4].hex(),
                 "nonce": sealing.item_nonce(header.seq, 2 + i).hex(),
                 "aad": sealing.item_aad(1, cipher.direction, sealing.Kind.BODY, final,
                                         header.flags_byte(), header.seq,
                                         header.pair_id).hex(),
                 "tag": wire[-16:].hex(), "wireLength": len(wire)}
        if len(plain) <= 2048:
            entry["plaintext"] = plain.hex()
        else:
            assert plain == body_bytes(len(plain))
        table.append(entry)
    return b"".join(wires), table


def gen_records() -> dict:
    from mterelay.protocol.header import FRAMING_HEADER, RELAY_FRAMINGS, parse_framings
    from mterelay.protocol.records import BODY_LENGTH_CONTROL

    keys = vector_keys()
    request = RelayHeader(CLIENT_ID, keys.pair_id, "MKR", True, True, True, True, 9, True)
    response = request.for_response(mode="MKR", body_enc=True)
    bodiless = RelayHeader(CLIENT_ID, keys.pair_id, "MTE", True, True, False, True, 10, True)
    old = RelayHeader(CLIENT_ID, keys.pair_id, "MKE", True, True, True, True, 11)
    negotiation = {
        "announcement": {"header": FRAMING_HEADER, "value": RELAY_FRAMINGS},
        "announcementParsing": [
            {"value": v, "records": "MKR" in parse_framings(v)}
            for v in (RELAY_FRAMINGS, None, " MTE , MKR ", "MTE,MKE", "mkr", "MKR2,MKE")],
        "headers": [
            {"description": "request with an MKR body, accepting an MKR answer",
             "value": request.format(), "flagsByte": request.flags_byte()},
            {"description": "its response, record-framed",
             "value": response.format(), "flagsByte": response.flags_byte()},
            {"description": "GET without a body, accepting an MKR answer",
             "value": bodiless.format(), "flagsByte": bodiless.flags_byte()},
            {"description": "what an older client sends (unchanged flags byte)",
             "value": old.format(), "flagsByte": old.flags_byte()},
        ],
        "invalidHeaders": [],
    }
    for value in (request.format().replace(",2,9", ",3,9"),
                  request.format().replace(",MKR,", ",mkr,")):
        try:
            RelayHeader.parse(value)
        except RelayError as e:
            negotiation["invalidHeaders"].append({"value": value, "error": e.code})
        else:
            raise AssertionError(value)
    # Answers a client refuses (562): MKR to streaming=1, MKE to streaming=0.
    plain_req = RelayHeader(CLIENT_ID, keys.pair_id, "MTE", True, True, False, False, 12)
    negotiation["refusedResponses"] = [
        {"request": old.format(), "response": f"{CLIENT_ID},{keys.pair_id},MKR,0,1,1,1,11"},
        {"request": plain_req.format(),
         "response": f"{CLIENT_ID},{keys.pair_id},MKE,0,1,1,0,12"}]

    c2s = sealing.MessageCipher(keys, request, sealing.Direction.C2S)
    s2c = sealing.MessageCipher(keys, response, sealing.Direction.S2C)
    sse = [b"event: tick\ndata: 1\n\n", b"event: tick\ndata: 2\n\n",
           b'{"n":3}\n', b"x" * 1000, b""]
    bodies = []
    for name, cipher, pieces in (
            ("one byte, then an empty final record", c2s, [b"\x2a", b""]),
            ("one 64 KiB record, then an empty final record", c2s,
             [body_bytes(65536), b""]),
            ("empty body: one empty final record", c2s, [b""]),
            ("final record holding data", c2s, [b"last"]),
            ("64 KiB final record", c2s, [body_bytes(65536)]),
            ("SSE/NDJSON response: 4 records flushed as they came, empty final", s2c, sse)):
        wire, table = record_table(cipher, pieces)
        plain = b"".join(pieces)
        assert cipher.open_body(wire) == plain
        vector = {"name": name, "direction": cipher.direction.name.lower(),
                  "header": cipher.header.format(), "plainLength": len(plain),
                  "plainSha256": sha256(plain), "wireLength": len(wire),
                  "wireSha256": sha256(wire), "records": table}
        if len(wire) <= 2048:
            vector["wire"] = wire.hex()
        bodies.append(vector)

    sealer = c2s.body_sealer()
    r1, r2, r3 = sealer.feed(b"first"), sealer.feed(b"second"), sealer.finish(b"")
    mke_header = RelayHeader(CLIENT_ID, keys.pair_id, "MKE", False, True, True, True, 9, True)
    mke = sealing.MessageCipher(keys, mke_header, sealing.Direction.C2S).seal_body(b"first")
    flipped = bytes([r1[0] | 0x80]) + r1[1:]
    must_fail = [
        ("truncated: the final record missing", r1 + r2, None),
        ("truncated: the final record cut by one byte", r1 + r2 + r3[:-1], None),
        ("truncated inside a prefix", r1 + r2 + r3[:2], None),
        ("reordered: records 0 and 1 swapped", r2 + r1 + r3, None),
        ("record 0 duplicated", r1 + r1 + r2 + r3, None),
        ("oversize length field (65537)", bytes.fromhex("00010001") + bytes(65553), None),
        ("reserved length bits set", bytes.fromhex("00400005") + r1[4:], None),
        ("trailing byte after the final record", r1 + r2 + r3 + b"\x00", None),
        ("empty non-final record", bytes.fromhex("00000000") + bytes(16) + r3, None),
        ("final bit set on record 0", flipped, None),
        ("an MKE chunk behind a record prefix", bytes.fromhex("80000005") + mke, None),
        ("declared length 10, body is 11 bytes", r1 + r2 + r3, 10),
        ("declared length 12, body is 11 bytes", r1 + r2 + r3, 12),
    ]
    cases = []
    for description, wire, declared in must_fail:
        try:
            opener = c2s.body_opener(declared)
            opener.feed(wire)
            opener.finish()
        except RelayError:
            pass
        else:
            raise AssertionError(description)
        case = {"description": description, "header": request.format(), "direction": "c2s"}
        if len(wire) <= 2048:
            case["wire"] = wire.hex()
        else:
            case["wirePrefix"] = wire[:4].hex()
            case["wireLength"] = len(wire)
        if declared is not None:
            case["declaredLength"] = declared
        cases.append(case)
    declared = {"name": BODY_LENGTH_CONTROL, "plainLength": 11, "header": request.format(),
                "wire": (r1 + r2 + r3).hex()}
    return {
        "description": "Record framing, MKR (docs/protocol.md sections 5.1 and 7.2-7.3). "
                       "Keys and ids as in sealing.json; 64 KiB plaintexts are bytes "
                       "(7 * i + 3) mod 256. A record on the wire is prefix || sealed "
                       "(plainLength + 16 bytes, tag last).",
        "recordMax": 65536,
        "negotiation": negotiation,
        "bodies": bodies,
        "declaredLength": declared,
        "mustFail": cases,
    }


def main() -> None:
    write("pairing.json", gen_pairing())
    write("sealing.json", gen_sealing())
    write("framing.json", gen_framing())
    write("records.json", gen_records())


if __name__ == "__main__":
    main()
