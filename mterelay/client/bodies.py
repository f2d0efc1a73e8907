"""Request bodies sealed as they stream, response bodies opened as they arrive.

A body is never held whole by the client (except an MTE one, which is one
AES-GCM item by definition): :class:`SealingProducer` pulls plaintext from
the caller's bytes, file or producer in 64 KiB reads, seals it through a
:class:`~mterelay.protocol.sealing.BodySealer` and honours the transport's
pause/resume, so a 1 GB upload costs a few socket buffers.  A body that can
be read again from the start (bytes, a seekable file) is *replayable*, which
is what makes the one automatic retry after a 55x possible.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from mterelay.http.bodies import BytesProducer, discard, read_limited
from mterelay.http.flushing import TurnCoalescer
from mterelay.protocol.errors import DecodeFailed, RelayError
from mterelay.protocol.records import RecordOpener, RecordSealer
from mterelay.protocol.sealing import BodyOpener, BodySealer
from mterelay.http.timing import Stopwatch

__all__ = ["READ_SIZE", "BodyData", "body_data", "SealingProducer", "BytesProducer",
           "SealedBytes", "seal_whole", "OpeningProtocol", "read_limited", "discard"]

READ_SIZE = 64 * 1024
#: Reads done in one reactor turn before yielding (1 MiB), so a fast disk
#: and an in-memory transport that never pauses cannot starve the reactor.
_READS_PER_TURN = 16


class _Sink(TypingProtocol):
    def write(self, data: bytes) -> None: ...
    def done(self) -> None: ...
    def fail(self, failure: Failure) -> None: ...


class _Source(TypingProtocol):
    def start(self, sink: _Sink) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self) -> None: ...


class BodyError(Exception):
    """The request body ended early or could not be read."""


class _ReaderSource:
    """Plaintext pulled from ``read(n)``; exactly ``length`` bytes when known."""

    def __init__(self, clock: IReactorTime, read: Callable[[int], bytes],
                 length: int | None) -> None:
        self._clock = clock
        self._read = read
        self._left = length
        self._sink: _Sink | None = None
        self._paused = False
        self._stopped = False
        self._pumping = False
        self._call: Any = None

    def start(self, sink: _Sink) -> None:
        self._sink = sink
        self._pump()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if self._sink is not None and self._call is None:
            self._pump()

    def stop(self) -> None:
        self._stopped = True
        self._sink = None  # the sink holds this source: no cycle left once stopped
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _pump(self) -> None:
        self._call = None
        if self._pumping or self._stopped or self._sink is None:
            return
        self._pumping = True
        try:
            self._pump_some()
        finally:
            self._pumping = False
        if not (self._paused or self._stopped):
            self._call = self._clock.callLater(0, self._pump)

    def _pump_some(self) -> None:
        sink = self._sink
        assert sink is not None
        for _ in range(_READS_PER_TURN):
            if self._paused or self._stopped:
                return
            want = READ_SIZE if self._left is None else min(READ_SIZE, self._left)
            if want == 0:
                self._stopped, self._sink = True, None
                sink.done()
                return
            try:
                chunk = self._read(want)
            except Exception:
                self._stopped, self._sink = True, None
                sink.fail(Failure())
                return
            if not chunk:
                self._stopped, self._sink = True, None
                if self._left is None:
                    sink.done()
                else:
                    sink.fail(Failure(BodyError(f"request body ended {self._left} bytes early")))
                return
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                self._stopped, self._sink = True, None
                sink.fail(Failure(TypeError("the body file must be opened in binary mode")))
                return
            if self._left is not None:
                self._left -= len(chunk)
            sink.write(bytes(chunk))


class _ProducerSource:
    """Plaintext from the caller's own IBodyProducer (streamed, not replayable)."""

    def __init__(self, producer: IBodyProducer) -> None:
        self._producer = producer
        self._stopped = False

    def start(self, sink: _Sink) -> None:
        producing = self._producer.startProducing(_SinkConsumer(sink))

        def ended(result: object) -> None:
            if self._stopped:
                return
            if isinstance(result, Failure):
                sink.fail(result)
            else:
                sink.done()

        producing.addBoth(ended)

    def pause(self) -> None:
        self._producer.pauseProducing()

    def resume(self) -> None:
        self._producer.resumeProducing()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._producer.stopProducing()


class _SinkConsumer:
    """The IConsumer a caller's producer writes into."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> None:
        self._sink.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class BodyData:
    """The caller's ``data``: its plaintext length (if known) and how to read it again.

    ``open()`` returns a fresh source positioned at the start; for bytes and
    seekable files it can be called again (a retry), otherwise only once.
    """

    def __init__(self, length: int | None, replayable: bool,
                 opener: Callable[[IReactorTime], _Source], raw: bytes | None = None) -> None:
        self.length = length
        self.replayable = replayable
        self._opener = opener
        self._opened = False
        #: The whole plaintext when the caller passed bytes (else None).
        self.raw = raw

    @property
    def small(self) -> bytes | None:
        """The plaintext when it is bytes of at most one read (READ_SIZE), else None.

        Such a body is sealed in one call (:func:`seal_whole`) instead of
        being pumped through a :class:`SealingProducer`: the pump would read
        it in one go and seal it at the end of the same turn anyway, so the
        sealed bytes are the same - only the reader, the turn coalescer and
        their scheduled call are saved.
        """
        raw = self.raw
        return raw if raw is not None and len(raw) <= READ_SIZE else None

    @property
    def can_open(self) -> bool:
        return self.replayable or not self._opened

    def open(self, clock: IReactorTime) -> _Source:
        if not self.can_open:
            raise RuntimeError("this request body cannot be sent twice")
        self._opened = True
        return self._opener(clock)


def _seekable_start(handle: Any) -> tuple[int, int] | None:
    """(start, length) of a seekable file from its current position, else None."""
    try:
        if not handle.seekable():
            return None
        start = handle.tell()
        end = handle.seek(0, io.SEEK_END)
        handle.seek(start, io.SEEK_SET)
    except (AttributeError, OSError, ValueError):
        return None
    return start, max(0, end - start)


def body_data(data: object) -> BodyData | None:
    """Classify the caller's ``data`` (bytes, file-like, IBodyProducer or None)."""
    if data is None:
        return None
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)

        def open_bytes(clock: IReactorTime) -> _Source:
            return _ReaderSource(clock, io.BytesIO(raw).read, len(raw))

        return BodyData(len(raw), True, open_bytes, raw)
    if isinstance(data, str):
        raise TypeError("data must be bytes, a binary file or an IBodyProducer, not str")
    if IBodyProducer.providedBy(data):
        producer: IBodyProducer = data  # type: ignore[assignment]
        length = producer.length if isinstance(producer.length, int) else None
        return BodyData(length, False, lambda clock: _ProducerSource(producer))
    if callable(getattr(data, "read", None)):
        handle: Any = data
        seekable = _seekable_start(handle)
        if seekable is None:
            return BodyData(None, False, lambda clock: _ReaderSource(clock, handle.read, None))
        start, length = seekable

        def open_file(clock: IReactorTime) -> _Source:
            handle.seek(start, io.SEEK_SET)
            return _ReaderSource(clock, handle.read, length)

        return BodyData(length, True, open_file)
    raise TypeError("data must be bytes, a binary file or an IBodyProducer")


def seal_whole(sealer: BodySealer | RecordSealer, plain: bytes) -> bytes:
    """The whole sealed body of ``plain``, as :class:`SealingProducer` would write it.

    Records: one final record (the pump hands a body of one read to
    ``finish``); MKE and MTE: ``feed`` then ``finish``, whose output does not
    depend on how the plaintext was split.
    """
    if isinstance(sealer, RecordSealer):
        return sealer.finish(plain)
    return sealer.feed(plain) + sealer.finish()


@implementer(IBodyProducer)
class SealedBytes(BytesProducer):
    """A body sealed before sending: written in one go, with Content-Length or chunked.

    ``length`` None sends it chunked (one chunk), as records always are, so
    the wire is what a :class:`SealingProducer` of the same body sends.
    """

    def __init__(self, body: bytes, length: int | None) -> None:
        super().__init__(body)
        if length is None:
            self.length = UNKNOWN_LENGTH  # type: ignore[assignment]

    def abandon(self) -> None:
        """Nothing to stop: it was written whole."""


@implementer(IBodyProducer)
class SealingProducer:
    """The wire body: plaintext from a source, sealed chunk by chunk.

    ``length`` is the sealed length when the plaintext length is known (the
    agent sends Content-Length), else UNKNOWN_LENGTH (chunked; a sealed body
    is never empty, so no empty chunked body is ever sent - spec 6.3).  A
    sealing failure (561: MTE body over 2**30) fails the request.

    Records (MKR) are flushed on pause: given a ``clock``, what the source
    wrote in one reactor turn is sealed and sent at the next, so a caller's
    producer that writes an event and then waits gets it to the relay now.
    """

    def __init__(self, source: _Source, sealer: BodySealer | RecordSealer, length: int | None,
                 stopwatch: Stopwatch | None = None, clock: IReactorTime | None = None) -> None:
        self._source = source
        self._sealer = sealer
        self._pending = (TurnCoalescer(clock, self._seal)
                         if clock is not None and isinstance(sealer, RecordSealer) else None)
        self._stopwatch = stopwatch if stopwatch is not None else Stopwatch(None)
        self.length: int | object = UNKNOWN_LENGTH if length is None else length
        self._consumer: Any = None
        self._finished: Deferred[None] = Deferred()
        self._over = False

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        self._consumer = consumer
        self._source.start(self)
        return self._finished

    # the source's sink
    def write(self, data: bytes) -> None:
        if self._over:
            return
        if self._pending is not None:
            self._pending.write(data)
        else:
            self._seal(data)

    def _seal(self, data: bytes) -> None:
        if self._over:
            return
        try:
            sealed = self._stopwatch.time(self._sealer.feed, data)
        except RelayError:
            self._source.stop()
            self.fail(Failure())
            return
        if sealed:
            self._consumer.write(sealed)

    def done(self) -> None:
        if self._over:
            return
        try:
            if self._pending is not None:
                tail = self._stopwatch.time(self._sealer.finish, self._pending.take())
            else:
                tail = self._stopwatch.time(self._sealer.finish)
        except RelayError:
            self.fail(Failure())
            return
        self._stopwatch.report()
        self._over = True
        self._pending = None  # it holds self._seal: no cycle left
        self._consumer.write(tail)
        self._finished.callback(None)

    def fail(self, failure: Failure) -> None:
        if self._over:
            return
        self._over = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.discard()
        self._finished.errback(failure)

    # IPushProducer, driven by the transport
    def pauseProducing(self) -> None:
        if not self._over:
            self._source.pause()

    def resumeProducing(self) -> None:
        if not self._over:
            self._source.resume()

    def stopProducing(self) -> None:
        """Stop reading; per IBodyProducer the Deferred then never fires."""
        if not self._over:
            self._over = True
            pending, self._pending = self._pending, None
            if pending is not None:
                pending.discard()
            self._source.stop()

    abandon = stopProducing


def _truncated(reason: Failure) -> Failure:
    """ResponseFailed([DecodeFailed, *what the transport said])."""
    reasons = list(getattr(reason.value, "reasons", None) or [reason])
    return Failure(ResponseFailed([Failure(DecodeFailed("response body truncated")), *reasons]))


class OpeningProtocol(Protocol):
    """Wraps the caller's body protocol: sealed bytes in, authentic plaintext out.

    The caller's ``connectionLost`` gets ``ResponseDone`` only once the final
    chunk opened; a failed chunk, a truncated stream or trailing bytes give
    ``ResponseFailed([DecodeFailed, ...])`` (and the connection is dropped).
    Plaintext delivered before that is authentic but possibly incomplete.
    """

    def __init__(self, opener: BodyOpener | RecordOpener, inner: Any,
                 stopwatch: Stopwatch | None = None) -> None:
        self._opener = opener
        self._inner = inner
        self._stopwatch = stopwatch if stopwatch is not None else Stopwatch(None)
        self._over = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self._inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._over:
            return
        try:
            plain = self._stopwatch.time(self._opener.feed, data)
        except DecodeFailed as error:
            self._fail(Failure(ResponseFailed([Failure(error)])))
            return
        if plain:
            self._inner.dataReceived(plain)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._over:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._over = True
            self._inner.connectionLost(_truncated(reason))
            return
        try:
            tail = self._stopwatch.time(self._opener.finish)
        except DecodeFailed as error:
            self._over = True
            self._inner.connectionLost(Failure(ResponseFailed([Failure(error)])))
            return
        self._stopwatch.report()
        self._over = True
        if tail:
            self._inner.dataReceived(tail)
        self._inner.connectionLost(Failure(ResponseDone("body opened and complete")))

    def _fail(self, failure: Failure) -> None:
        self._over = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        self._inner.connectionLost(failure)
