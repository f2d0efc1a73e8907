"""What the real-Chromium suite of the JavaScript client stands on (also used by ``bench/browser.py``).

* :class:`SuiteUpstream` — the recording upstream: it keeps what each request
  carried (method, target, headers, body size and SHA-256), answers JSON, serves
  a 20 MB download, and a ``/slow`` answer whose second half is held until the
  page asks for ``/release`` (downloads must stream to the page);
* :class:`PageOrigin` — the second origin the page is served from (so CORS is
  real); ``/seen`` tells the page how many body bytes the upstream has had so
  far (a streamed upload reaches the upstream before its source has ended);
* :class:`WireTap` — a relaying TCP proxy that keeps every byte both ways;
* :data:`HARNESS_JS` — loads ``/public/mte-relay-browser.js`` from the relay
  into the page and registers the relay.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.protocols import portforward
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

PAGE = b"<!doctype html><meta charset=utf-8><title>mterelay browser suite</title><p>page"

#: The 20 MB the upstream serves, random so a digest match means every byte arrived.
DOWNLOAD_SIZE = 20 * 1024 * 1024

#: Loads the ES module from the relay and registers it; ``window.mte`` is the module.
HARNESS_JS = """
async ({relay, options}) => {
  window.mte = await import(relay + "/public/mte-relay-browser.js");
  window.hex = async (data) => Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", data)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  const started = performance.now();
  const info = await window.mte.initMteRelayClient({relayUrl: relay, storage: window.mte.memoryStorage(),
                                                   ...(options || {})});
  return {info, ms: performance.now() - started};
}
"""


class CountingRequest(Request):
    """Counts body bytes as they arrive, before the request is complete."""

    def handleContentChunk(self, data: bytes) -> None:
        self.channel.site.resource.progress += len(data)
        super().handleContentChunk(data)


class SuiteUpstream(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.progress = 0
        self.download = os.urandom(DOWNLOAD_SIZE)
        self.download_sha256 = hashlib.sha256(self.download).hexdigest()
        self.release: Deferred[None] | None = None
        self.released_by = ""

    def site(self) -> Site:
        return Site(self, requestFactory=CountingRequest)

    def render(self, request: Any) -> Any:
        body = request.content.read()
        target = request.uri.decode("latin-1")
        path = urlsplit(target).path
        record = {
            "method": request.method.decode("ascii"), "target": target,
            "headers": {k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()},
            "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
            "text": body[:2048].decode("utf-8", "replace"),
        }
        self.received.append(record)
        if path == "/download":
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-length", b"%d" % len(self.download))
            step = 1024 * 1024
            for offset in range(0, len(self.download), step):
                request.write(self.download[offset:offset + step])
            request.finish()
            return NOT_DONE_YET
        if path == "/kib":
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"k" * 1024
        if path == "/slow":
            return self._slow(request)
        if path == "/release":
            if self.release is not None and not self.release.called:
                self.released_by = "page"
                self.release.callback(None)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-upstream-answer", b"yes")
        answer = {k: record[k] for k in ("method", "target", "size", "sha256", "text")}
        answer["contentType"] = record["headers"].get("content-type", [None])[0]
        answer["secret"] = record["headers"].get("x-secret", [None])[0]
        return json.dumps(answer).encode()

    def _slow(self, request: Any) -> Any:
        """First half now; the rest once the page asked for /release (or 10 s passed)."""
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"a" * 1000)
        self.release = Deferred()

        def timeout() -> None:
            if not self.release.called:
                self.released_by = "timeout"
                self.release.callback(None)

        call = reactor.callLater(10, timeout)

        def rest(_: None) -> None:
            if call.active():
                call.cancel()
            request.write(b"b" * 1000)
            request.finish()

        self.release.addCallback(rest)
        return NOT_DONE_YET


class PageOrigin(Resource):
    """The page's own origin; ``/seen`` reports the upstream's body bytes so far."""

    isLeaf = True

    def __init__(self, upstream: SuiteUpstream | None = None) -> None:
        super().__init__()
        self.upstream = upstream

    def render(self, request: Any) -> bytes:
        if request.path == b"/seen" and self.upstream is not None:
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps({"bytes": self.upstream.progress}).encode()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


class _TapServer(portforward.ProxyServer):
    def dataReceived(self, data: bytes) -> None:
        self.factory.tap.sent.append(data)
        super().dataReceived(data)


class _TapClient(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        self.peer.factory.tap.received.append(data)
        super().dataReceived(data)


class _TapClientFactory(portforward.ProxyClientFactory):
    protocol = _TapClient


_TapServer.clientProtocolFactory = _TapClientFactory


class WireTap:
    """A relaying TCP proxy in front of ``127.0.0.1:port`` keeping the bytes both ways."""

    def __init__(self, port: int) -> None:
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.factory = portforward.ProxyFactory("127.0.0.1", port)
        self.factory.protocol = _TapServer
        self.factory.tap = self

    def bytes(self) -> bytes:
        return b"".join(self.sent) + b"".join(self.received)


__all__ = ["HARNESS_JS", "PageOrigin", "SuiteUpstream", "WireTap", "DOWNLOAD_SIZE"]
