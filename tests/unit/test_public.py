"""``/public/``: the browser client's files, served from memory with validators and CORS."""

from __future__ import annotations

import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from mterelay.web.public import PUBLIC_DIR, load_public_files
from tests.helpers.support import MemoryRelay, json_of

SCRIPT = b"export const x = 1;\n"
MAP = b'{"version":3}'


def relay_with_files(test: SynchronousTestCase, **overrides: str) -> MemoryRelay:
    directory = test.mktemp()
    os.makedirs(directory)
    for name, body in (("mte-relay-browser.js", SCRIPT), ("mte-relay-browser.js.map", MAP),
                       ("notes.txt", b"secret"), ("README.md", b"# readme")):
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(body)
    os.makedirs(os.path.join(directory, "sub.js"))
    relay = MemoryRelay.build(**overrides)
    relay.root.public_files = load_public_files(directory)
    return relay


class PublicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = relay_with_files(self, CORS_ORIGINS="https://app.test")

    def test_script(self) -> None:
        response, body = self.relay.call("GET", "/public/mte-relay-browser.js")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, SCRIPT)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"content-type"),
                         [b"text/javascript; charset=utf-8"])
        etag = headers.getRawHeaders(b"etag")[0]
        self.assertEqual(etag, b'"' + hashlib.sha256(SCRIPT).hexdigest()[:32].encode() + b'"')
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"public, max-age=300"])
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(self.relay.upstream.received, [])

    def test_source_map(self) -> None:
        response, body = self.relay.call("GET", "/public/mte-relay-browser.js.map")
        self.assertEqual(body, MAP)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_if_none_match_is_304(self) -> None:
        response, _ = self.relay.call("GET", "/public/mte-relay-browser.js")
        etag = response.headers.getRawHeaders(b"etag")[0]
        for value in (etag, b'"other", ' + etag, b"W/" + etag, b"*"):
            response, body = self.relay.call("GET", "/public/mte-relay-browser.js",
                                             headers={b"if-none-match": [value]})
            self.assertEqual(response.code, 304, value)
            self.assertEqual(body, b"")
            self.assertEqual(response.headers.getRawHeaders(b"etag"), [etag])
        response, body = self.relay.call("GET", "/public/mte-relay-browser.js",
                                         headers={b"if-none-match": [b'"other"']})
        self.assertEqual((response.code, body), (200, SCRIPT))

    def test_head(self) -> None:
        response, body = self.relay.call("HEAD", "/public/mte-relay-browser.js")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(response.headers.getRawHeaders(b"content-length"),
                         [str(len(SCRIPT)).encode()])

    def test_cors(self) -> None:
        response, _ = self.relay.call("GET", "/public/mte-relay-browser.js",
                                      headers={b"origin": [b"https://app.test"]})
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.test"])
        response, _ = self.relay.call("GET", "/public/mte-relay-browser.js",
                                      headers={b"origin": [b"https://evil.test"]})
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))

    def test_everything_else_is_404_json(self) -> None:
        for path in ("/public", "/public/", "/public/notes.txt", "/public/README.md",
                     "/public/sub.js", "/public/nope.js", "/public/../setup.cfg",
                     "/public/%2e%2e/config.py", "/public/%2E%2E%2Fconfig.py",
                     "/public/..%2fweb%2fpublic.py", "/public/..%5c..%5csetup.cfg",
                     "/public/..\\setup.cfg", "/public/mte-relay-browser.js%00",
                     "/public/%6dte-relay-browser.js", "/public/./mte-relay-browser.js",
                     "/public//mte-relay-browser.js", "/public/x/../mte-relay-browser.js",
                     "/public/mte-relay-browser.js/"):
            response, body = self.relay.call("GET", path)
            payload = json_of(body)
            if response.code == 400:
                # Dot segments, NUL and backslashes (also encoded) are refused before any
                # route (web/paths.py).
                self.assertRegex(payload["reason"], "segments|forbidden character", path)
            else:
                self.assertEqual(response.code, 404, path)
                self.assertEqual(payload["error"], "Not found", path)
            self.assertEqual(payload["code"], response.code, path)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                             [b"application/json; charset=utf-8"])
        self.assertEqual(self.relay.upstream.received, [])

    def test_other_methods(self) -> None:
        response, body = self.relay.call("POST", "/public/mte-relay-browser.js", data=b"x")
        self.assertEqual(response.code, 405)
        self.assertEqual(json_of(body)["code"], 405)
        self.assertEqual(self.relay.upstream.received, [])

    def test_public_wins_over_pass_through(self) -> None:
        relay = relay_with_files(self, PASS_THROUGH_ROUTES="/public/*")
        response, _ = relay.call("GET", "/public/other.js")
        self.assertEqual(response.code, 404)
        self.assertEqual(relay.upstream.received, [])

    def test_loaded_once(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "a.js")
        with open(path, "wb") as handle:
            handle.write(b"one")
        relay = MemoryRelay.build()
        relay.root.public_files = load_public_files(directory)
        with open(path, "wb") as handle:
            handle.write(b"two")
        os.remove(path)
        _, body = relay.call("GET", "/public/a.js")
        self.assertEqual(body, b"one")

    def test_package_directory_exists(self) -> None:
        self.assertTrue(os.path.isdir(PUBLIC_DIR))
        relay = MemoryRelay.build()
        for name in relay.root.public_files:
            self.assertTrue(name.endswith((b".js", b".map")))
