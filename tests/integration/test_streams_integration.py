"""Live streams through the relays: SSE and NDJSON events arrive as they are sent.

A real upstream on loopback (in this process) sends one event every 200 ms
and records when it wrote each one; the application (also in this process,
so both sides read the same monotonic clock) records when each complete
event reached it.  In between: relay A and relay B as ``twistd -n mterelay``
child processes, B on a real ``redis-server``, or ``RelayClient`` straight
to B.  Record framing (MKR, spec 7.2) is what makes each event leave a relay
the moment it arrives; with fixed 64 KiB chunks they arrive all at the end.

``STREAM_EVENTS`` sets how many events the A → B SSE stream has (default
100: the median and maximum delay over them are printed for the record).
"""

from __future__ import annotations

import io
import json
import os
import socket
import statistics
import time
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

import tests.integration.test_inbound_integration as inbound
from mterelay.cli import build_parser, run
from mterelay.http.bodies import Still
from mterelay.client import RelayClient
from mterelay.wiretap import WireTap
from tests.helpers.redisserver import RedisServer, started_redis
from tests.helpers.support import SECRET, RelayProcess

TOKEN = "app-token-0123456789abcdef"
SECRET_B = "relay-b-client-id-secret-0123456789abcdef"
INTERVAL = 0.2
SSE_EVENTS = int(os.environ.get("STREAM_EVENTS", "100"))
SHORT_EVENTS = 15
#: Streaming is checked causally, not against a time bound (the delays are
#: printed; they measure 1-4 ms on an idle 2-core machine): every event must
#: reach the application before the upstream has written the event LAG
#: places later.  A relay that buffered would deliver nothing before the
#: stream ended; a loaded machine can stall a turn for LAG intervals.
LAG = 3


def assert_streamed(case: Any, sent: list[float], arrived: list[float], what: str) -> None:
    """Each piece arrived before the piece LAG places after it was sent."""
    for index in range(len(sent) - LAG):
        case.assertLess(arrived[index], sent[index + LAG],
                        f"{what}: piece {index} arrived after piece {index + LAG} was sent")


def event_bytes(kind: bytes, index: int) -> bytes:
    payload = json.dumps({"i": index, "pad": "x" * 40}).encode()
    if kind == b"sse":
        return b"id: %d\nevent: tick\ndata: %s\n\n" % (index, payload)
    return payload + b"\n"


class StreamUpstream(Resource):
    """``/sse`` and ``/ndjson`` (``?n=&pause=``): n events, INTERVAL apart, then the end;
    ``/forever``: events until the client goes away (noted in ``lost``)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[bytes, dict[int, float]] = {}
        self.lost: list[Any] = []
        self.open: list[Any] = []

    def render(self, request: Any) -> Any:
        kind = request.path.strip(b"/")
        args = request.args
        count = int(args.get(b"n", [b"1000000"])[0])
        pause = float(args.get(b"pause", [b"0"])[0])
        key = args.get(b"key", [kind])[0]
        sent = self.sent.setdefault(key, {})
        request.setHeader(b"content-type", b"text/event-stream" if kind != b"ndjson"
                          else b"application/x-ndjson")
        request.setHeader(b"cache-control", b"no-cache")
        state: dict[str, Any] = {"done": False, "call": None}
        self.open.append(request)

        def gone(result: Any) -> None:
            state["done"] = True
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()
            self.lost.append((key, result))

        request.notifyFinish().addBoth(gone)

        def send(index: int) -> None:
            if state["done"]:
                return
            if index == count:
                request.finish()
                return
            sent[index] = time.monotonic()
            request.write(event_bytes(b"ndjson" if kind == b"ndjson" else b"sse", index))
            delay = pause if (pause and index == 0) else INTERVAL
            state["call"] = reactor.callLater(delay, send, index + 1)

        request.write(b"")  # headers out now
        state["call"] = reactor.callLater(0.05, send, 0)
        return NOT_DONE_YET


class EventReader(Protocol):
    """The application: notes when each complete event arrived."""

    def __init__(self, kind: bytes, stop_after: int | None = None) -> None:
        self.separator = b"\n\n" if kind == b"sse" else b"\n"
        self.buffer = b""
        self.received: dict[int, float] = {}
        self.stop_after = stop_after
        self.done: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self.pieces = 0

    def dataReceived(self, data: bytes) -> None:
        now = time.monotonic()
        self.pieces += 1
        self.buffer += data
        while self.separator in self.buffer:
            event, self.buffer = self.buffer.split(self.separator, 1)
            line = event.split(b"data: ", 1)[-1]
            self.received[json.loads(line)["i"]] = now
        if self.stop_after is not None and len(self.received) >= self.stop_after:
            self.stop_after = None
            self.transport.stopProducing()  # the application hangs up

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.reason = reason
        self.done.callback(None)


def delays(sent: dict[int, float], received: dict[int, float]) -> list[float]:
    return [received[i] - sent[i] for i in sorted(sent)]


class Sink(Resource):
    """An upstream that answers with the size of the body it got."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.content.seek(0)
        return json.dumps({"size": len(request.content.read())}).encode()


def timed_site(arrivals: list[tuple[float, bytes]]) -> Site:
    """A Site whose requests note when each piece of their body arrived."""

    class TimedRequest(Request):
        def handleContentChunk(self, data: bytes) -> None:
            arrivals.append((time.monotonic(), data))
            super().handleContentChunk(data)

    site = Site(Sink())
    site.requestFactory = TimedRequest
    return site


def first_arrivals(arrivals: list[tuple[float, bytes]], pieces: list[bytes]) -> list[float]:
    """When each piece was first complete at the upstream."""
    firsts: dict[int, float] = {}
    seen = b""
    for at, data in arrivals:
        seen += data
        for i, piece in enumerate(pieces):
            if i not in firsts and piece in seen:
                firsts[i] = at
    return [firsts[i] for i in range(len(pieces))]


def first_arrivals_or_none(arrivals: list[tuple[float, bytes]], pieces: list[bytes]) -> list:
    seen = b"".join(data for _, data in arrivals)
    return [piece for piece in pieces if piece in seen]


class StreamCase(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = StreamUpstream()
        self.upstream_port = yield TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(Site(self.upstream))
        self.addCleanup(self.upstream_port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)

    def redis(self) -> RedisServer:
        return started_redis(self)

    def start(self, *environs: dict[str, str]) -> list[RelayProcess]:
        relays = []
        for env in environs:
            relay = RelayProcess.start(env, self.mktemp() + ".log")
            self.addCleanup(lambda relay=relay: relay.process.poll() is None and relay.stop())
            relays.append(relay)
        for relay in relays:
            relay.wait_listening()
        return relays

    def a_env(self, **extra: str) -> dict[str, str]:
        env = {"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET,
               "OUTBOUND_TOKEN": TOKEN, "OUTBOUND_UPSTREAMS": "http://127.0.0.1:*"}
        env.update(extra)
        return env

    def b_env(self, **extra: str) -> dict[str, str]:
        env = {"UPSTREAM": f"http://127.0.0.1:{self.upstream_port.getHost().port}",
               "CLIENT_ID_SECRET": SECRET_B}
        env.update(extra)
        return env

    @defer.inlineCallbacks
    def tap(self, relay: RelayProcess) -> Any:
        tap = WireTap([relay.port])
        yield defer.ensureDeferred(tap.listen())
        self.addCleanup(tap.port.stopListening)
        return tap

    @defer.inlineCallbacks
    def via_a(self, a: RelayProcess, remote: str, path: str, kind: bytes,
              stop_after: int | None = None) -> Any:
        """The application's plain GET to relay A; fires (response, reader, reason)."""
        headers = Headers({b"x-mte-outbound-token": [TOKEN.encode()],
                           b"x-mte-upstream": [remote.encode()],
                           b"accept": [b"text/event-stream"]})
        response = yield self.agent.request(b"GET", (a.url + path).encode(), headers)
        reader = EventReader(kind, stop_after)
        response.deliverBody(reader)
        yield reader.done
        return response, reader, reader.reason

    @defer.inlineCallbacks
    def via_client(self, client: RelayClient, url: str, kind: bytes,
                   stop_after: int | None = None) -> Any:
        response = yield client.get(url)
        reader = EventReader(kind, stop_after)
        response.deliverBody(reader)
        yield reader.done
        return response, reader, reader.reason

    def client(self, **options: Any) -> RelayClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        return RelayClient(reactor, agent=Agent(reactor, pool=pool), **options)

    def assert_live(self, key: bytes, reader: EventReader, count: int, what: str) -> list[float]:
        sent = self.upstream.sent[key]
        self.assertEqual(sorted(reader.received), list(range(count)), what)
        measured = delays(sent, reader.received)
        print(f"\n{what}: {count} events, delay median {statistics.median(measured) * 1000:.1f}"
              f" ms, max {max(measured) * 1000:.1f} ms")
        order = sorted(sent)
        assert_streamed(self, [sent[i] for i in order], [reader.received[i] for i in order], what)
        return measured

    @defer.inlineCallbacks
    def wait_for(self, predicate: Any, seconds: float = 10.0) -> Any:
        for _ in range(int(seconds / 0.02)):
            if predicate():
                return True
            yield deferLater(reactor, 0.02, lambda: None)
        return predicate()


class ThroughBothRelaysTests(StreamCase):
    @defer.inlineCallbacks
    def test_sse_events_arrive_as_sent_through_a_and_b_on_redis(self) -> Any:
        redis = self.redis()
        a, b = self.start(self.a_env(), self.b_env(REDIS_URL=redis.url))
        tap = yield self.tap(b)
        response, reader, reason = yield self.via_a(a, tap.url, f"/sse?n={SSE_EVENTS}", b"sse")
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream"])
        self.assert_live(b"sse", reader, SSE_EVENTS, "SSE through A -> B (Redis)")
        # A asked for records and B answered with them.
        self.assertIn(b",MTE,1,1,0,2,", tap.sent())
        self.assertIn(b",MKR,0,1,1,2,", tap.received())

    @defer.inlineCallbacks
    def test_ndjson_events_arrive_as_sent_through_a_and_b(self) -> Any:
        redis = self.redis()
        a, b = self.start(self.a_env(), self.b_env(REDIS_URL=redis.url))
        response, reader, reason = yield self.via_a(a, b.url, f"/ndjson?n={SHORT_EVENTS}",
                                                    b"ndjson")
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/x-ndjson"])
        self.assert_live(b"ndjson", reader, SHORT_EVENTS, "NDJSON through A -> B")

    @defer.inlineCallbacks
    def test_application_leaving_mid_stream_ends_the_upstream_request_at_b(self) -> Any:
        a, b = self.start(self.a_env(), self.b_env())
        _, reader, reason = yield self.via_a(a, b.url, "/forever?key=left", b"sse",
                                             stop_after=3)
        self.assertGreaterEqual(len(reader.received), 3)
        ended = yield self.wait_for(lambda: any(k == b"left" for k, _ in self.upstream.lost))
        self.assertTrue(ended, "the upstream request went on after the application left")
        [(_, outcome)] = [entry for entry in self.upstream.lost if entry[0] == b"left"]
        self.assertIsInstance(outcome, Failure)  # connection lost, not finished
        # And nothing more is being written to it.
        count = len(self.upstream.sent[b"left"])
        yield deferLater(reactor, 3 * INTERVAL, lambda: None)
        self.assertEqual(len(self.upstream.sent[b"left"]), count)

    @defer.inlineCallbacks
    def test_chunked_upload_pieces_reach_the_upstream_as_written_through_a_and_b(self) -> Any:
        arrivals: list[tuple[float, bytes]] = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            timed_site(arrivals))
        self.addCleanup(port.stopListening)
        a, b = self.start(self.a_env(),
                          self.b_env(UPSTREAM=f"http://127.0.0.1:{port.getHost().port}"))
        pieces = [b"piece %d\n" % i for i in range(5)]
        # Pair A with B first: the timing is of the stream, not of pairing.
        warm = yield self.agent.request(b"GET", (a.url + "/warmup").encode(), Headers({
            b"x-mte-outbound-token": [TOKEN.encode()], b"x-mte-upstream": [b.url.encode()]}))
        yield treq.content(warm)
        sock = socket.create_connection(("127.0.0.1", a.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall((f"POST /upload HTTP/1.1\r\nHost: a\r\nx-mte-outbound-token: {TOKEN}\r\n"
                      f"x-mte-upstream: {b.url}\r\ntransfer-encoding: chunked\r\n\r\n").encode())
        sent = []
        for piece in pieces:
            sent.append(time.monotonic())
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            yield deferLater(reactor, INTERVAL, lambda: None)
        sock.sendall(b"0\r\n\r\n")
        got = yield self.wait_for(lambda: len(first_arrivals_or_none(arrivals, pieces)) == 5)
        self.assertTrue(got)
        landed = first_arrivals(arrivals, pieces)
        measured = [at - when for at, when in zip(landed, sent)]
        print(f"\nchunked upload pieces application -> A -> B -> upstream: "
              f"{', '.join(f'{d * 1000:.1f}' for d in measured)} ms")
        assert_streamed(self, sent, landed, "chunked upload")

    @defer.inlineCallbacks
    def test_idle_stream_outlives_upstream_timeout_but_not_stream_idle_timeout(self) -> Any:
        quick = {"UPSTREAM_TIMEOUT": "1"}
        a, b = self.start(self.a_env(**quick), self.b_env(**quick))
        # Headers, one event, 2.5 s of silence (> UPSTREAM_TIMEOUT), then the rest.
        _, reader, reason = yield self.via_a(a, b.url, "/sse?n=3&pause=2.5&key=idle", b"sse")
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertEqual(sorted(reader.received), [0, 1, 2])
        # With STREAM_IDLE_TIMEOUT below the silence, B cuts the stream: the
        # application sees a truncated body, never a complete one.
        a2, b2 = self.start(self.a_env(), self.b_env(STREAM_IDLE_TIMEOUT="1"))
        _, reader, reason = yield self.via_a(a2, b2.url, "/sse?n=3&pause=2.5&key=cut", b"sse")
        self.assertFalse(reason.check(ResponseDone), reason)
        self.assertEqual(sorted(reader.received), [0])
        self.assertIn("upstream body interrupted", b2.output())


class RelayClientStreamTests(StreamCase):
    @defer.inlineCallbacks
    def test_sse_and_ndjson_through_relay_client_to_b_on_redis(self) -> Any:
        redis = self.redis()
        [b] = self.start(self.b_env(REDIS_URL=redis.url))
        client = self.client()
        for kind in (b"sse", b"ndjson"):
            response, reader, reason = yield self.via_client(
                client, f"{b.url}/{kind.decode()}?n={SHORT_EVENTS}", kind)
            self.assertTrue(reason.check(ResponseDone), reason)
            self.assertEqual(response.code, 200)
            self.assert_live(kind, reader, SHORT_EVENTS,
                             f"{kind.decode().upper()} through RelayClient -> B")

    @defer.inlineCallbacks
    def test_caller_leaving_mid_stream_ends_the_upstream_request(self) -> Any:
        [b] = self.start(self.b_env())
        _, reader, _ = yield self.via_client(self.client(), f"{b.url}/forever?key=gone",
                                             b"sse", stop_after=2)
        ended = yield self.wait_for(lambda: any(k == b"gone" for k, _ in self.upstream.lost))
        self.assertTrue(ended, "the upstream request went on after the caller left")

    @defer.inlineCallbacks
    def test_fixed_framing_still_works_but_holds_events_back(self) -> Any:
        """The old framing interoperates; it is why record framing exists."""
        [b] = self.start(self.b_env())
        tap = yield self.tap(b)
        response, reader, reason = yield self.via_client(
            self.client(framing="MKE"), f"{tap.url}/sse?n=5&key=fixed", b"sse")
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertEqual(sorted(reader.received), list(range(5)))
        self.assertIn(b",MTE,1,1,0,1,", tap.sent())
        self.assertIn(b",MKE,0,1,1,1,", tap.received())
        measured = delays(self.upstream.sent[b"fixed"], reader.received)
        self.assertGreater(measured[0], 3 * INTERVAL)  # held until the end

    @defer.inlineCallbacks
    def test_streamed_upload_records_reach_the_upstream_as_written(self) -> Any:
        """Request bodies flush on pause too: caller → RelayClient → B → upstream."""
        arrivals: list[tuple[float, bytes]] = []
        pieces = [b"piece %d\n" % i for i in range(5)]

        @implementer(IBodyProducer)
        class Producer(Still):
            """The caller's body: a piece every INTERVAL, length unknown (never paused)."""

            length = UNKNOWN_LENGTH

            def __init__(self) -> None:
                self.sent: list[float] = []

            def startProducing(self, consumer: Any) -> Any:
                self.done: defer.Deferred[None] = defer.Deferred()
                self.consumer = consumer
                reactor.callLater(0, self.step, 0)
                return self.done

            def step(self, index: int) -> None:
                if index == 5:
                    self.done.callback(None)
                    return
                self.sent.append(time.monotonic())
                self.consumer.write(b"piece %d\n" % index)
                reactor.callLater(INTERVAL, self.step, index + 1)

        # B streams request bodies to the upstream; see each piece land there.
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            timed_site(arrivals))
        self.addCleanup(port.stopListening)
        [b] = self.start(self.b_env(UPSTREAM=f"http://127.0.0.1:{port.getHost().port}"))
        producer = Producer()
        response = yield self.client().post(b.url + "/upload", data=producer)
        answer = yield treq.json_content(response)
        self.assertEqual(answer["size"], sum(map(len, pieces)))
        landed = first_arrivals(arrivals, pieces)
        measured = [at - sent for at, sent in zip(landed, producer.sent)]
        print(f"\nupload pieces caller -> upstream: "
              f"{', '.join(f'{d * 1000:.1f}' for d in measured)} ms")
        assert_streamed(self, producer.sent, landed, "upload")


class CliTests(StreamCase):
    @defer.inlineCallbacks
    def test_no_buffer_prints_events_as_they_come(self) -> Any:
        [b] = self.start(self.b_env())
        flushed: list[tuple[float, bytes]] = []

        class Stdout(io.BytesIO):
            def flush(self) -> None:
                flushed.append((time.monotonic(), self.getvalue()))

        out, err = Stdout(), io.StringIO()
        args = build_parser().parse_args(["-N", f"{b.url}/sse?n=5&key=cli"])
        status = yield defer.ensureDeferred(run(reactor, args, out, err))
        self.assertEqual(status, 0, err.getvalue())
        sent = self.upstream.sent[b"cli"]
        printed = [next(at for at, text in flushed if event_bytes(b"sse", index) in text)
                   for index in range(5)]
        assert_streamed(self, [sent[index] for index in range(5)], printed, "mterelay-client -N")


class FixedFramingRoundTripTests(inbound.RoundTripTests):
    """The existing end-to-end tests, unchanged, with a client on the old framing."""

    def client(self, persistent: bool = True, **options: Any) -> RelayClient:
        options.setdefault("framing", "MKE")
        return super().client(persistent, **options)


class RecordFramingLargeBodyTests(inbound.EncryptedProxyCase):
    @defer.inlineCallbacks
    def test_200mb_up_and_down_with_records_in_bounded_memory(self) -> Any:
        relay = self.start_relay()
        tap = yield self.tap(relay)
        client = self.client()
        yield client.post(tap.url + "/warmup", data=b"x").addCallback(treq.content)
        self.assertIn(b",MKR,1,1,1,2,", tap.sent())  # records both ways
        self.assertIn(b",MKR,0,1,1,2,", tap.received())
        tap.record = False
        before = relay.rss_peak_kib()
        result = yield transfer(self, client, tap.url, inbound.HUGE)
        growth = relay.rss_peak_kib() - before
        print(f"\n{inbound.HUGE // inbound.MB} MB up + down with records: "
              f"{result['up']:.1f} + {result['down']:.1f} s, RSS growth {growth} KiB")
        self.assertLess(growth, 64 * 1024, f"relay memory grew by {growth} KiB")


@defer.inlineCallbacks
def transfer(case: Any, client: RelayClient, url: str, size: int) -> Any:
    """Upload ``size`` bytes from a file and download as many; checks both digests."""
    from tests.helpers.support import collect_digest, write_random_file
    from tests.integration.test_passthrough_integration import pattern_digest

    path = case.mktemp()
    uploaded = write_random_file(path, size)
    started = time.monotonic()
    with open(path, "rb") as handle:
        response = yield client.post(url + "/upload", data=handle)
        answer = yield treq.json_content(response)
    up = time.monotonic() - started
    os.unlink(path)
    case.assertEqual(answer["size"], size)
    case.assertEqual(case.upstream.seen[-1]["sha256"], uploaded)
    started = time.monotonic()
    response = yield client.get(url + f"/download?size={size}")
    got, downloaded = yield collect_digest(response)
    down = time.monotonic() - started
    case.assertEqual((got, downloaded), (size, pattern_digest(size)))
    return {"up": up, "down": down}


class GigabyteMeasurement(inbound.EncryptedProxyCase):
    """``MEASURE_GB=1``: 1 GB up and down with each framing, one run (for the record)."""

    timeout = 1800

    @defer.inlineCallbacks
    def test_1gb_both_framings(self) -> Any:
        if not os.environ.get("MEASURE_GB"):
            raise SkipTest("set MEASURE_GB=1 to measure 1 GB transfers")
        size = 1024 * inbound.MB
        relay = self.start_relay()
        lines = []
        for framing in ("MKR", "MKE"):
            client = self.client(framing=framing)
            yield client.get(relay.url + "/warmup").addCallback(treq.content)
            before = relay.rss_peak_kib()
            result = yield transfer(self, client, relay.url, size)
            growth = relay.rss_peak_kib() - before
            lines.append(f"{framing}: upload {size / result['up'] / 1e6:.0f} MB/s "
                         f"({result['up']:.1f} s), download {size / result['down'] / 1e6:.0f}"
                         f" MB/s ({result['down']:.1f} s), relay peak RSS growth {growth} KiB")
            self.assertLess(growth, 64 * 1024)
        print("\n1 GB through RelayClient -> relay B:\n  " + "\n  ".join(lines))

