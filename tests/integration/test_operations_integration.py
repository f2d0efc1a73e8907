"""Operations against real ``twistd mterelay`` processes: metrics, health, EMF, drain, workers.

Real sockets on 127.0.0.1, a real redis-server, a real upstream in this
process; the relay under test is a child process scraped over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mterelay.client import RelayClient
from tests.helpers.redisserver import RedisServer, started_redis
from tests.helpers.support import SECRET, RelayProcess, free_port


class SlowUpstream(Resource):
    """Answers every request after ``delay`` seconds; counts what arrived."""

    isLeaf = True

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.received = 0
        self.headers: list[dict[bytes, list[bytes]]] = []
        self.calls: list[Any] = []

    def cancel_pending(self) -> None:
        for call in self.calls:
            if call.active():
                call.cancel()

    def render(self, request: Any) -> Any:
        self.received += 1
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        body = b'{"ok":true,"n":%d}' % self.received
        request.setHeader(b"content-type", b"application/json")
        if not self.delay:
            return body

        def answer() -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        self.calls.append(reactor.callLater(self.delay, answer))
        return NOT_DONE_YET


def scrape(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text exposition (0.0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        if sample != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        if all(found.get(key) == f'"{wanted}"' for key, wanted in labels.items()):
            total += float(value)
    return total


class OperationsCase(TestCase):
    timeout = 90

    def setUp(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.upstream = SlowUpstream()
        self.addCleanup(self.upstream.cancel_pending)
        site = Site(self.upstream)
        site.noisy = False
        d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)

        def listening(port: Any) -> None:
            self.upstream_port = port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port.getHost().port}"

    def start_relay(self, wait: bool = True, **environ: str) -> RelayProcess:
        env = {"UPSTREAM": self.upstream_url, "CLIENT_ID_SECRET": SECRET}
        env.update(environ)
        relay = RelayProcess.start(env, self.mktemp() + ".log")
        self.addCleanup(lambda: relay.process.poll() is None and relay.stop())
        if wait:
            relay.wait_listening()  # blocking is fine: the relay is another process
        return relay

    def redis(self) -> RedisServer:
        return started_redis(self)

    def wait_exit(self, relay: RelayProcess, timeout: float = 30.0) -> defer.Deferred[int]:
        """Poll (without blocking the reactor) until the relay process exits."""
        deadline = time.monotonic() + timeout

        def poll() -> Any:
            code = relay.process.poll()
            if code is not None:
                return code
            if time.monotonic() > deadline:
                raise AssertionError(f"relay did not exit:\n{relay.output()}")
            return task.deferLater(reactor, 0.05, poll)

        return defer.maybeDeferred(poll)


class MetricsTests(OperationsCase):
    @defer.inlineCallbacks
    def test_metrics_move_after_real_requests(self) -> Any:
        metrics_port = free_port()
        relay = self.start_relay(METRICS_PORT=str(metrics_port),
                                 PASS_THROUGH_ROUTES="/open/*")
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        client = RelayClient(reactor, pairs=2, agent=Agent(
            reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        for _ in range(3):
            response = yield client.post(relay.url + "/api/things", data=b"x" * 2000)
            yield treq.content(response)
            self.assertEqual(response.code, 200)
        response = yield self.http.get(relay.url + "/open/status")
        yield treq.content(response)
        response = yield self.http.get(relay.url + "/api/plain")  # no x-mte-relay: 569
        yield treq.content(response)
        self.assertEqual(response.code, 569)

        response = yield self.http.get(metrics_url + "/metrics")
        text = (yield treq.content(response)).decode("utf-8")
        self.assertEqual(response.code, 200)
        self.assertIn("text/plain", response.headers.getRawHeaders(b"content-type")[0].decode())
        self.assertEqual(scrape(text, "mterelay_requests_total", role="inbound",
                                status_class="2xx"), 3)
        self.assertEqual(scrape(text, "mterelay_requests_total", role="passthrough",
                                status_class="2xx"), 1)
        self.assertEqual(scrape(text, "mterelay_requests_total", role="pairing",
                                status_class="2xx"), 1)
        self.assertEqual(scrape(text, "mterelay_requests_total", role="other",
                                status_class="5xx"), 1)
        self.assertEqual(scrape(text, "mterelay_relay_errors_total", code="569"), 1)
        self.assertEqual(scrape(text, "mterelay_pairs_created_total", role="inbound"), 2)
        self.assertEqual(scrape(text, "mterelay_request_decode_seconds_count"), 3)
        self.assertEqual(scrape(text, "mterelay_response_encode_seconds_count"), 3)
        self.assertGreater(scrape(text, "mterelay_request_decode_seconds_sum"), 0)
        self.assertEqual(scrape(text, "mterelay_upstream_proxy_seconds_count", role="inbound"), 3)
        self.assertEqual(scrape(text, "mterelay_upstream_proxy_seconds_count",
                                role="passthrough"), 1)
        self.assertEqual(scrape(text, "mterelay_request_seconds_count", role="inbound"), 3)
        self.assertEqual(scrape(text, "mterelay_store_operation_seconds_count", op="create"), 2)
        self.assertEqual(scrape(text, "mterelay_store_operation_seconds_count", op="accept"), 3)
        self.assertEqual(scrape(text, "mterelay_in_flight_requests"), 0)

        # Never on the public port.
        response = yield self.http.get(relay.url + "/metrics")
        yield treq.content(response)
        self.assertNotEqual(response.code, 200)
        response = yield self.http.get(metrics_url + "/healthz")
        self.assertEqual((response.code, (yield response.json())), (200, {"status": "ok"}))
        response = yield self.http.get(metrics_url + "/readyz")
        self.assertEqual((response.code, (yield response.json())), (200, {"status": "ready"}))
        yield client.close()

    @defer.inlineCallbacks
    def test_outbound_role_times_both_legs(self) -> Any:
        inbound = self.start_relay()
        metrics_port = free_port()
        outbound = self.start_relay(
            METRICS_PORT=str(metrics_port), OUTBOUND_TOKEN="token-0123456789abcdef",
            OUTBOUND_UPSTREAMS=inbound.url)
        for _ in range(2):
            response = yield self.http.post(
                outbound.url + "/api/x", data=b"y" * 1024,
                headers={"x-mte-outbound-token": "token-0123456789abcdef",
                         "x-mte-upstream": inbound.url, "x-request-id": "trace-abc-123"})
            yield treq.content(response)
            self.assertEqual(response.code, 200)
        response = yield self.http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        text = (yield treq.content(response)).decode("utf-8")
        self.assertEqual(scrape(text, "mterelay_requests_total", role="outbound",
                                status_class="2xx"), 2)
        self.assertEqual(scrape(text, "mterelay_outbound_proxy_seconds_count"), 2)
        self.assertEqual(scrape(text, "mterelay_request_encode_seconds_count"), 2)
        self.assertEqual(scrape(text, "mterelay_response_decode_seconds_count"), 2)
        self.assertGreaterEqual(scrape(text, "mterelay_pairs_created_total", role="outbound"), 1)
        # The application's request id reached the upstream through both relays
        # and sits in both relays' access lines.
        self.assertEqual(self.upstream.headers[-1][b"X-Request-Id"], [b"trace-abc-123"])
        time.sleep(0.2)  # let both processes flush their log lines
        self.assertIn("[request_id=trace-abc-123]", outbound.output())
        self.assertIn("[request_id=trace-abc-123]", inbound.output())


class ReadinessTests(OperationsCase):
    @defer.inlineCallbacks
    def poll_ready(self, ready_url: str, seconds: float = 15) -> Any:
        """The first answer of 200 from /readyz, or the last one after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            response = yield self.http.get(ready_url)
            if response.code == 200 or time.monotonic() > deadline:
                return response
            yield treq.content(response)
            yield task.deferLater(reactor, 0.2, lambda: None)

    @defer.inlineCallbacks
    def test_readyz_follows_redis(self) -> Any:
        redis = self.redis()
        metrics_port = free_port()
        self.start_relay(METRICS_PORT=str(metrics_port), REDIS_URL=redis.url)
        ready_url = f"http://127.0.0.1:{metrics_port}/readyz"
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

        # Ready once the relay's store connection is up (not necessarily at start-up).
        response = yield self.poll_ready(ready_url)
        self.assertEqual((response.code, (yield response.json())), (200, {"status": "ready"}))
        redis.stop()
        response = yield self.http.get(ready_url)
        body = yield response.json()
        self.assertEqual(response.code, 503)
        self.assertEqual(body["status"], "not ready")
        self.assertTrue(any(reason.startswith("store unreachable") for reason in body["reasons"]),
                        body)
        response = yield self.http.get(metrics_url)
        self.assertEqual(scrape((yield treq.content(response)).decode(), "mterelay_store_reachable"), 0)

        redis.start()
        response = yield self.poll_ready(ready_url)
        self.assertEqual(response.code, 200)
        response = yield self.http.get(metrics_url)
        self.assertEqual(scrape((yield treq.content(response)).decode(), "mterelay_store_reachable"), 1)


class EmfTests(OperationsCase):
    @defer.inlineCallbacks
    def test_emf_lines_on_stdout(self) -> Any:
        relay = self.start_relay(METRICS_FORMAT="emf", METRICS_INTERVAL="0.3",
                                 AWS_REGION="eu-west-1", LOG_FORMAT="json")
        for _ in range(4):
            response = yield self.http.get(relay.url + "/api/mte-echo/x")
            yield treq.content(response)
        yield task.deferLater(reactor, 1.0, lambda: None)
        documents = []
        for line in relay.output().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "_aws" in record:
                documents.append(record)
        self.assertGreaterEqual(len(documents), 2)
        total = 0.0
        for document in documents:
            directive = document["_aws"]["CloudWatchMetrics"][0]
            self.assertEqual(directive["Namespace"], "MTERelay")
            self.assertIsInstance(document["_aws"]["Timestamp"], int)
            for dimension_set in directive["Dimensions"]:
                for name in dimension_set:
                    self.assertIsInstance(document[name], str)
            self.assertEqual(document["Region"], "eu-west-1")
            self.assertEqual(document["Service"], "mterelay")
            for metric in directive["Metrics"]:
                self.assertIsInstance(document[metric["Name"]], (int, float))
            total += document.get("RequestsProcessed", 0)
        self.assertEqual(total, 5)  # four here, one from wait_listening


class ShutdownTests(OperationsCase):
    @defer.inlineCallbacks
    def test_sigterm_drains_fifty_in_flight_requests(self) -> Any:
        self.upstream.delay = 1.5
        metrics_port = free_port()
        relay = self.start_relay(PASS_THROUGH_ROUTES="/slow/*", METRICS_PORT=str(metrics_port),
                                 SHUTDOWN_GRACE="20")
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 60
        http = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        pending = [http.get(relay.url + f"/slow/{n}") for n in range(50)]
        deadline = time.monotonic() + 20
        while self.upstream.received < 50 and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.upstream.received, 50)
        relay.process.send_signal(signal.SIGTERM)
        yield task.deferLater(reactor, 0.3, lambda: None)
        # Draining: the public port refuses new connections, readiness fails.
        self.assertIsNone(relay.process.poll())
        failed = yield self.assertFailure(
            HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
            .get(relay.url + "/api/mte-echo/late"), Exception)
        self.assertIn("refused", repr(failed).lower())
        response = yield self.http.get(f"http://127.0.0.1:{metrics_port}/readyz")
        body = yield response.json()
        self.assertEqual((response.code, body["reasons"]), (503, ["draining"]))

        responses = yield defer.gatherResults(pending)
        bodies = yield defer.gatherResults([r.json() for r in responses])
        self.assertEqual([r.code for r in responses], [200] * 50)
        self.assertEqual(len({b["n"] for b in bodies}), 50)
        code = yield self.wait_exit(relay)
        self.assertEqual(code, 0)
        output = relay.output()
        self.assertIn("waiting up to 20.0s for 50 in-flight request(s)", output)
        self.assertIn("Drained: 50 in-flight request(s) completed", output)

    @defer.inlineCallbacks
    def test_grace_over_abandons_and_exits_zero(self) -> Any:
        self.upstream.delay = 30
        relay = self.start_relay(PASS_THROUGH_ROUTES="/slow/*", SHUTDOWN_GRACE="0.5")
        pending = self.http.get(relay.url + "/slow/1")
        cut: list[Any] = []
        pending.addErrback(cut.append)  # cut when the relay exits
        deadline = time.monotonic() + 10
        while self.upstream.received < 1 and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.02, lambda: None)
        relay.process.send_signal(signal.SIGTERM)
        code = yield self.wait_exit(relay)
        self.assertEqual(code, 0)
        self.assertIn("abandoning 1", relay.output())
        yield pending
        self.assertEqual(len(cut), 1)


class WorkersTests(OperationsCase):
    @defer.inlineCallbacks
    def wait_for_workers(self, relay: RelayProcess, count: int) -> Any:
        deadline = time.monotonic() + 30
        while relay.output().count("Server listening at") < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not start:\n{relay.output()}")
            yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def wait_for_redis(self, relay: RelayProcess) -> Any:
        """Until 8 pairings in a row, each on a new connection, are stored.

        A worker listens before its Redis connection is up (it answers 503
        until then, as /readyz says); on a loaded machine the second one can
        still be connecting when the test's requests arrive.
        """
        deadline, in_a_row, answered = time.monotonic() + 30, 0, 0
        while in_a_row < 8:
            if time.monotonic() > deadline:
                raise AssertionError(f"workers' Redis not ready:\n{relay.output()}")
            agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
            client = RelayClient(reactor, pairs=1, agent=agent)
            try:
                response = yield client.get(relay.url + "/api/warm-up")
                yield treq.content(response)
                in_a_row = in_a_row + 1 if response.code == 200 else 0
                answered += response.code == 200
            except Exception:
                in_a_row = 0
                yield task.deferLater(reactor, 0.1, lambda: None)
        return answered

    @defer.inlineCallbacks
    def test_two_workers_share_the_port_and_drain(self) -> Any:
        redis = self.redis()
        metrics_port = free_port()
        relay = self.start_relay(WORKERS="2", REDIS_URL=redis.url,
                                 METRICS_PORT=str(metrics_port))
        yield self.wait_for_workers(relay, 2)
        warm_up = yield self.wait_for_redis(relay)
        output = relay.output()
        self.assertIn("worker 1 of 2", output)
        self.assertIn("worker 2 of 2", output)
        worker_pids = _children(relay.process.pid)
        self.assertEqual(len(worker_pids), 1)

        # 24 kept-alive connections: the kernel spreads them over both workers,
        # which share pairs through Redis.
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 24
        self.addCleanup(pool.closeCachedConnections)
        client = RelayClient(reactor, pairs=4, agent=Agent(reactor, pool=pool))
        self.upstream.delay = 0.3  # all 24 at once, each on its own connection
        responses = yield defer.gatherResults(
            [client.post(relay.url + f"/api/{n}", data=b"z" * 100) for n in range(24)])
        yield defer.gatherResults([treq.content(r) for r in responses])
        self.assertEqual([r.code for r in responses], [200] * 24)
        per_process = [_server_connections(pid, relay.port)
                       for pid in [relay.process.pid, *worker_pids]]
        self.assertTrue(all(per_process), per_process)

        # /metrics on the first process counts every worker's requests.
        response = yield self.http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        text = (yield treq.content(response)).decode()
        self.assertEqual(scrape(text, "mterelay_requests_total", role="inbound",
                                status_class="2xx"), 24 + warm_up)

        relay.process.send_signal(signal.SIGTERM)
        code = yield self.wait_exit(relay)
        self.assertEqual(code, 0)
        for pid in worker_pids:
            self.assertFalse(_alive(pid))
        self.assertEqual(relay.output().count("Drained:"), 2)

    @defer.inlineCallbacks
    def test_a_dead_worker_is_restarted(self) -> Any:
        redis = self.redis()
        relay = self.start_relay(WORKERS="2", REDIS_URL=redis.url)
        deadline = time.monotonic() + 15
        while not _children(relay.process.pid) and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.1, lambda: None)
        (first,) = _children(relay.process.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            children = _children(relay.process.pid)
            if children and children != [first]:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertNotEqual(_children(relay.process.pid), [first])
        self.assertIn("Worker 1 exited", relay.output())

    def test_workers_refused_on_the_memory_store(self) -> None:
        relay = self.start_relay(wait=False, WORKERS="2")
        self.assertEqual(relay.process.wait(30), 2)
        self.assertIn("WORKERS needs REDIS_URL", relay.output())


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def _server_connections(pid: int, port: int) -> int:
    """Established connections to ``port`` whose server side ``pid`` holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
