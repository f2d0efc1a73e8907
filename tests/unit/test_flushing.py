"""Flush on pause, stream timeouts and the record-framing choices, without a network."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from mterelay.client.bodies import SealingProducer
from mterelay.client.messages import SealOptions, open_response, seal_request
from mterelay.http.flushing import TurnCoalescer
from mterelay.protocol.errors import DecodeFailed
from mterelay.protocol.header import MODE_MKE, MODE_MKR, MODE_MTE, RelayHeader
from mterelay.protocol.records import RECORD_OVERHEAD
from mterelay.protocol.sealing import Direction, MessageCipher
from mterelay.http.upstream import StreamIdle, stream_body
from mterelay.web.inbound import SealingWriter
from mterelay.http.timing import Stopwatch
from tests.helpers.clientsupport import paired_keys


class Sink:
    """A request/transport stand-in: records writes and producer calls."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.producer: Any = None
        self.stopped = 0
        self.paused = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def stopProducing(self) -> None:
        self.stopped += 1

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        pass


class FakeResponse:
    def __init__(self) -> None:
        self.transport = Sink()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def ciphers(mode: str = MODE_MKR) -> tuple[MessageCipher, MessageCipher]:
    client_id, keys, _ = paired_keys()
    header = RelayHeader(client_id, keys.pair_id, mode, False, True, True, True, 3, True)
    return (MessageCipher(keys, header, Direction.C2S),
            MessageCipher(keys, header, Direction.C2S))


class CoalescerTests(SynchronousTestCase):
    def test_one_turn_one_flush(self) -> None:
        clock, out = Clock(), []
        pending = TurnCoalescer(clock, out.append)
        pending.write(b"a")
        pending.write(b"")
        pending.write(b"b")
        self.assertEqual((out, pending.pending), ([], 2))
        clock.advance(0)
        self.assertEqual(out, [b"ab"])
        pending.write(b"c")
        self.assertEqual(pending.take(), b"c")
        clock.advance(0)
        self.assertEqual(out, [b"ab"])


class SealingWriterTests(SynchronousTestCase):
    def test_records_leave_at_the_next_turn_never_later(self) -> None:
        seal, open_ = ciphers()
        clock, request = Clock(), Sink()
        writer = SealingWriter(request, seal.body_sealer(), Stopwatch(None), clock)
        opener = open_.body_opener()
        writer.write(b"event: 1\n\n")
        writer.write(b"event: 2\n\n")
        self.assertEqual(request.writes, [])
        clock.advance(0)
        [record] = request.writes
        self.assertEqual(len(record), 20 + RECORD_OVERHEAD)  # both in one record
        self.assertEqual(opener.feed(record), b"event: 1\n\nevent: 2\n\n")
        writer.write(b"event: 3\n\n")  # the end comes before the next turn
        tail = writer.finish()
        self.assertEqual(opener.feed(tail), b"event: 3\n\n")
        self.assertEqual(opener.finish(), b"")

    def test_declared_length_keeps_the_last_piece_for_finish(self) -> None:
        # The piece that completes a declared length is sealed by finish as
        # the final record instead of being scheduled for the next turn.
        seal, open_ = ciphers()
        clock, request = Clock(), Sink()
        writer = SealingWriter(request, seal.body_sealer(), Stopwatch(None), clock, 20)
        opener = open_.body_opener()
        writer.write(b"event: 1\n\n")
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # short of the length: next turn
        clock.advance(0)
        [record] = request.writes
        self.assertEqual(opener.feed(record), b"event: 1\n\n")
        writer.write(b"event: 2\n\n")
        self.assertEqual(clock.getDelayedCalls(), [])  # complete: nothing scheduled
        clock.advance(0)
        self.assertEqual(len(request.writes), 1)
        tail = writer.finish()
        self.assertEqual(opener.feed(tail), b"event: 2\n\n")
        self.assertEqual(opener.finish(), b"")

    def test_declared_length_gives_the_bytes_of_the_slow_path(self) -> None:
        # One whole body in one write, as a small answer arrives: the same
        # sealed bytes with or without the declared length.
        seal, open_ = ciphers()
        outputs = []
        for length in (None, 11):
            clock, request = Clock(), Sink()
            writer = SealingWriter(request, seal.body_sealer(), Stopwatch(None), clock, length)
            writer.write(b"hello world")
            outputs.append(b"".join(request.writes) + writer.finish())
        self.assertEqual(outputs[0], outputs[1])
        self.assertEqual(open_.open_body(outputs[1]), b"hello world")

    def test_declared_length_discard_drops_the_kept_piece(self) -> None:
        seal, _ = ciphers()
        clock, request = Clock(), Sink()
        writer = SealingWriter(request, seal.body_sealer(), Stopwatch(None), clock, 3)
        writer.write(b"abc")
        writer.discard()
        self.assertEqual((request.writes, writer._last, clock.getDelayedCalls()), ([], [], []))

    def test_mke_is_unchanged(self) -> None:
        seal, _ = ciphers(MODE_MKE)
        clock, request = Clock(), Sink()
        writer = SealingWriter(request, seal.body_sealer(), Stopwatch(None), clock)
        writer.write(b"x" * 10)
        clock.advance(0)
        self.assertEqual(request.writes, [])  # held for a full 64 KiB chunk


class StreamBodyTests(SynchronousTestCase):
    def test_idle_body_is_cut_after_the_timeout(self) -> None:
        clock, consumer, response = Clock(), Sink(), FakeResponse()
        finished = stream_body(response, consumer, clock, 5)
        failures: list[Failure] = []
        finished.addErrback(failures.append)
        clock.advance(4)
        response.protocol.dataReceived(b"x")  # a byte resets the clock
        clock.advance(4)
        self.assertEqual((failures, response.transport.stopped), ([], 0))
        clock.advance(1.5)
        self.assertTrue(failures[0].check(StreamIdle))
        self.assertEqual(response.transport.stopped, 1)
        response.protocol.connectionLost(Failure(ResponseDone()))  # no second result

    def test_paused_time_does_not_count(self) -> None:
        clock, consumer, response = Clock(), Sink(), FakeResponse()
        finished = stream_body(response, consumer, clock, 5)
        consumer.producer.pauseProducing()
        clock.advance(60)
        self.assertFalse(finished.called)
        consumer.producer.resumeProducing()
        clock.advance(5)
        self.assertTrue(finished.called)
        finished.addErrback(lambda f: f.trap(StreamIdle))

    def test_cancel_closes_the_body_connection(self) -> None:
        response = FakeResponse()
        finished = stream_body(response, Sink())
        finished.cancel()
        self.assertEqual(response.transport.stopped, 1)
        self.failureResultOf(finished, CancelledError)

    def test_consumer_stopping_stops_the_body(self) -> None:
        response, consumer = FakeResponse(), Sink()
        finished = stream_body(response, consumer)
        consumer.producer.stopProducing()  # the client's connection was lost
        self.assertEqual(response.transport.stopped, 1)
        self.failureResultOf(finished, CancelledError)

    def test_complete_body(self) -> None:
        response, consumer = FakeResponse(), Sink()
        finished = stream_body(response, consumer, Clock(), 5)
        response.protocol.dataReceived(b"abc")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertIsNone(self.successResultOf(finished))
        self.assertEqual(consumer.writes, [b"abc"])


class _CountingClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.made = 0

    def callLater(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        self.made += 1
        return super().callLater(*args, **kwargs)


class _Buffered(FakeResponse):
    """A response whose body is all there when ``deliverBody`` runs (the usual small answer)."""

    def __init__(self, pause: bool = False, end: bool = True) -> None:
        super().__init__()
        self.pause, self.end = pause, end

    def deliverBody(self, protocol: Any) -> None:
        super().deliverBody(protocol)
        protocol.dataReceived(b"all")
        if self.pause:
            protocol.consumer.producer.pauseProducing()
        if self.end:
            protocol.connectionLost(Failure(ResponseDone()))


class StreamBodyClockTests(SynchronousTestCase):
    """The idle clock starts after ``deliverBody``: a body complete by then needs no timer."""

    def test_complete_at_delivery_makes_no_timer(self) -> None:
        clock, consumer = _CountingClock(), Sink()
        finished = stream_body(_Buffered(), consumer, clock, 5)
        self.assertIsNone(self.successResultOf(finished))
        self.assertEqual((consumer.writes, clock.made, clock.getDelayedCalls()),
                         ([b"all"], 0, []))

    def test_incomplete_at_delivery_starts_the_clock_then(self) -> None:
        clock, consumer = _CountingClock(), Sink()
        response = _Buffered(end=False)
        finished = stream_body(response, consumer, clock, 5)
        self.assertEqual(clock.made, 1)
        clock.advance(4.9)
        self.assertFalse(finished.called)
        clock.advance(0.1)
        self.failureResultOf(finished, StreamIdle)

    def test_paused_at_delivery_waits_for_the_resume(self) -> None:
        clock, consumer = _CountingClock(), Sink()
        finished = stream_body(_Buffered(pause=True, end=False), consumer, clock, 5)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertFalse(finished.called)
        consumer.producer.resumeProducing()
        clock.advance(5)
        self.failureResultOf(finished, StreamIdle)


class SealingProducerTests(SynchronousTestCase):
    def test_writes_of_one_turn_become_one_record(self) -> None:
        seal, open_ = ciphers()

        class Source:
            def start(self, sink: Any) -> None:
                self.sink = sink

            def pause(self) -> None: ...
            def resume(self) -> None: ...
            def stop(self) -> None: ...

        clock, transport, source = Clock(), Sink(), Source()
        producer = SealingProducer(source, seal.body_sealer(), None, clock=clock)
        done = producer.startProducing(transport)
        source.sink.write(b"a")
        source.sink.write(b"b")
        clock.advance(0)
        self.assertEqual(len(transport.writes), 1)
        source.sink.write(b"c")
        source.sink.done()
        self.successResultOf(done)
        opener = open_.body_opener()
        self.assertEqual(b"".join(opener.feed(w) for w in transport.writes), b"abc")
        opener.finish()


class ChoiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client_id, self.keys, _ = paired_keys()

    def seal(self, records: bool, framing: str = MODE_MKR, length: int | None = 5,
             **options: Any) -> Any:
        return seal_request(self.keys, self.client_id, 1, "POST", "/x", [], has_body=True,
                            options=SealOptions.build(framing=framing, **options),
                            records=records, body_length=length)

    def test_records_only_with_a_relay_that_has_them(self) -> None:
        self.assertEqual(self.seal(True).header.format().split(",")[2::4], ["MKR", "2"])
        self.assertEqual(self.seal(False).header.format().split(",")[2::4], ["MKE", "1"])
        self.assertEqual(self.seal(True, MODE_MKE).header.format().split(",")[2::4],
                         ["MKE", "1"])
        self.assertEqual(self.seal(True, MODE_MTE).header.format().split(",")[2::4],
                         ["MTE", "1"])

    def test_declared_length_sealed_or_clear(self) -> None:
        relay = MessageCipher(self.keys, self.seal(True).header, Direction.C2S)
        sealed = self.seal(True)
        token = dict(sealed.headers)["x-mte-relay-eh"]
        opened = relay.open_request_headers(token, "POST", sealed.target, has_body=True)
        self.assertEqual(opened["x-mte-body-length"], ["5"])
        self.assertNotIn("x-mte-body-length", dict(sealed.headers))
        clear = self.seal(True, seal_headers="none")
        self.assertEqual(dict(clear.headers)["x-mte-body-length"], "5")
        self.assertNotIn("x-mte-body-length", dict(self.seal(True, length=None).headers))

    def _answer(self, request: RelayHeader, mode: str, extra: dict[str, list[str]]) -> Any:
        reply = RelayHeader(request.client_id, request.pair_id, mode, False, True, True,
                            request.streaming, request.seq, request.records)
        cipher = MessageCipher(self.keys, reply, Direction.S2C)
        token = cipher.seal_response_headers({"content-type": ["text/plain"], **extra}, 200)
        return [("x-mte-relay", reply.format()), ("x-mte-relay-eh", token)]

    def test_response_length_is_taken_out_of_the_headers(self) -> None:
        request = self.seal(True).header
        wire = self._answer(request, MODE_MKR, {"x-mte-body-length": ["12"]})
        opened = open_response(self.keys, request, 200, wire)
        self.assertEqual(opened.body_length, 12)
        self.assertEqual(opened.headers, [("content-type", "text/plain")])
        wire = self._answer(request, MODE_MKR, {"x-mte-body-length": ["012"]})
        self.assertRaises(DecodeFailed, open_response, self.keys, request, 200, wire)

    def test_records_answer_to_a_request_without_streaming_2_is_refused(self) -> None:
        request = self.seal(False).header
        reply = RelayHeader(request.client_id, request.pair_id, MODE_MKR, False, True, True,
                            True, request.seq, True)
        cipher = MessageCipher(self.keys, reply, Direction.S2C)
        wire = [("x-mte-relay", reply.format()),
                ("x-mte-relay-eh", cipher.seal_response_headers({}, 200))]
        self.assertRaises(DecodeFailed, open_response, self.keys, request, 200, wire)
