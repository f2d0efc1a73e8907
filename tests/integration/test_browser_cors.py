"""Real Chromium against a real relay: CORS from a second origin, and preflights per 100 requests.

A page served from another origin on 127.0.0.1 calls the relay with
``fetch`` (no JavaScript client needed): an allowed origin reads the relay's
answers and errors (status, JSON body, exposed headers), a refused one gets
nothing, and the relay's access log counts the preflights (OPTIONS) a page
making 100 requests causes - per-request sealed-URL paths against the fixed
path of spec 5.2.
"""

from __future__ import annotations

import re
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.helpers.browser import in_browser, require_browser
from tests.helpers.support import RelayProcess

PAGE = b"<!doctype html><meta charset=utf-8><title>mterelay CORS test page</title><p>page"

#: 100 requests of one form, one after the other, as a page would make them;
#: GET/POST/PUT/DELETE in turn (one preflight answer covers every method).
REQUESTS_JS = """
async ({relay, form, n}) => {
  const head = await fetch(relay + "/api/mte-relay", {method: "HEAD"});
  const id = head.headers.get("x-mte-relay");
  const fixed = head.headers.get("x-mte-relay-fixed-path");
  const codes = [];
  for (let i = 0; i < n; i++) {
    const method = ["GET", "POST", "PUT", "DELETE"][i % 4];
    const token = "t" + i + "x" + Math.random().toString(36).slice(2);
    const headers = {"x-mte-relay": `${id},AAAAAAAAAAAAAAAAAAAAAA,MTE,1,1,0,1,${i}`,
                     "x-mte-relay-eh": "AAAAAAAAAAAAAAAAAAAAAA"};
    let url;
    if (form === "fixed") { url = relay + fixed; headers["x-mte-relay-url"] = token; }
    else { url = relay + "/" + token; }
    const response = await fetch(url, {method, headers});
    await response.arrayBuffer();
    codes.push(response.status);
  }
  return {id, fixed, codes};
}
"""

ERRORS_JS = """
async (relay) => {
  const out = {};
  const echo = await fetch(relay + "/api/mte-echo/hello");
  out.echo = [echo.status, (await echo.json()).echo];
  const bad = await fetch(relay + "/api/x", {headers: {"x-mte-relay": "garbage"}});
  const body = await bad.json();
  out.error = [bad.status, body.code, body.upstreamReached,
               bad.headers.get("x-mte-upstream-reached"), bad.headers.get("retry-after")];
  const missing = await fetch(relay + "/api/x", {method: "POST", body: "{}"});
  out.missing = [missing.status, (await missing.json()).code];
  const head = await fetch(relay + "/api/mte-relay", {method: "HEAD"});
  out.head = [head.headers.get("x-mte-relay") !== null, head.headers.get("x-mte-relay-framing"),
              head.headers.get("x-mte-relay-fixed-path")];
  return out;
}
"""

REFUSED_JS = """
async (relay) => {
  const out = {};
  for (const [name, init] of [["simple", {}],
                              ["preflighted", {headers: {"x-mte-relay": "a,b"}}]]) {
    try {
      const response = await fetch(relay + "/api/mte-echo/x", init);
      out[name] = "answered " + response.status;
    } catch (error) {
      out[name] = error.name;
    }
  }
  return out;
}
"""


class PageAndUpstream(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []

    def render(self, request: Any) -> bytes:
        self.received.append(request.uri)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


class BrowserRelayCase(TestCase):
    """A real relay (CORS for one page origin), a recording upstream, two page origins."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        require_browser()
        self.upstream = PageAndUpstream()
        ports = []
        for _ in range(3):  # upstream, allowed page origin, refused page origin
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Site(PageAndUpstream()))
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        upstream = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(self.upstream))
        self.addCleanup(upstream.stopListening)
        self.allowed = f"http://127.0.0.1:{ports[1]}"
        self.refused = f"http://127.0.0.1:{ports[2]}"
        self.relay = RelayProcess.start({
            "UPSTREAM": f"http://127.0.0.1:{upstream.getHost().port}",
            "CLIENT_ID_SECRET": "browser-cors-test-secret-" + "y" * 32,
            "CORS_ORIGINS": self.allowed, "CORS_METHODS": "GET,POST,PUT,DELETE",
            "CORS_MAX_AGE": "600", "LOG_LEVEL": "info",
        }, self.mktemp() + ".log")
        self.addCleanup(self.relay.stop)
        self.relay.wait_listening()

    def preflights(self) -> int:
        return len(re.findall(r"mterelay\.access#info\] OPTIONS ", self.relay.output()))



class BrowserCorsTests(BrowserRelayCase):
    @defer.inlineCallbacks
    def test_allowed_origin_reads_answers_and_errors(self) -> Any:
        def scenario(context: Any) -> Any:
            page = context.new_page()
            page.goto(self.allowed + "/page")
            return page.evaluate(ERRORS_JS, self.relay.url)

        out = yield in_browser(scenario)
        self.assertEqual(out["echo"], [200, "hello"])
        self.assertEqual(out["error"], [568, 568, "no", "no", None])
        self.assertEqual(out["missing"], [569, 569])
        self.assertEqual(out["head"], [True, "MTE,MKE,MKR", "/api/mte-relay/request"])
        self.assertEqual(self.upstream.received, [])

    @defer.inlineCallbacks
    def test_refused_origin_gets_nothing(self) -> Any:
        def scenario(context: Any) -> Any:
            page = context.new_page()
            page.goto(self.refused + "/page")
            return page.evaluate(REFUSED_JS, self.relay.url)

        out = yield in_browser(scenario)
        # Both are network errors to the script: no CORS headers, preflight 403.
        self.assertEqual(out, {"simple": "TypeError", "preflighted": "TypeError"})
        output = self.relay.output()
        self.assertRegex(output, r"OPTIONS /api/mte-echo/x 403")
        self.assertEqual(self.upstream.received, [])

    @defer.inlineCallbacks
    def test_preflights_per_100_requests(self) -> Any:
        """Per-request form: one preflight per request; fixed path: one per origin and max-age."""
        counts: dict[str, int] = {}
        for form in ("unique", "fixed"):
            before = self.preflights()

            def scenario(context: Any, form: str = form) -> Any:
                page = context.new_page()
                page.goto(self.allowed + "/page")
                started = time.monotonic()
                result = page.evaluate(REQUESTS_JS, {"relay": self.relay.url, "form": form,
                                                     "n": 100})
                result["seconds"] = time.monotonic() - started
                return result

            result = yield in_browser(scenario)
            self.assertEqual(len(result["codes"]), 100)
            # Every answer was a relay error the script could read (no pair exists).
            self.assertTrue(all(500 <= code < 600 or code == 400 for code in result["codes"]),
                            result["codes"])
            yield deferred_sleep(0.3)  # the relay's access lines are written as they happen
            counts[form] = self.preflights() - before
            print(f"\npreflights per 100 requests, {form} form: {counts[form]} "
                  f"({result['seconds']:.2f} s for 100 requests)")
        self.assertEqual(counts["unique"], 100)
        self.assertEqual(counts["fixed"], 1)
        self.assertEqual(self.upstream.received, [])


def deferred_sleep(seconds: float) -> "defer.Deferred[None]":
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


LOAD_JS = """
async (relay) => {
  const module = await import(relay + "/public/mte-relay-browser.js");
  await new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = relay + "/public/mte-relay-browser.iife.js";
    script.onload = resolve;
    script.onerror = () => reject(new Error("classic script did not load"));
    document.head.appendChild(script);
  });
  const again = await fetch(relay + "/public/mte-relay-browser.js");
  const missing = await fetch(relay + "/public/nope.js");
  return {module: [typeof module.initMteRelayClient, typeof module.mteFetch],
          classic: [typeof window.mteRelay, typeof window.mteRelay.mteFetch],
          type: again.headers.get("content-type"), cache: again.headers.get("cache-control"),
          missing: [missing.status, (await missing.json()).code]};
}
"""


class BrowserLoadsClientTests(BrowserRelayCase):
    """The built client, served at /public/ by the relay, loads in a page of another origin."""

    @defer.inlineCallbacks
    def test_module_and_classic_script_load(self) -> Any:
        def scenario(context: Any) -> Any:
            page = context.new_page()
            page.goto(self.allowed + "/page")
            return page.evaluate(LOAD_JS, self.relay.url)

        out = yield in_browser(scenario)
        self.assertEqual(out["module"], ["function", "function"])
        self.assertEqual(out["classic"], ["object", "function"])
        self.assertEqual(out["type"], "text/javascript; charset=utf-8")
        self.assertEqual(out["cache"], "public, max-age=300")
        self.assertEqual(out["missing"], [404, 404])
