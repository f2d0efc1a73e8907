"""A finished body leaves no reference cycle behind (issue 18, the relay's own work).

Each cycle left per request is garbage only CPython's cyclic collector can
free: it keeps the collector's allocation count growing, so collections run
more often and walk more objects.  Measured on a relay pair under load
before these were broken: relay B collected about 74 objects per request
(the sealing writer and its coalescer, the request body pipe and its
opener), relay A about 53.  Each test builds the real objects, runs them to
the end, drops them with the collector disabled and checks that reference
counting alone freed them.
"""

from __future__ import annotations

import gc
import io
import weakref
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mterelay.client.bodies import SealingProducer, body_data
from mterelay.http.streaming import BodyPipe
from mterelay.http.timing import Stopwatch
from mterelay.protocol.header import MODE_MKE, MODE_MKR, RelayHeader
from mterelay.protocol.sealing import Direction, MessageCipher
from mterelay.web.inbound import OpeningProducer, SealingWriter
from tests.helpers.clientsupport import paired_keys


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.paused = self.resumed = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1


def cipher(mode: str) -> MessageCipher:
    client_id, keys, _ = paired_keys()
    header = RelayHeader(client_id, keys.pair_id, mode, False, True, True, True, 3,
                         mode == MODE_MKR)
    return MessageCipher(keys, header, Direction.C2S)


class NoCycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def assertFreed(self, ref: "weakref.ref[Any]") -> None:
        self.assertIsNone(ref(), "left for the cyclic garbage collector")

    def test_body_read_whole_after_it_arrived(self) -> None:
        pipe = BodyPipe(3, Sink())
        pipe.write(b"abc")
        pipe.finish()
        result = self.successResultOf(pipe.read_all(10))
        self.assertEqual(result, b"abc")
        ref = weakref.ref(pipe)
        del pipe
        self.assertFreed(ref)

    def test_body_read_whole_as_it_arrives(self) -> None:
        pipe = BodyPipe(3, Sink())
        reading = pipe.read_all(10)
        pipe.write(b"abc")
        pipe.finish()
        self.assertEqual(self.successResultOf(reading), b"abc")
        ref = weakref.ref(pipe)
        del pipe, reading
        self.assertFreed(ref)

    def test_body_opened_on_its_way_upstream(self) -> None:
        seal = cipher(MODE_MKE)
        sealed = seal.seal_body(b"hello")
        pipe = BodyPipe(len(sealed), Sink())
        producer = OpeningProducer(pipe, seal.body_opener(), 5)
        upstream = Sink()
        done = producer.startProducing(upstream)
        pipe.write(sealed)
        pipe.finish()
        self.successResultOf(done)
        self.assertEqual(b"".join(upstream.writes), b"hello")
        refs = weakref.ref(pipe), weakref.ref(producer)
        del pipe, producer, done
        for ref in refs:
            self.assertFreed(ref)

    def test_response_sealed_in_records(self) -> None:
        clock, request = Clock(), Sink()
        writer = SealingWriter(request, cipher(MODE_MKR).body_sealer(), Stopwatch(None), clock)
        writer.write(b"event: 1\n\n")
        clock.advance(0)
        writer.write(b"event: 2\n\n")
        self.assertTrue(writer.finish())
        ref = weakref.ref(writer)
        del writer
        self.assertFreed(ref)

    def test_response_sealing_abandoned(self) -> None:
        clock, request = Clock(), Sink()
        writer = SealingWriter(request, cipher(MODE_MKR).body_sealer(), Stopwatch(None), clock)
        writer.write(b"event: 1\n\n")
        writer.discard()
        ref = weakref.ref(writer)
        del writer
        self.assertFreed(ref)
        clock.advance(0)
        self.assertEqual(request.writes, [])

    def test_request_body_sealed_in_records(self) -> None:
        clock = Clock()
        body = body_data(io.BytesIO(b"x" * 1000))
        assert body is not None
        producer = SealingProducer(body.open(clock), cipher(MODE_MKR).body_sealer(), None,
                                   clock=clock)
        consumer = Sink()
        done = producer.startProducing(consumer)
        for _ in range(3):
            clock.advance(0)
        self.successResultOf(done)
        self.assertTrue(consumer.writes)
        ref = weakref.ref(producer)
        del producer, done
        self.assertFreed(ref)

    def test_body_opened_for_a_consumer_that_holds_its_producer(self) -> None:
        # Twisted's LengthEnforcingConsumer keeps the producer it consumes.
        seal = cipher(MODE_MKE)
        sealed = seal.seal_body(b"hello")
        pipe = BodyPipe(len(sealed), Sink())
        producer = OpeningProducer(pipe, seal.body_opener(), 5)
        upstream = Sink()
        upstream.producer = producer  # type: ignore[attr-defined]
        done = producer.startProducing(upstream)
        pipe.write(sealed)
        pipe.finish()
        self.successResultOf(done)
        refs = weakref.ref(producer), weakref.ref(upstream)
        del pipe, producer, upstream, done
        for ref in refs:
            self.assertFreed(ref)
