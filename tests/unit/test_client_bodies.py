"""Streaming request bodies through the sealer, response bodies through the opener."""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from mterelay.client.bodies import BodyError, OpeningProtocol, SealingProducer, body_data
from mterelay.protocol.errors import DecodeFailed, EncodeFailed
from mterelay.protocol.header import MODE_MKE, MODE_MTE, RelayHeader
from mterelay.protocol.sealing import Direction, MessageCipher, sealed_length
from tests.helpers.clientsupport import paired_keys
from tests.helpers.transports import FakeTransport


class Consumer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class OneWayFile(io.RawIOBase):
    """A non-seekable binary stream (a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)


@implementer(IBodyProducer)
class ListProducer:
    def __init__(self, parts: list[bytes], length: Any = UNKNOWN_LENGTH) -> None:
        self.parts = parts
        self.length = length
        self.stopped = False

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        for part in self.parts:
            consumer.write(part)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


def ciphers(mode: str = MODE_MKE) -> tuple[MessageCipher, MessageCipher]:
    client_id, keys, relay_keys = paired_keys()
    header = RelayHeader(client_id, keys.pair_id, mode, True, True, True, True, 3)
    return MessageCipher(keys, header, Direction.C2S), MessageCipher(relay_keys, header,
                                                                     Direction.C2S)


class RequestBodyTests(SynchronousTestCase):
    def produce(self, data: Any, mode: str = MODE_MKE, clock: Any = None
                ) -> tuple[SealingProducer, Consumer, "Deferred[None]", MessageCipher]:
        seal, open_ = ciphers(mode)
        body = body_data(data)
        assert body is not None
        length = None if body.length is None else sealed_length(body.length, mode)
        producer = SealingProducer(body.open(clock or task.Clock()), seal.body_sealer(), length)
        consumer = Consumer()
        return producer, consumer, producer.startProducing(consumer), open_

    def test_bytes_in_one_turn(self) -> None:
        data = os.urandom(200_000)
        producer, consumer, done, opener = self.produce(data)
        self.successResultOf(done)
        self.assertEqual(producer.length, sealed_length(len(data), MODE_MKE))
        self.assertEqual(len(consumer.data), producer.length)
        self.assertEqual(opener.open_body(bytes(consumer.data)), data)

    def test_large_file_yields_pauses_and_resumes(self) -> None:
        data = os.urandom(3 * 1024 * 1024 + 5)
        clock = task.Clock()
        producer, consumer, done, opener = self.produce(io.BytesIO(data), clock=clock)
        self.assertNoResult(done)
        self.assertLessEqual(len(consumer.data), 1024 * 1024 + 64, "one MiB per reactor turn")
        producer.pauseProducing()
        clock.advance(0)
        held = len(consumer.data)
        clock.advance(0)
        self.assertEqual(len(consumer.data), held, "paused: nothing read")
        producer.resumeProducing()
        for _ in range(10):
            clock.advance(0)
        self.successResultOf(done)
        self.assertEqual(opener.open_body(bytes(consumer.data)), data)

    def test_seekable_file_from_its_position_and_replayable(self) -> None:
        handle = io.BytesIO(b"skip" + b"payload")
        handle.seek(4)
        body = body_data(handle)
        assert body is not None
        self.assertEqual((body.length, body.replayable), (7, True))
        for _ in range(2):
            seal, opener = ciphers()
            producer = SealingProducer(body.open(task.Clock()), seal.body_sealer(),
                                       sealed_length(7, MODE_MKE))
            consumer = Consumer()
            self.successResultOf(producer.startProducing(consumer))
            self.assertEqual(opener.open_body(bytes(consumer.data)), b"payload")

    def test_pipe_is_chunked_and_not_replayable(self) -> None:
        body = body_data(OneWayFile(b"abc"))
        assert body is not None
        self.assertEqual((body.length, body.replayable), (None, False))
        producer, consumer, done, opener = self.produce(OneWayFile(b"abc" * 50_000))
        self.assertIs(producer.length, UNKNOWN_LENGTH)
        self.successResultOf(done)
        self.assertEqual(opener.open_body(bytes(consumer.data)), b"abc" * 50_000)
        body.open(task.Clock())
        self.assertFalse(body.can_open)
        with self.assertRaises(RuntimeError):
            body.open(task.Clock())

    def test_producer_source(self) -> None:
        inner = ListProducer([b"a" * 70_000, b"b" * 70_000], length=140_000)
        body = body_data(inner)
        assert body is not None
        self.assertEqual((body.length, body.replayable), (140_000, False))
        producer, consumer, done, opener = self.produce(inner)
        self.successResultOf(done)
        self.assertEqual(opener.open_body(bytes(consumer.data)), b"a" * 70_000 + b"b" * 70_000)
        producer.stopProducing()
        self.assertFalse(inner.stopped, "already finished: nothing to stop")

    def test_file_shorter_than_measured_fails(self) -> None:
        class Shrinking(io.BytesIO):
            def read(self, n: int = -1) -> bytes:
                return super().read(min(n, 10)) if self.tell() < 10 else b""

        _, _, done, _ = self.produce(Shrinking(b"x" * 100))
        self.failureResultOf(done, BodyError)

    def test_text_and_str_are_refused(self) -> None:
        with self.assertRaises(TypeError):
            body_data("text")
        with self.assertRaises(TypeError):
            body_data(object())
        _, _, done, _ = self.produce(io.StringIO("text"))
        self.failureResultOf(done, TypeError)

    def test_stop_halts_reading(self) -> None:
        clock = task.Clock()
        producer, consumer, done, _ = self.produce(io.BytesIO(b"z" * 3_000_000), clock=clock)
        producer.stopProducing()
        size = len(consumer.data)
        clock.advance(0)
        self.assertEqual(len(consumer.data), size)
        self.assertNoResult(done)  # IBodyProducer: never fires after stopProducing

    def test_mte_limit_is_561(self) -> None:
        import mterelay.protocol.sealing as sealing
        self.patch(sealing, "MAX_MTE_BODY", 1000)
        _, _, done, _ = self.produce(OneWayFile(b"q" * 5000), mode=MODE_MTE)
        self.failureResultOf(done, EncodeFailed)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason


class ResponseBodyTests(SynchronousTestCase):
    def deliver(self, sealed: bytes, pieces: int = 7, reason: Failure | None = None
                ) -> tuple[Recorder, FakeTransport]:
        _, opener = self.ciphers
        inner, transport = Recorder(), FakeTransport()
        protocol = OpeningProtocol(opener.body_opener(), inner)
        protocol.makeConnection(transport)
        step = max(1, len(sealed) // pieces)
        for offset in range(0, len(sealed), step):
            protocol.dataReceived(sealed[offset:offset + step])
        protocol.connectionLost(reason or Failure(ResponseDone()))
        return inner, transport

    def setUp(self) -> None:
        self.ciphers = ciphers()
        self.data = os.urandom(200_000)
        self.sealed = self.ciphers[0].seal_body(self.data)

    def decode_failed(self, inner: Recorder) -> None:
        assert inner.reason is not None
        self.assertTrue(inner.reason.check(ResponseFailed), inner.reason)
        self.assertTrue(inner.reason.value.reasons[0].check(DecodeFailed))

    def test_complete_body(self) -> None:
        inner, _ = self.deliver(self.sealed)
        self.assertEqual(inner.data, self.data)
        assert inner.reason is not None
        self.assertTrue(inner.reason.check(ResponseDone))

    def test_truncated_body(self) -> None:
        inner, _ = self.deliver(self.sealed[:-100])
        self.decode_failed(inner)
        self.assertLess(len(inner.data), len(self.data))

    def test_tampered_chunk_drops_the_connection(self) -> None:
        tampered = bytearray(self.sealed)
        tampered[10] ^= 1
        inner, transport = self.deliver(bytes(tampered))
        self.decode_failed(inner)
        self.assertTrue(transport.stopped)
        self.assertEqual(inner.data, b"")

    def test_connection_lost_midway(self) -> None:
        lost = Failure(ResponseFailed([Failure(ConnectionError("reset"))]))
        inner, _ = self.deliver(self.sealed[:70_000], reason=lost)
        self.decode_failed(inner)
        self.assertTrue(inner.reason.value.reasons[1].check(ConnectionError))
