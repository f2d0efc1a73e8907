"""The JavaScript client in real headless Chromium against real relays (issue 16).

The page is served from a second origin on 127.0.0.1 and loads
``/public/mte-relay-browser.js`` from the relay (a real ``twistd -n mterelay``
process, relay B) in front of the recording upstream of
``tests/helpers/browserfixtures.py``; one case runs the relay on a real redis-server.
What the upstream received is checked against what the page asked, and what
the page read against what the upstream sent (SHA-256 at both ends).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.server import Site

from tests.helpers.browser import chromium, require_browser
from tests.helpers.browserfixtures import HARNESS_JS, PageOrigin, SuiteUpstream, WireTap
from tests.helpers.h2support import ssl_listen, write_self_signed
from tests.helpers.redisserver import RedisServer, started_redis
from tests.helpers.rewriter import Rewriter
from tests.helpers.support import RelayProcess, free_port

FIXED = "/api/mte-relay/request"

METHODS_JS = """
async (relay) => {
  const out = {};
  const get = await mte.mteFetch(relay + "/api/items?q=a%20b&n=1");
  out.get = [get.status, await get.json()];
  const post = await mte.mteFetch(relay + "/api/items", {method: "POST",
    headers: {"content-type": "application/json"}, body: JSON.stringify({name: "x", n: 1})});
  out.post = [post.status, await post.json(), post.headers.get("x-upstream-answer")];
  const put = await mte.mteFetch(relay + "/api/items/7", {method: "PUT", body: "put-body"});
  out.put = [put.status, await put.json()];
  const del = await mte.mteFetch(relay + "/api/items/7", {method: "DELETE"});
  out.del = [del.status, await del.json()];
  return out;
}
"""

BIG_JS = """
async (relay) => {
  const data = new Uint8Array(20 * 1024 * 1024);
  for (let i = 0; i < data.length; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
  const pageUp = await hex(data);
  let t = performance.now();
  const up = await mte.mteFetch(relay + "/upload", {method: "POST", body: data,
    headers: {"content-type": "application/octet-stream"}});
  const upAnswer = await up.json();
  const upMs = performance.now() - t;
  t = performance.now();
  const down = await mte.mteFetch(relay + "/download");
  const reader = down.body.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    parts.push(value);
    size += value.length;
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const p of parts) { all.set(p, at); at += p.length; }
  const downMs = performance.now() - t;
  return {pageUp, upStatus: up.status, upAnswer, upMs, downStatus: down.status, downSize: size,
          pageDown: await hex(all), pieces: parts.length, downMs};
}
"""

CONCURRENT_JS = """
async (relay) => {
  const answers = await Promise.all(Array.from({length: 50}, (_, i) =>
    mte.mteFetch(relay + "/c/" + i + "?i=" + i, i % 2 ? {method: "POST", body: "b" + i} : {})
      .then(async (r) => [r.status, await r.json()])));
  return answers;
}
"""

ONE_GET_JS = """
async ([relay, path]) => {
  const r = await mte.mteFetch(relay + path);
  return [r.status, await r.json()];
}
"""

TAMPER_JS = """
async (relay) => {
  const ok = await mte.mteFetch(relay + "/fine");
  const first = [ok.status, (await ok.json()).target];
  let yielded = 0;
  try {
    const r = await mte.mteFetch(relay + "/tampered");
    const reader = r.body.getReader();
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      yielded += value.length;
    }
    return {first, outcome: "read " + yielded};
  } catch (e) {
    const out = {first, outcome: e.name, code: e.code, forwarded: e.forwarded,
                 isMteRelayError: e instanceof mte.MteRelayError, yielded};
    try {  // the same through json(), which Chromium would turn into a bare TypeError
      out.json = "parsed " + JSON.stringify(await (await mte.mteFetch(relay + "/tampered-json")).json());
    } catch (e) {
      out.json = [e.name, e.code];
    }
    return out;
  }
}
"""

REFUSED_JS = """
async (relay) => {
  await new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = relay + "/public/mte-relay-browser.iife.js";
    script.onload = resolve;
    script.onerror = () => reject(new Error("classic script did not load"));
    document.head.appendChild(script);
  });
  try {
    await mteRelay.initMteRelayClient({relayUrl: relay, storage: mteRelay.memoryStorage()});
    return "paired";
  } catch (e) {
    return e.name;
  }
}
"""

HUNDRED_JS = """
async (relay) => {
  const codes = [];
  for (let i = 0; i < 100; i++) {
    const method = ["GET", "POST", "PUT", "DELETE"][i % 4];
    const r = await mte.mteFetch(relay + "/p/" + i, method === "GET" || method === "DELETE" ? {method}
      : {method, body: "x" + i});
    await r.arrayBuffer();
    codes.push(r.status);
  }
  return codes;
}
"""

#: A streamed upload (ReadableStream body): ``gate`` holds the last piece until
#: the upstream has seen body bytes (``/seen`` on the page origin), which only a
#: body that really streams can satisfy.
STREAM_JS = """
async ({relay, chunks, size, gate}) => {
  const piece = new Uint8Array(size);
  for (let i = 0; i < size; i++) piece[i] = (i * 7) % 251;
  let sent = 0;
  let streamed = null;
  const body = new ReadableStream({
    async pull(controller) {
      if (sent === chunks) { controller.close(); return; }
      if (gate && sent === chunks - 1) {
        const until = performance.now() + 10000;
        streamed = false;
        while (performance.now() < until) {
          const seen = await (await fetch("/seen")).json();
          if (seen.bytes > 0) { streamed = true; break; }
          await new Promise((r) => setTimeout(r, 25));
        }
      }
      sent += 1;
      controller.enqueue(piece.slice());
    }
  });
  const t = performance.now();
  const r = await mte.mteFetch(relay + "/stream-up", {method: "POST", body, duplex: "half",
    headers: {"content-type": "application/octet-stream"}});
  const answer = await r.json();
  const entries = performance.getEntriesByType("resource").filter((e) => e.name.startsWith(relay));
  return {status: r.status, answer, streamed, ms: performance.now() - t,
          protocols: [...new Set(entries.map((e) => e.nextHopProtocol))]};
}
"""

SLOW_JS = """
async (relay) => {
  const r = await mte.mteFetch(relay + "/slow");
  const reader = r.body.getReader();
  const first = await reader.read();
  const release = await mte.mteFetch(relay + "/release");
  await release.arrayBuffer();
  let rest = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    rest += value.length;
  }
  return {first: first.value.length, rest};
}
"""

WIRE_JS = """
async (relay) => {
  const get = await mte.mteFetch(relay + "/secret-path-alpha?token=query-secret-beta",
                                 {headers: {"x-secret": "header-secret-gamma"}});
  const getAnswer = await get.json();
  const post = await mte.mteFetch(relay + "/secret-path-epsilon", {method: "POST",
    headers: {"x-secret": "header-secret-zeta", "content-type": "text/plain"},
    body: "body-secret-delta ".repeat(64)});
  return [getAnswer, await post.json()];
}
"""


def sleep(seconds: float) -> "defer.Deferred[None]":
    return task.deferLater(reactor, seconds, lambda: None)


def count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


class SuiteCase(TestCase):
    """Upstream, two page origins (allowed, refused) in this reactor; relays as processes."""

    timeout = 120
    redis: RedisServer | None = None

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        require_browser()
        self.upstream = SuiteUpstream()
        self.upstream_port = yield self.listen(self.upstream.site())
        self.page = f"http://127.0.0.1:{(yield self.listen(Site(PageOrigin(self.upstream))))}"
        self.refused = f"http://127.0.0.1:{(yield self.listen(Site(PageOrigin())))}"

    def listen(self, factory: Any) -> "defer.Deferred[int]":
        def listening(port: Any) -> int:
            self.addCleanup(port.stopListening)
            return port.getHost().port

        return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(
            listening)

    def relay_env(self, **extra: str) -> dict[str, str]:
        env = {"UPSTREAM": f"http://127.0.0.1:{self.upstream_port}",
               "CLIENT_ID_SECRET": "browser-suite-secret-" + "z" * 32,
               "CORS_ORIGINS": self.page, "CORS_METHODS": "GET,POST,PUT,DELETE",
               "CORS_MAX_AGE": "600", "LOG_LEVEL": "info"}
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.url
        env.update(extra)
        return env

    def start_relay(self, port: int | None = None, **extra: str) -> RelayProcess:
        relay = RelayProcess.start(self.relay_env(**extra), self.mktemp() + ".log", port=port)
        self.addCleanup(lambda: relay.stop() if relay.process.poll() is None else None)
        relay.wait_listening()
        return relay

    def browse(self, relay_url: str, scenario: Any, options: dict[str, Any] | None = None,
               page: str | None = None, https: bool = False) -> "defer.Deferred[Any]":
        """``scenario(tab, relay_url)`` in a fresh Chromium, the client loaded and registered."""
        def run() -> Any:
            with chromium(ignore_https_errors=https) as context:
                tab = context.new_page()
                tab.goto((page or self.page) + "/page")
                tab.harness = tab.evaluate(HARNESS_JS, {"relay": relay_url, "options": options})
                return scenario(tab, relay_url)
        return threads.deferToThread(run)

    def encrypted(self) -> list[dict[str, Any]]:
        return [r for r in self.upstream.received]


class MethodsMixin:
    """Pairing and one request of each method: what reached the upstream, what the page read."""

    @defer.inlineCallbacks
    def test_pairing_and_methods(self) -> Any:
        relay = self.start_relay()
        out = yield self.browse(relay.url, lambda tab, url: [tab.harness,
                                                             tab.evaluate(METHODS_JS, url)])
        harness, answers = out
        self.assertTrue(harness["info"]["clientId"].count(".") == 1, harness)
        self.assertEqual(answers["get"][0], 200)
        self.assertEqual(answers["get"][1]["target"], "/api/items?q=a%20b&n=1")
        self.assertEqual(answers["get"][1]["method"], "GET")
        status, post, exposed = answers["post"]
        self.assertEqual((status, post["method"], post["target"]), (200, "POST", "/api/items"))
        self.assertEqual(json.loads(post["text"]), {"name": "x", "n": 1})
        self.assertEqual(post["contentType"], "application/json")
        self.assertEqual(exposed, "yes")  # a sealed response header, readable by the page
        self.assertEqual(answers["put"][1]["text"], "put-body")
        self.assertEqual((answers["put"][1]["method"], answers["put"][1]["target"]),
                         ("PUT", "/api/items/7"))
        self.assertEqual((answers["del"][0], answers["del"][1]["method"]), (200, "DELETE"))
        got = [(r["method"], r["target"]) for r in self.upstream.received]
        self.assertEqual(got, [("GET", "/api/items?q=a%20b&n=1"), ("POST", "/api/items"),
                               ("PUT", "/api/items/7"), ("DELETE", "/api/items/7")])
        log = relay.output()
        self.assertEqual(count(r"access#info\] POST /api/mte-pair ", log), 1, log)
        # Every sealed-URL request travelled on the fixed path.
        self.assertEqual(count(r"access#info\] (GET|POST|PUT|DELETE) " + FIXED + " ", log), 4,
                         log)


class BrowserClientTests(MethodsMixin, SuiteCase):

    @defer.inlineCallbacks
    def test_20mb_upload_and_download(self) -> Any:
        relay = self.start_relay()
        out = yield self.browse(relay.url, lambda tab, url: tab.evaluate(BIG_JS, url))
        self.assertEqual(out["upStatus"], 200)
        self.assertEqual(out["upAnswer"]["size"], 20 * 1024 * 1024)
        self.assertEqual(out["upAnswer"]["sha256"], out["pageUp"])  # upstream == page
        [upload] = [r for r in self.upstream.received if r["target"] == "/upload"]
        self.assertEqual(upload["sha256"], out["pageUp"])
        self.assertEqual(out["downStatus"], 200)
        self.assertEqual(out["downSize"], len(self.upstream.download))
        self.assertEqual(out["pageDown"], self.upstream.download_sha256)
        self.assertGreater(out["pieces"], 1)  # yielded record by record
        print(f"\n20 MB over HTTP/1.1: upload {out['upMs']:.0f} ms, download {out['downMs']:.0f} ms")

    @defer.inlineCallbacks
    def test_50_concurrent_on_one_pair(self) -> Any:
        relay = self.start_relay()
        out = yield self.browse(relay.url, lambda tab, url: tab.evaluate(CONCURRENT_JS, url),
                                options={"numberOfPairs": 1})
        self.assertEqual([a[0] for a in out], [200] * 50)
        for i, (_, answer) in enumerate(out):
            self.assertEqual(answer["target"], f"/c/{i}?i={i}")
            self.assertEqual(answer["text"], f"b{i}" if i % 2 else "")
        targets = sorted(r["target"] for r in self.upstream.received)
        self.assertEqual(targets, sorted(f"/c/{i}?i={i}" for i in range(50)))  # each once
        log = relay.output()
        self.assertEqual(count(r"access#info\] POST /api/mte-pair ", log), 1)
        self.assertEqual(count(r" 56\d ", log), 0, log)

    @defer.inlineCallbacks
    def test_relay_restart_repairs_transparently(self) -> Any:
        relay = self.start_relay()
        state: dict[str, Any] = {}

        def scenario(tab: Any, url: str) -> Any:
            before = tab.evaluate(ONE_GET_JS, [url, "/before"])
            relay.stop()
            state["again"] = RelayProcess.start(self.relay_env(), self.mktemp() + ".log",
                                                port=relay.port)
            state["again"].wait_listening()
            after = tab.evaluate(ONE_GET_JS, [url, "/after"])
            return before, after

        try:
            before, after = yield self.browse(relay.url, scenario)
        finally:
            if "again" in state:
                self.addCleanup(state["again"].stop)
        self.assertEqual((before[0], before[1]["target"]), (200, "/before"))
        self.assertEqual((after[0], after[1]["target"]), (200, "/after"))
        self.assertEqual([r["target"] for r in self.upstream.received], ["/before", "/after"])
        log = state["again"].output()
        # The restarted relay knew no pair: 560, then a new pairing, then the resend.
        self.assertEqual(count(r"access#info\] POST /api/mte-pair ", log), 1, log)
        self.assertEqual(count(r"access#info\] GET " + FIXED + " 560", log), 1, log)

    @defer.inlineCallbacks
    def test_tampered_response_is_rejected(self) -> Any:
        relay = self.start_relay()
        rewriter = Rewriter(reactor, relay.url)
        yield defer.ensureDeferred(rewriter.listen())
        self.addCleanup(lambda: defer.ensureDeferred(rewriter.close()))
        answered = []

        def flip(uri: bytes, headers: Any, body: bytes) -> bytes:
            if uri != FIXED.encode() or not headers.hasHeader(b"x-mte-relay"):
                return body  # only sealed answers (not the preflight)
            answered.append(uri)
            if len(answered) == 1 or not body:
                return body
            middle = len(body) // 2
            return body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1:]

        rewriter.response_body_edits.append(flip)
        out = yield self.browse(rewriter.url, lambda tab, url: tab.evaluate(TAMPER_JS, url))
        self.assertEqual(out["first"], [200, "/fine"])
        self.assertEqual(out["outcome"], "MteRelayError", out)
        self.assertEqual((out["code"], out["forwarded"], out["isMteRelayError"], out["yielded"]),
                         (562, True, True, 0))
        self.assertEqual(out["json"], ["MteRelayError", 562])
        self.assertEqual(len(answered), 3)

    @defer.inlineCallbacks
    def test_cors_allowed_and_refused_origin(self) -> Any:
        relay = self.start_relay()
        allowed = yield self.browse(relay.url, lambda tab, url: tab.evaluate(ONE_GET_JS,
                                                                             [url, "/ok"]))
        self.assertEqual((allowed[0], allowed[1]["target"]), (200, "/ok"))

        def refused(tab: Any, url: str) -> Any:
            return tab.evaluate(REFUSED_JS, url)

        def run() -> Any:
            with chromium() as context:
                tab = context.new_page()
                tab.goto(self.refused + "/page")
                return refused(tab, relay.url)

        out = yield threads.deferToThread(run)
        self.assertEqual(out, "TypeError")  # fetch's network error: the relay's CORS said no
        self.assertEqual([r["target"] for r in self.upstream.received], ["/ok"])
        yield sleep(0.2)
        # The refused page's HEAD got no CORS answer, so it never asked to pair.
        log = relay.output()
        self.assertEqual(count(r"access#info\] HEAD /api/mte-relay 200", log), 2, log)
        self.assertEqual(count(r"access#info\] POST /api/mte-pair ", log), 1, log)

    @defer.inlineCallbacks
    def test_preflights_per_100_requests(self) -> Any:
        relay = self.start_relay()
        counts = {}

        def preflights() -> int:
            return count(r"access#info\] OPTIONS ", relay.output())

        for form, options in (("fixed path", {}), ("per-request path", {"fixedPath": False})):
            def scenario(tab: Any, url: str) -> Any:
                time.sleep(0.2)
                before = preflights()
                codes = tab.evaluate(HUNDRED_JS, url)
                time.sleep(0.3)
                return codes, preflights() - before

            codes, counts[form] = yield self.browse(relay.url, scenario, options=options)
            self.assertEqual(codes, [200] * 100)
        print(f"\npreflights per 100 requests: {counts}")
        self.assertEqual(counts, {"fixed path": 1, "per-request path": 100})
        self.assertEqual(len(self.upstream.received), 200)

    @defer.inlineCallbacks
    def test_streamed_body_falls_back_to_buffered_over_http1(self) -> Any:
        relay = self.start_relay()

        def scenario(tab: Any, url: str) -> Any:
            failed: list[str] = []
            tab.on("requestfailed", lambda request: failed.append(request.failure or "?"))
            first = tab.evaluate(STREAM_JS, {"relay": url, "chunks": 32, "size": 65536,
                                             "gate": False})
            second = tab.evaluate(STREAM_JS, {"relay": url, "chunks": 4, "size": 1000,
                                              "gate": False})
            return first, second, failed

        first, second, failed = yield self.browse(relay.url, scenario)
        piece = bytes((i * 7) % 251 for i in range(65536))
        self.assertEqual(first["status"], 200, first)
        self.assertEqual(first["answer"]["sha256"], hashlib.sha256(piece * 32).hexdigest())
        self.assertEqual(second["status"], 200, second)
        self.assertEqual(second["answer"]["size"], 4000)
        # Chromium refused the streamed body once (never sent); the client sent it
        # buffered, and buffers this origin's streamed uploads from then on.  Under load
        # Chromium may also report that refused fetch as "net::ERR_ABORTED" (the event
        # naming, not another request: the upstream count below shows none was resent).
        refused = [f for f in failed if f == "net::ERR_ALPN_NEGOTIATION_FAILED"]
        self.assertEqual(len(refused), 1, failed)
        self.assertEqual([f for f in failed if f not in refused and f != "net::ERR_ABORTED"], [])
        uploads = [r for r in self.upstream.received if r["target"] == "/stream-up"]
        self.assertEqual([r["size"] for r in uploads], [32 * 65536, 4000])
        print(f"\nHTTP/1.1 streamed body: Chromium failed it with {failed}; sent buffered")

    @defer.inlineCallbacks
    def test_download_streams_to_the_page(self) -> Any:
        relay = self.start_relay()
        out = yield self.browse(relay.url, lambda tab, url: tab.evaluate(SLOW_JS, url))
        # The page read the first half while the upstream still held the second.
        self.assertEqual(self.upstream.released_by, "page")
        self.assertEqual(out, {"first": 1000, "rest": 1000})

    @defer.inlineCallbacks
    def test_wire_never_shows_path_headers_or_body(self) -> Any:
        relay = self.start_relay()
        tap = WireTap(relay.port)
        tap_port = yield self.listen(tap.factory)
        out = yield self.browse(f"http://127.0.0.1:{tap_port}",
                                lambda tab, url: tab.evaluate(WIRE_JS, url))
        get, post = out
        self.assertEqual((get["target"], get["secret"]),
                         ("/secret-path-alpha?token=query-secret-beta", "header-secret-gamma"))
        self.assertEqual((post["target"], post["secret"]), ("/secret-path-epsilon",
                                                            "header-secret-zeta"))
        self.assertEqual(post["text"], "body-secret-delta " * 64)
        wire = tap.bytes()
        self.assertIn(b"x-mte-relay-url", wire)  # the capture did see the requests
        self.assertIn(FIXED.encode(), wire)
        for secret in (b"secret-path", b"query-secret", b"header-secret", b"body-secret",
                       b"x-secret", b"x-upstream-answer"):
            self.assertNotIn(secret, wire)


class BrowserHttp2Tests(SuiteCase):

    @defer.inlineCallbacks
    def test_streamed_upload_over_http2_tls(self) -> Any:
        key, cert = write_self_signed(self.mktemp())
        port = free_port()
        relay = RelayProcess.start(self.relay_env(LISTEN=ssl_listen(port, key, cert)),
                                   self.mktemp() + ".log", port=port)
        self.addCleanup(lambda: relay.stop() if relay.process.poll() is None else None)
        yield wait_tls(relay)
        url = f"https://127.0.0.1:{port}"

        def scenario(tab: Any, url: str) -> Any:
            failed: list[str] = []
            tab.on("requestfailed", lambda request: failed.append(
                f"{request.method} {request.url} {request.failure}"))
            out = tab.evaluate(STREAM_JS, {"relay": url, "chunks": 32, "size": 65536,
                                           "gate": True})
            return out, failed

        out, failed = yield self.browse(url, scenario, https=True)
        piece = bytes((i * 7) % 251 for i in range(65536))
        self.assertEqual(out["status"], 200, out)
        self.assertEqual(out["answer"]["sha256"], hashlib.sha256(piece * 32).hexdigest())
        # Sent once, streamed (below), never fallen back or resent.  Chromium may still
        # report the completed POST as "net::ERR_ABORTED" (seen under load; the answer
        # was whole and authenticated): printed, not asserted.
        if failed:
            print(f"\nChromium requestfailed events: {failed}")
        self.assertEqual(len(self.upstream.received), 1)
        # The upstream had body bytes before the page's stream had ended.
        self.assertIs(out["streamed"], True, out)
        self.assertIn(out["protocols"], (["h2"], [""], []), out)


class BrowserRedisTests(MethodsMixin, SuiteCase):
    """Relay B keeping its pairs in a real redis-server."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.redis = started_redis(self)
        yield super().setUp()


PAIRING_JS = """
async ({relay, n}) => {
  const ms = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await mte.initMteRelayClient({relayUrl: relay, numberOfPairs: 1, replace: true,
                                  storage: mte.memoryStorage()});
    ms.push(performance.now() - t);
  }
  return ms;
}
"""

KIB_JS = """
async ({relay, n}) => {
  const kib = new Uint8Array(1024).fill(107);
  const out = {get: [], post: []};
  for (let i = 0; i < n + 5; i++) {
    let t = performance.now();
    const g = await mte.mteFetch(relay + "/kib?i=" + i);
    if ((await g.arrayBuffer()).byteLength !== 1024) throw new Error("GET size");
    if (i >= 5) out.get.push(performance.now() - t);
    t = performance.now();
    const p = await mte.mteFetch(relay + "/kib", {method: "POST", body: kib});
    if ((await p.arrayBuffer()).byteLength !== 1024) throw new Error("POST size");
    if (i >= 5) out.post.push(performance.now() - t);
  }
  return out;
}
"""


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class BrowserMeasureTests(SuiteCase):
    """``MEASURE=1``: the numbers issue 16 asks for, from one run in Chromium (prints a table)."""

    timeout = 300

    @defer.inlineCallbacks
    def test_measure(self) -> Any:
        import gzip
        import os

        if os.environ.get("MEASURE") != "1":
            raise SkipTest("set MEASURE=1 to measure (about 40 s)")
        plain = self.start_relay()
        key, cert = write_self_signed(self.mktemp())
        port = free_port()
        tls = RelayProcess.start(self.relay_env(LISTEN=ssl_listen(port, key, cert)),
                                 self.mktemp() + ".log", port=port)
        self.addCleanup(lambda: tls.stop() if tls.process.poll() is None else None)
        yield wait_tls(tls)
        tls_url = f"https://127.0.0.1:{port}"
        rows: list[tuple[str, str]] = []

        def preflights() -> int:
            return count(r"access#info\] OPTIONS ", plain.output())

        def measure() -> None:
            for form, options in (("fixed path", {}), ("per-request path", {"fixedPath": False})):
                with chromium() as context:
                    tab = context.new_page()
                    tab.goto(self.page + "/page")
                    tab.evaluate(HARNESS_JS, {"relay": plain.url, "options": options})
                    time.sleep(0.2)
                    before = preflights()
                    tab.evaluate(HUNDRED_JS, plain.url)
                    time.sleep(0.3)
                    rows.append((f"preflights per 100 requests, {form}",
                                 str(preflights() - before)))
            with chromium(ignore_https_errors=True) as context:
                tab = context.new_page()
                tab.goto(self.page + "/page")
                tab.evaluate(HARNESS_JS, {"relay": plain.url, "options": {}})
                pairing = tab.evaluate(PAIRING_JS, {"relay": plain.url, "n": 21})
                rows.append(("pairing (HEAD + 1 pair), median of 21",
                             f"{median(pairing):.1f} ms"))
                kib = tab.evaluate(KIB_JS, {"relay": plain.url, "n": 51})
                rows.append(("encrypted GET, 1 KiB answer, median of 51",
                             f"{median(kib['get']):.1f} ms"))
                rows.append(("encrypted POST, 1 KiB each way, median of 51",
                             f"{median(kib['post']):.1f} ms"))
                for name, url in (("HTTP/1.1", plain.url), ("HTTP/2 (TLS)", tls_url)):
                    tab.evaluate(HARNESS_JS, {"relay": url, "options": {}})
                    big = tab.evaluate(BIG_JS, url)
                    assert big["upAnswer"]["sha256"] == big["pageUp"], big
                    assert big["pageDown"] == self.upstream.download_sha256
                    rows.append((f"20 MB upload, {name}", f"{big['upMs']:.0f} ms"))
                    rows.append((f"20 MB download, {name}", f"{big['downMs']:.0f} ms"))
                    streamed = tab.evaluate(STREAM_JS, {"relay": url, "chunks": 320,
                                                        "size": 65536, "gate": False})
                    assert streamed["status"] == 200, streamed
                    rows.append((f"20 MB streamed-body upload (ReadableStream), {name}",
                                 f"{streamed['ms']:.0f} ms"))

        yield threads.deferToThread(measure)
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for name in ("mte-relay-browser.js", "mte-relay-browser.iife.js"):
            with open(os.path.join(here, "mterelay", "public", name), "rb") as handle:
                data = handle.read()
            rows.append((f"{name}, gzip -9", f"{len(gzip.compress(data, 9))} bytes "
                         f"({len(data)} raw)"))
        width = max(len(r[0]) for r in rows)
        print("\n" + "\n".join(f"{a:<{width}}  {b}" for a, b in rows))


def wait_tls(relay: RelayProcess) -> "defer.Deferred[None]":
    import socket

    def poll() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if relay.process.poll() is not None:
                raise AssertionError(relay.output())
            try:
                socket.create_connection(("127.0.0.1", relay.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("relay did not listen")
    return threads.deferToThread(poll)
