"""The demo page's origin and the demo stack around it, without a browser.

The page server answers only its own files and ``config.json`` (JSON 404 and
405 otherwise); ``start_stack`` puts the page on its own origin and relay B
allows exactly that origin (both loopback spellings) in CORS, so the browser
demo's CORS is real.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mterelay.demo import page_origins, start_stack
from mterelay.sampleapi import UPLOAD_LIMIT


class DemoStackTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.stack = yield defer.Deferred.fromCoroutine(start_stack(reactor))
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(self.stack.stop()))

    @defer.inlineCallbacks
    def get(self, url: str, method: str = "GET", headers: Any = None) -> Any:
        response = yield treq.request(method, url, headers=headers, persistent=False)
        body = yield treq.content(response)
        return response, body

    @defer.inlineCallbacks
    def test_page_files(self) -> Any:
        page = self.stack.page_url
        for path, ctype, needle in (("", "text/html", b'<script type="module" src="app.js">'),
                                    ("index.html", "text/html", b"File Upload"),
                                    ("app.js", "text/javascript", b"/public/mte-relay-browser.js"),
                                    ("style.css", "text/css", b"progress")):
            response, body = yield self.get(page + path)
            self.assertEqual(response.code, 200, path)
            self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(ctype))
            self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
            self.assertIn(needle, body)

    @defer.inlineCallbacks
    def test_config_names_relay_b_and_the_limit(self) -> Any:
        response, body = yield self.get(self.stack.page_url + "config.json")
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(json.loads(body),
                         {"relayUrl": self.stack.relay_url, "uploadLimit": UPLOAD_LIMIT})

    @defer.inlineCallbacks
    def test_anything_else_is_json_404_or_405(self) -> Any:
        for path in ("nope.js", "../demo.py", "%2e%2e/demo.py", "__init__.py", "app.js/"):
            response, body = yield self.get(self.stack.page_url + path)
            self.assertEqual((response.code, json.loads(body)["code"]), (404, 404), path)
        response, body = yield self.get(self.stack.page_url, method="POST")
        self.assertEqual((response.code, json.loads(body)["code"]), (405, 405))
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])

    @defer.inlineCallbacks
    def test_relay_b_allows_the_page_origin_only(self) -> Any:
        port = int(self.stack.page_url.rstrip("/").rsplit(":", 1)[1])
        preflight = {"access-control-request-method": ["POST"],
                     "access-control-request-headers": ["x-mte-relay, x-mte-relay-eh"]}
        for origin in page_origins(port):
            response, _ = yield self.get(self.stack.relay_url + "/api/login", "OPTIONS",
                                         {"origin": [origin], **preflight})
            self.assertEqual(response.code, 204, origin)
            self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"),
                             [origin])
        response, _ = yield self.get(self.stack.relay_url + "/api/login", "OPTIONS",
                                     {"origin": ["http://127.0.0.1:1"], **preflight})
        self.assertEqual(response.code, 403)
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))
