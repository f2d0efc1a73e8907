"""The demo page of ``make demo`` in real Chromium: Login and File Upload, both scenarios each.

The demo's own stack (``mterelay.demo.start_stack``: sample API, relay B,
the page on an origin of its own) runs in this process on loopback, with a
recording sample API and a wire tap between the browser and relay B.  The
page's default relay URL is B; the test types the tap's URL into the field
instead (the page must work against any relay typed in), so everything the
page sends - loading the client from ``/public/``, pairing, the sealed
requests - crosses the tap.  Checked: the text the page shows (decrypted
answer, status, wire report), a screenshot (a non-empty PNG), the plaintext
at the upstream, and no plaintext between the page and the relay.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from mterelay.demo import start_stack
from mterelay.sampleapi import SampleAPI
from mterelay.wiretap import WireTap
from tests.helpers.browser import in_browser, require_browser

LIMIT = 256 * 1024
#: The uploads: lines of plaintext, so any clear copy on the wire is easy to find.
MARKER = b"PLAINTEXT-UPLOAD-LINE"
SMALL = b"".join(b"%s %06d\n" % (MARKER, i) for i in range(7000))[:150_000]
BIG = b"".join(b"%s %06d\n" % (MARKER, i) for i in range(12000))[:LIMIT + 40_000]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RecordingAPI(SampleAPI):
    """The sample API, noting what reached it (after relay B decrypted it)."""

    def __init__(self, upload_limit: int) -> None:
        super().__init__(upload_limit=upload_limit)
        self.received: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        request.content.seek(0)
        headers = {name.lower(): values
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        self.received.append((request.method, request.uri, headers, body))
        # Relay B's upstream pool is internal to build_service and RelayService.stopService
        # leaves its idle connections open: answering "close" keeps none, so the reactor
        # is clean when the test ends.
        request.setHeader(b"connection", b"close")
        return super().render(request)


def wait_for_text(page: Any, selector: str, start: str) -> str:
    page.wait_for_function(
        "([selector, start]) => document.querySelector(selector).textContent.startsWith(start)",
        arg=[selector, start], timeout=30_000)
    return page.inner_text(selector)


def collect(page: Any, prefix: str) -> dict[str, str]:
    return {part: page.inner_text(f"#{prefix}-{part}") for part in ("status", "answer", "wire")}


def drive(context: Any, page_url: str, tap_url: str, not_a_relay: str,
          screenshot: str) -> dict[str, Any]:
    """A session: a wrong relay URL, then the typed relay; Login and Upload, both scenarios."""
    out: dict[str, Any] = {"errors": []}
    page = context.new_page()
    page.on("pageerror", lambda error: out["errors"].append(str(error)))
    page.goto(page_url)
    page.wait_for_selector("body[data-ready=true]")
    out["default_relay"] = page.input_value("#relay-url")
    page.fill("#relay-url", not_a_relay)
    page.click("#connect")
    out["not_a_relay"] = wait_for_text(page, "#relay-status", "cannot use")
    page.fill("#relay-url", tap_url)
    page.click("#connect")
    out["relay_status"] = wait_for_text(page, "#relay-status", "connected")

    page.fill("#login-user", "demo")
    page.fill("#login-password", "demo-password")
    page.click("#login-submit")  # the form itself
    wait_for_text(page, "#login-status", "200")
    out["login_ok"] = collect(page, "login")
    page.click("#login-failure")
    wait_for_text(page, "#login-status", "401")
    out["login_fail"] = collect(page, "login")

    for name, data, status in (("report.bin", SMALL, "201"), ("too-big.bin", BIG, "413")):
        page.set_input_files("#upload-file", files=[
            {"name": name, "mimeType": "application/octet-stream", "buffer": data}])
        page.click("#upload-submit")
        wait_for_text(page, "#upload-phase", f"done: {status}")
        wait_for_text(page, "#upload-status", status)
        result = collect(page, "upload")
        result["progress"] = page.eval_on_selector("#upload-progress", "bar => bar.value")
        out[f"upload_{status}"] = result
    page.screenshot(path=screenshot, full_page=True)
    return out


class DemoPageTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        require_browser()
        self.api = RecordingAPI(upload_limit=LIMIT)
        self.stack = yield defer.Deferred.fromCoroutine(start_stack(reactor, api=self.api))
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(self.stack.stop()))
        self.tap = WireTap([self.stack.relay_port], reactor)
        yield defer.Deferred.fromCoroutine(self.tap.listen())
        self.addCleanup(self.tap.port.stopListening)

    @defer.inlineCallbacks
    def test_login_and_upload_scenarios(self) -> Any:
        screenshot = os.path.abspath("demo-page.png")
        out = yield in_browser(drive, self.stack.page_url, self.tap.url, self.stack.api_url,
                               screenshot)
        yield task.deferLater(reactor, 0.2, lambda: None)  # the browser's sockets close
        print(f"\nscreenshot of the demo page: {screenshot}")
        for name in ("login_ok", "login_fail", "upload_201", "upload_413"):
            print(f"  {name}: {out[name]['status']}")  # each includes the page's own timing

        self.assertEqual(out["errors"], [])
        self.assertEqual(out["default_relay"], self.stack.relay_url)
        # The sample API has no /public/: the client cannot load, and the page says so.
        self.assertIn(f"cannot use {self.stack.api_url}: TypeError", out["not_a_relay"])
        self.assertIn("CORS_ORIGINS", out["not_a_relay"])
        self.assertIn(f"connected to {self.tap.url}", out["relay_status"])
        self.assertIn("HEAD /api/mte-relay -> 200, POST /api/mte-pair -> 200", out["relay_status"])

        ok, fail = out["login_ok"], out["login_fail"]
        self.assertTrue(ok["status"].startswith("200 OK (decrypted"), ok["status"])
        self.assertIn('"ok": true', ok["answer"])
        self.assertIn('"user": "demo"', ok["answer"])
        self.assertTrue(fail["status"].startswith("401 Unauthorized (decrypted"), fail["status"])
        self.assertIn('"error": "wrong user or password"', fail["answer"])
        for shown in (ok, fail):
            wire = shown["wire"]
            request = next(line for line in wire.splitlines() if line.startswith("request:"))
            # A sealed path (base64url), or the fixed path with the sealed one in a header.
            self.assertRegex(request, r"^request: +POST (/[A-Za-z0-9_-]{16,}"
                                      r"(\.\.\. \(\d+ chars\))?|/api/mte-relay/request)$")
            self.assertNotIn("/api/", request.replace("/api/mte-relay/request", ""))
            self.assertIn("sealed headers: content-type: application/x-www-form-urlencoded", wire)
            self.assertIn("x-mte-relay-eh: <sealed,", wire)
            self.assertIn("plaintext found on the wire: none", wire)
            self.assertRegex(wire, r"answer: +(200 OK|401 Unauthorized), \d+ bytes sealed -> "
                                   r"\d+ bytes decrypted; clear headers [^\n]*x-mte-relay-eh")
        self.assertIn("request body:   32 bytes plaintext ->", ok["wire"])  # user=demo&password=...

        done, big = out["upload_201"], out["upload_413"]
        self.assertTrue(done["status"].startswith("201 Created (decrypted"), done["status"])
        self.assertIn(f'"sha256": "{hashlib.sha256(SMALL).hexdigest()}"', done["answer"])
        self.assertIn(f'"bytes": {len(SMALL)}', done["answer"])
        self.assertIn('"name": "report.bin"', done["answer"])
        self.assertRegex(done["wire"],
                         rf"request body: +{len(SMALL)} bytes plaintext -> \d+ bytes sealed")
        self.assertIn("sealed headers: content-type: application/octet-stream, "
                      "x-file-name: report.bin", done["wire"])
        self.assertTrue(big["status"].startswith("413 Request Entity Too Large"), big["status"])
        self.assertIn('"error": "file too large"', big["answer"])
        self.assertIn(f'"limit": {LIMIT}', big["answer"])
        for shown in (done, big):
            self.assertEqual(shown["progress"], 1)
            self.assertIn("plaintext found on the wire: none", shown["wire"])
            sealed = int(shown["wire"].split(" bytes plaintext -> ")[1].split(" ")[0])
            self.assertGreater(sealed, len(SMALL))

        with open(screenshot, "rb") as handle:
            png = handle.read()
        self.assertTrue(png.startswith(PNG_SIGNATURE))
        self.assertGreater(len(png), 20_000)

        # The upstream got the plaintext, decrypted by relay B ...
        def digest(body: bytes) -> bytes:
            return body if len(body) < 100 else hashlib.sha256(body).hexdigest().encode()

        seen = [(method, uri, digest(body)) for method, uri, _, body in self.api.received]
        # First the page's attempt to load the client from the sample API itself (typed
        # as the relay URL, in clear, answered 404), then the four decrypted requests.
        self.assertEqual(seen, [(b"GET", b"/public/mte-relay-browser.js", b""),
                                (b"POST", b"/api/login", b"user=demo&password=demo-password"),
                                (b"POST", b"/api/login", b"user=demo&password=not-the-password"),
                                (b"POST", b"/api/upload", digest(SMALL)),
                                (b"POST", b"/api/upload", digest(BIG))])
        headers = self.api.received[3][2]
        self.assertEqual(headers[b"x-file-name"], [b"report.bin"])
        self.assertEqual(headers[b"content-type"], [b"application/octet-stream"])
        self.assertTrue(self.api.received[1][2][b"content-type"][0].startswith(
            b"application/x-www-form-urlencoded"))

        # ... while between the page and the relay only sealed data travelled.
        sent, answered = self.tap.sent(), self.tap.received()
        self.assertIn(b"GET /public/mte-relay-browser.js ", sent)  # the tap saw the page's traffic
        self.assertIn(b"POST /api/mte-pair ", sent)
        self.assertGreater(len(sent), len(SMALL) + len(BIG))
        for plain in (b"/api/login", b"/api/upload", b"demo-password", b"not-the-password",
                      b"password=", b"report.bin", b"x-file-name", MARKER,
                      b"x-www-form-urlencoded"):
            self.assertNotIn(plain, sent, plain)
        for plain in (b"wrong user or password", b"file too large", b'"token"',
                      hashlib.sha256(SMALL).hexdigest().encode(), b"set-cookie", b"session="):
            self.assertNotIn(plain, answered.lower() if plain == b"set-cookie" else answered, plain)
