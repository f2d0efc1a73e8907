"""The client's fast paths give what the general paths give, and only where they may.

Each fast path of the outbound hot path (issue 18) is pinned here twice: its
result equals the general path's, byte for byte, and the general path is
still taken where the fast one would not be the same.
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent
from zope.interface import implementer

from mterelay.client.bodies import (READ_SIZE, SealedBytes, SealingProducer, body_data,
                                    seal_whole)
from mterelay.protocol.header import MODE_MKE, MODE_MKR, MODE_MTE, RelayHeader
from mterelay.protocol.sealing import Direction, MessageCipher, sealed_length
from tests.helpers.clientsupport import RELAY, ClientHarness, paired_keys


class Consumer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def cipher(mode: str) -> MessageCipher:
    """The same keys, header and seq every call: equal plaintexts seal equally."""
    client_id, keys, _ = _PAIR
    header = RelayHeader(client_id, keys.pair_id, mode, True, True, True, True, 7,
                         records=mode == MODE_MKR)
    return MessageCipher(keys, header, Direction.C2S)


_PAIR = paired_keys()


class SealWholeTests(SynchronousTestCase):
    """``seal_whole`` writes exactly what the pumped SealingProducer writes."""

    def pumped(self, mode: str, data: bytes) -> list[bytes]:
        body = body_data(data)
        assert body is not None
        clock = task.Clock()
        length = None if mode == MODE_MKR else sealed_length(len(data), mode)
        producer = SealingProducer(body.open(clock), cipher(mode).body_sealer(), length,
                                   clock=clock)
        consumer = Consumer()
        done = producer.startProducing(consumer)
        for _ in range(5):
            clock.advance(0)
        self.successResultOf(done)
        return consumer.writes

    def test_same_bytes_in_every_framing(self) -> None:
        for mode in (MODE_MKR, MODE_MKE, MODE_MTE):
            for size in (0, 1, 1024, 65_535, READ_SIZE):
                data = os.urandom(size)
                with self.subTest(mode=mode, size=size):
                    whole = seal_whole(cipher(mode).body_sealer(), data)
                    pumped = self.pumped(mode, data)
                    self.assertEqual(b"".join(pumped), whole)
                    if mode == MODE_MKR:
                        # Records go chunked: one write is one HTTP chunk.
                        self.assertEqual(pumped, [whole])

    def test_small_is_bytes_of_one_read_only(self) -> None:
        self.assertEqual(body_data(b"x" * READ_SIZE).small, b"x" * READ_SIZE)  # type: ignore
        self.assertEqual(body_data(b"").small, b"")  # type: ignore[union-attr]
        self.assertIsNone(body_data(b"x" * (READ_SIZE + 1)).small)  # type: ignore
        self.assertIsNone(body_data(io.BytesIO(b"abc")).small)  # type: ignore[union-attr]

    def test_sealed_bytes_lengths(self) -> None:
        self.assertEqual(SealedBytes(b"abc", 3).length, 3)
        self.assertIs(SealedBytes(b"abc", None).length, UNKNOWN_LENGTH)
        consumer = Consumer()
        self.successResultOf(SealedBytes(b"abc", None).startProducing(consumer))
        self.assertEqual(consumer.writes, [b"abc"])


@implementer(IAgent)
class ProducerSpy:
    """Passes requests on and remembers each body producer's type."""

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.producers: list[str] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> "Deferred[Any]":  # noqa: N803
        if bodyProducer is not None and b"/api/mte-pair" not in uri:
            self.producers.append(type(bodyProducer).__name__)
        return self.agent.request(method, uri, headers, bodyProducer)


class ClientBodyPathTests(SynchronousTestCase):
    """The RelayClient seals small bytes at once, and pumps everything else."""

    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.spy = ProducerSpy(self.h.tamper)

    def post(self, data: Any, **options: Any) -> bytes:
        client = self.h.client(pairs=1, agent=self.spy, **options)
        response, body = self.h.call(client, "POST", "/api/echo", data=data)
        self.assertEqual(response.code, 200)
        return self.h.upstream.received[-1].body

    def test_small_bytes_are_sealed_at_once_in_every_framing(self) -> None:
        for framing in ("MKR", "MKE", "MTE"):
            data = os.urandom(1000)
            self.assertEqual(self.post(data, framing=framing), data)
        self.assertEqual(self.spy.producers, ["SealedBytes"] * 3)

    def test_empty_post_is_sealed_at_once(self) -> None:
        self.assertEqual(self.post(b""), b"")
        self.assertEqual(self.spy.producers, ["SealedBytes"])

    def test_larger_bytes_and_files_are_pumped(self) -> None:
        big = os.urandom(READ_SIZE + 1)
        self.assertEqual(self.post(big), big)
        self.assertEqual(self.post(io.BytesIO(b"a file")), b"a file")
        self.assertEqual(self.spy.producers, ["SealingProducer"] * 2)
