"""Item sealing and body framing: round trips, and every tampering fails with 562."""

from __future__ import annotations

import random
import uuid

import attrs
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol import sealing
from mterelay.protocol.clientid import new_client_id
from mterelay.protocol.encoding import b64decode, b64encode
from mterelay.protocol.errors import DecodeFailed, EncodeFailed
from mterelay.protocol.header import RelayHeader
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.sealing import (CHUNK_SIZE, SEALED_CHUNK_SIZE, TAG_LENGTH, Direction,
                                       MessageCipher, plain_length, sealed_length)

UUID = "12345678-1234-4234-8234-123456789abc"
CLIENT_ID = new_client_id(b"s" * 32, lambda: uuid.UUID(UUID))
PAIR = "pair-0123456789abcdef"
KEYS = PairKeys(1, UUID, PAIR, b"\x11" * 32, b"\x22" * 32)
OTHER_KEYS = PairKeys(1, UUID, PAIR, b"\x33" * 32, b"\x22" * 32)
C2S, S2C = Direction.C2S, Direction.S2C

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def header(mode: str = "MKE", seq: int = 7, **changes: object) -> RelayHeader:
    h = RelayHeader(CLIENT_ID, PAIR, mode, True, True, True, True, seq)
    return attrs.evolve(h, **changes) if changes else h


def cipher(mode: str = "MKE", seq: int = 7, direction: Direction = C2S,
           keys: PairKeys = KEYS, **changes: object) -> MessageCipher:
    h = header(mode, seq, **changes)
    if direction is S2C:
        h = h.for_response(mode=mode, body_enc=h.body_enc, headers_enc=h.headers_enc)
    return MessageCipher(keys, h, direction)


def body(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def stream_open(c: MessageCipher, pieces: list[bytes]) -> bytes:
    opener = c.body_opener()
    out = [opener.feed(p) for p in pieces]
    out.append(opener.finish())
    return b"".join(out)


def stream_seal(c: MessageCipher, pieces: list[bytes]) -> bytes:
    sealer = c.body_sealer()
    out = [sealer.feed(p) for p in pieces]
    out.append(sealer.finish())
    return b"".join(out)


class ItemTests(SynchronousTestCase):
    def test_url_round_trip(self) -> None:
        token = cipher().seal_url("/api/v1/x?a=1")
        self.assertEqual(cipher().open_url(token), "/api/v1/x?a=1")
        self.assertEqual(cipher().open_url(token.encode()), "/api/v1/x?a=1")
        self.assertEqual(len(b64decode(token, "t")), len("/api/v1/x?a=1") + TAG_LENGTH)

    def test_url_rejections(self) -> None:
        self.assertRaises(EncodeFailed, cipher().seal_url, "no-slash")
        token = cipher().seal_url("/x")
        for c in (cipher(seq=8), cipher(keys=OTHER_KEYS), cipher(mode="MTE"),
                  cipher(url_enc=False), cipher(streaming=False)):
            self.assertRaises(DecodeFailed, c.open_url, token)
        for bad in (token + "=", token[:-1], "", "!!", b"\xff", token[:-2]):
            self.assertRaises(DecodeFailed, cipher().open_url, bad)

    def test_url_content_validated_after_opening(self) -> None:
        c = cipher()
        sealed = c._seal_item(sealing.INDEX_URL, c._aad_url, b"not-a-path")
        with self.assertRaises(DecodeFailed) as ctx:
            c.open_url(sealed)
        self.assertIn("origin-form", ctx.exception.info)

    def test_request_headers(self) -> None:
        c = cipher()
        token = c.seal_request_headers({"Content-Type": "a/b"}, "POST", "/x?y", has_body=True)
        self.assertEqual(c.open_request_headers(token, b"POST", b"/x?y", has_body=True),
                         {"content-type": ["a/b"]})
        for method, target in (("PUT", "/x?y"), ("POST", "/x?z"), ("post", "/x?y"),
                               ("POST", "/x?y "), ("POST", "")):
            self.assertRaises(DecodeFailed, c.open_request_headers, token, method, target,
                              has_body=True)
        self.assertRaises(DecodeFailed, c.open_request_headers, token, "POST", "/x?y",
                          has_body=False)
        self.assertRaises(DecodeFailed, c.open_request_headers, token, "", "/x?y",
                          has_body=True)
        self.assertRaises(DecodeFailed, c.open_request_headers, token, "PÖST", "/x?y",
                          has_body=True)
        self.assertRaises(DecodeFailed, c.open_request_headers, token, "POST", "/x?y",
                          has_body=1)
        self.assertRaises(DecodeFailed, cipher(seq=8).open_request_headers, token, "POST",
                          "/x?y", has_body=True)
        self.assertRaises(DecodeFailed, cipher(body_enc=False).open_request_headers, token,
                          "POST", "/x?y", has_body=True)
        self.assertRaises(EncodeFailed, c.seal_request_headers, {"bad name": "x"}, "GET", "/",
                          has_body=False)
        self.assertRaises(ValueError, c.seal_request_headers, {}, "", "/", has_body=False)

    def test_headers_enc_0(self) -> None:
        c = cipher(headers_enc=False)
        token = c.seal_request_headers({"content-type": "text/plain"}, "GET", "/", has_body=False)
        self.assertEqual(c.open_request_headers(token, "GET", "/", has_body=False),
                         {"content-type": ["text/plain"]})
        self.assertRaises(EncodeFailed, c.seal_request_headers, {"x-a": "1"}, "GET", "/",
                          has_body=False)
        # A headersEnc=1 item carrying more than content-type fails under flag 0 anyway.
        token = cipher().seal_request_headers({"x-a": "1"}, "GET", "/", has_body=False)
        self.assertRaises(DecodeFailed, c.open_request_headers, token, "GET", "/", has_body=False)

    def test_headers_content_validated_after_opening(self) -> None:
        c = cipher()
        binding = sealing.request_binding("GET", "/", False)
        token = c._seal_item(sealing.INDEX_HEADERS, c._aad_headers + binding, b'{"a":"b"}')
        self.assertRaises(DecodeFailed, c.open_request_headers, token, "GET", "/", has_body=False)

    def test_response_headers(self) -> None:
        c = cipher(direction=S2C)
        token = c.seal_response_headers({"content-type": "a/b", "set-cookie": ["1", "2"]}, 201)
        self.assertEqual(c.open_response_headers(token, 201),
                         {"content-type": ["a/b"], "set-cookie": ["1", "2"]})
        self.assertRaises(DecodeFailed, c.open_response_headers, token, 200)
        self.assertRaises(DecodeFailed, c.open_response_headers, token, 99)
        self.assertRaises(ValueError, c.seal_response_headers, {}, 1000)
        # A response cannot be opened as a request of the same seq, nor vice versa.
        self.assertRaises(DecodeFailed, cipher().open_request_headers, token, "GET", "/",
                          has_body=False)

    def test_kinds_do_not_swap(self) -> None:
        c = cipher()
        url_token = c.seal_url("/x")
        headers_token = c.seal_request_headers({}, "GET", "/", has_body=False)
        self.assertRaises(DecodeFailed, c.open_request_headers, url_token, "GET", "/",
                          has_body=False)
        self.assertRaises(DecodeFailed, c.open_url, headers_token)
        sealed_body = cipher(mode="MTE").seal_body(b"/x")
        self.assertRaises(DecodeFailed, cipher(mode="MTE").open_url, b64encode(sealed_body))

    def test_directions_enforced(self) -> None:
        req, resp = cipher(), cipher(direction=S2C)
        self.assertRaises(ValueError, resp.seal_url, "/")
        self.assertRaises(ValueError, resp.open_url, "AAAA")
        self.assertRaises(ValueError, resp.seal_request_headers, {}, "GET", "/",
                          has_body=False)
        self.assertRaises(ValueError, req.seal_response_headers, {}, 200)
        self.assertRaises(ValueError, req.open_response_headers, "AAAA", 200)
        self.assertRaises(ValueError, resp.open_request_headers, "AAAA", "GET", "/",
                          has_body=False)

    def test_keys_must_match_header(self) -> None:
        other_pair = PairKeys(1, UUID, "another-pair-id-0", b"\x11" * 32, b"\x22" * 32)
        self.assertRaises(ValueError, MessageCipher, other_pair, header(), C2S)
        other_client = PairKeys(1, "22345678-1234-4234-8234-123456789abc", PAIR,
                                b"\x11" * 32, b"\x22" * 32)
        self.assertRaises(ValueError, MessageCipher, other_client, header(), C2S)
        self.assertRaises(ValueError, MessageCipher, KEYS, header(), 3)

    def test_aad_and_nonce_layout(self) -> None:
        self.assertEqual(sealing.item_nonce(1, 2).hex(), "000000000000000100000002")
        aad = sealing.item_aad(1, C2S, sealing.Kind.BODY, True, 0x1F, 258, "p" * 16)
        self.assertEqual(aad, b"mterelay" + b"\x00\x01" + b"\x01\x03\x01\x1f"
                         + (258).to_bytes(8, "big") + b"\x10" + b"p" * 16)
        self.assertEqual(sealing.request_binding("GET", "/a", False),
                         b"\x03GET\x00\x00\x00\x00\x02/a")
        self.assertEqual(sealing.request_binding(b"PUT", b"/", True),
                         b"\x03PUT\x01\x00\x00\x00\x01/")
        self.assertEqual(sealing.response_binding(404), b"\x01\x94")
        self.assertRaises(ValueError, sealing.request_binding, "G" * 256, "/", False)
        self.assertRaises(ValueError, sealing.request_binding, "GET", "/", 0)
        self.assertRaises(ValueError, sealing.response_binding, True)


class LengthTests(SynchronousTestCase):
    def test_sealed_length(self) -> None:
        self.assertEqual(sealed_length(0, "MKE"), 16)
        self.assertEqual(sealed_length(1, "MKE"), 17)
        self.assertEqual(sealed_length(CHUNK_SIZE, "MKE"), SEALED_CHUNK_SIZE)
        self.assertEqual(sealed_length(CHUNK_SIZE + 1, "MKE"), SEALED_CHUNK_SIZE + 17)
        self.assertEqual(sealed_length(0, "MTE"), 16)
        self.assertEqual(sealed_length(10**6, "MTE"), 10**6 + 16)
        self.assertRaises(ValueError, sealed_length, -1, "MKE")
        self.assertRaises(ValueError, sealed_length, 1, "XXX")

    def test_plain_length_rejects_impossible(self) -> None:
        for sealed in (0, 15, SEALED_CHUNK_SIZE + 1, SEALED_CHUNK_SIZE + 15,
                       SEALED_CHUNK_SIZE + 16):
            self.assertRaises(DecodeFailed, plain_length, sealed, "MKE")
        self.assertRaises(DecodeFailed, plain_length, 15, "MTE")
        self.assertRaises(ValueError, plain_length, 16, "XXX")

    @settings(max_examples=300)
    @given(st.integers(0, 2**40), st.sampled_from(["MTE", "MKE"]))
    def test_inverse(self, n: int, mode: str) -> None:
        self.assertEqual(plain_length(sealed_length(n, mode), mode), n)


class BodyTests(SynchronousTestCase):
    def test_empty_mke_body_is_one_tag(self) -> None:
        sealed = cipher().seal_body(b"")
        self.assertEqual(len(sealed), 16)
        self.assertEqual(cipher().open_body(sealed), b"")

    def test_sealer_holds_back_a_full_chunk(self) -> None:
        sealer = cipher().body_sealer()
        self.assertEqual(sealer.feed(body(CHUNK_SIZE)), b"")
        out = sealer.feed(b"x")
        self.assertEqual(len(out), SEALED_CHUNK_SIZE)
        self.assertEqual(len(sealer.finish()), 17)
        self.assertRaises(EncodeFailed, sealer.finish)
        self.assertRaises(EncodeFailed, sealer.feed, b"x")

    def test_opener_holds_back_the_last_possible_chunk(self) -> None:
        data = body(2 * CHUNK_SIZE)
        sealed = cipher().seal_body(data)
        self.assertEqual(len(sealed), 2 * SEALED_CHUNK_SIZE)
        opener = cipher().body_opener()
        self.assertEqual(opener.feed(sealed[:SEALED_CHUNK_SIZE]), b"")
        self.assertEqual(opener.feed(sealed[SEALED_CHUNK_SIZE:SEALED_CHUNK_SIZE + 1]),
                         data[:CHUNK_SIZE])
        self.assertEqual(opener.feed(sealed[SEALED_CHUNK_SIZE + 1:]), b"")
        self.assertEqual(opener.finish(), data[CHUNK_SIZE:])
        self.assertRaises(DecodeFailed, opener.feed, b"x")
        self.assertRaises(DecodeFailed, opener.finish)

    def test_non_canonical_empty_final_chunk(self) -> None:
        c = cipher()
        first = c._seal_body_chunk(2, False, body(CHUNK_SIZE))
        last = c._seal_body_chunk(3, True, b"")
        with self.assertRaises(DecodeFailed) as ctx:
            c.open_body(first + last)
        self.assertIn("non-canonical", ctx.exception.info)

    def test_truncation(self) -> None:
        sealed = cipher().seal_body(body(CHUNK_SIZE + 5))
        for cut in (0, 1, 15, len(sealed) - 1, SEALED_CHUNK_SIZE, SEALED_CHUNK_SIZE + 16):
            self.assertRaises(DecodeFailed, cipher().open_body, sealed[:cut])

    def test_failure_poisons_opener(self) -> None:
        sealed = bytearray(cipher().seal_body(body(3 * CHUNK_SIZE)))
        sealed[5] ^= 1
        opener = cipher().body_opener()
        self.assertRaises(DecodeFailed, opener.feed, bytes(sealed))
        self.assertRaises(DecodeFailed, opener.feed, b"")
        self.assertRaises(DecodeFailed, opener.finish)

    def test_mte_body(self) -> None:
        data = body(3 * CHUNK_SIZE)
        sealed = cipher(mode="MTE").seal_body(data)
        self.assertEqual(len(sealed), len(data) + 16)
        self.assertEqual(cipher(mode="MTE").open_body(sealed), data)
        opener = cipher(mode="MTE").body_opener()
        self.assertEqual(opener.feed(sealed[:-1]), b"")
        self.assertEqual(opener.feed(sealed[-1:]), b"")
        self.assertEqual(opener.finish(), data)

    def test_mode_is_bound(self) -> None:
        """A short body has the same layout in both modes; the flag still tells them apart."""
        sealed = cipher(mode="MTE").seal_body(b"hello")
        self.assertRaises(DecodeFailed, cipher(mode="MKE").open_body, sealed)

    def test_mte_limits(self) -> None:
        self.patch(sealing, "MAX_MTE_BODY", 10)
        sealer = cipher(mode="MTE").body_sealer()
        sealer.feed(b"x" * 10)
        self.assertRaises(EncodeFailed, sealer.feed, b"x")
        opener = cipher(mode="MTE").body_opener()
        opener.feed(b"x" * 26)
        self.assertRaises(DecodeFailed, opener.feed, b"x")

    def test_chunk_limit(self) -> None:
        self.patch(sealing, "MAX_CHUNKS", 2)
        data = body(2 * CHUNK_SIZE + 1)
        self.assertRaises(EncodeFailed, cipher().seal_body, data)
        self.patch(sealing, "MAX_CHUNKS", 3)
        sealed = cipher().seal_body(data)
        self.patch(sealing, "MAX_CHUNKS", 2)
        self.assertRaises(DecodeFailed, cipher().open_body, sealed)

    def test_body_enc_0(self) -> None:
        self.assertRaises(ValueError, cipher(body_enc=False).body_sealer)
        self.assertRaises(ValueError, cipher(body_enc=False).body_opener)

    def test_splicing(self) -> None:
        data = body(CHUNK_SIZE + 100)
        sealed = cipher().seal_body(data)
        for other in (cipher(seq=8), cipher(keys=OTHER_KEYS), cipher(direction=S2C),
                      cipher(url_enc=False), cipher(headers_enc=False)):
            self.assertRaises(DecodeFailed, other.open_body, sealed)
        # A chunk from another message with identical plaintext does not fit either.
        other = cipher(seq=8).seal_body(data)
        mixed = sealed[:SEALED_CHUNK_SIZE] + other[SEALED_CHUNK_SIZE:]
        self.assertRaises(DecodeFailed, cipher().open_body, mixed)

    def test_memoryview_and_bytearray_input(self) -> None:
        data = body(CHUNK_SIZE * 2 + 3)
        sealed = stream_seal(cipher(), [memoryview(data)[:5], bytearray(data[5:])])
        self.assertEqual(stream_open(cipher(), [memoryview(sealed)]), data)


class BodyPropertyTests(SynchronousTestCase):
    lengths = st.one_of(st.integers(0, 300), st.integers(CHUNK_SIZE - 2, CHUNK_SIZE + 2),
                        st.integers(0, 3 * CHUNK_SIZE + 20))

    @SETTINGS
    @given(length=lengths, seed=st.integers(0, 2**16), mode=st.sampled_from(["MTE", "MKE"]),
           cuts_in=st.lists(st.integers(0, 10**6), max_size=8),
           cuts_out=st.lists(st.integers(0, 10**6), max_size=8))
    def test_round_trip_any_chunking(self, length: int, seed: int, mode: str,
                                     cuts_in: list[int], cuts_out: list[int]) -> None:
        data = body(length, seed)
        sealed = stream_seal(cipher(mode), split(data, cuts_in))
        self.assertEqual(sealed, cipher(mode).seal_body(data))
        self.assertEqual(len(sealed), sealed_length(length, mode))
        self.assertEqual(stream_open(cipher(mode), split(sealed, cuts_out)), data)

    @SETTINGS
    @given(length=lengths, seed=st.integers(0, 2**16), mode=st.sampled_from(["MTE", "MKE"]),
           bit=st.integers(0, 2**40), cuts=st.lists(st.integers(0, 10**6), max_size=4))
    def test_any_flipped_bit_fails(self, length: int, seed: int, mode: str, bit: int,
                                   cuts: list[int]) -> None:
        sealed = bytearray(cipher(mode).seal_body(body(length, seed)))
        bit %= len(sealed) * 8
        sealed[bit // 8] ^= 1 << (bit % 8)
        self.assertRaises(DecodeFailed, stream_open, cipher(mode), split(bytes(sealed), cuts))

    @SETTINGS
    @given(length=st.integers(1, 4 * CHUNK_SIZE), seed=st.integers(0, 2**16),
           ops=st.lists(st.tuples(st.sampled_from(["swap", "dup", "drop", "cut", "append"]),
                                  st.integers(0, 100), st.integers(0, 100)),
                        min_size=1, max_size=3))
    def test_reordered_duplicated_truncated_chunks_fail(self, length: int, seed: int,
                                                        ops: list) -> None:
        sealed = cipher().seal_body(body(length, seed))
        chunks = [sealed[i:i + SEALED_CHUNK_SIZE]
                  for i in range(0, len(sealed), SEALED_CHUNK_SIZE)]
        for op, a, b in ops:
            if not chunks:
                break
            i, j = a % len(chunks), b % len(chunks)
            if op == "swap":
                chunks[i], chunks[j] = chunks[j], chunks[i]
            elif op == "dup":
                chunks.insert(i, chunks[i])
            elif op == "drop":
                del chunks[i]
            elif op == "cut":
                chunks[i] = chunks[i][:b % max(1, len(chunks[i]))]
            else:
                chunks.append(cipher(seq=9).seal_body(b"x"))
        tampered = b"".join(chunks)
        if tampered == sealed:
            return
        self.assertRaises(DecodeFailed, cipher().open_body, tampered)

    @settings(max_examples=100, deadline=None)
    @given(token_bit=st.integers(0, 2**20), which=st.sampled_from(["url", "headers"]))
    def test_item_bit_flips_fail(self, token_bit: int, which: str) -> None:
        c = cipher()
        if which == "url":
            token = c.seal_url("/api/some/path?x=1")
        else:
            token = c.seal_request_headers({"content-type": "a/b"}, "GET", "/t", has_body=False)
        raw = bytearray(b64decode(token, "t"))
        token_bit %= len(raw) * 8
        raw[token_bit // 8] ^= 1 << (token_bit % 8)
        bad = b64encode(bytes(raw))
        if which == "url":
            self.assertRaises(DecodeFailed, c.open_url, bad)
        else:
            self.assertRaises(DecodeFailed, c.open_request_headers, bad, "GET", "/t",
                              has_body=False)

    @settings(max_examples=200, deadline=None)
    @given(garbage=st.binary(max_size=SEALED_CHUNK_SIZE + 40),
           mode=st.sampled_from(["MTE", "MKE"]))
    def test_garbage_body_only_typed_error(self, garbage: bytes, mode: str) -> None:
        self.assertRaises(DecodeFailed, cipher(mode).open_body, garbage)

    @settings(max_examples=200, deadline=None)
    @given(garbage=st.one_of(st.text(max_size=80), st.binary(max_size=80)))
    def test_garbage_items_only_typed_error(self, garbage: str | bytes) -> None:
        c = cipher()
        self.assertRaises(DecodeFailed, c.open_url, garbage)
        self.assertRaises(DecodeFailed, c.open_request_headers, garbage, "GET", "/", has_body=False)
