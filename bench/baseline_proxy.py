"""The baseline: a plain Twisted/treq reverse proxy, the relay's shape without encryption.

Two of these chained (P1 -> P2 -> upstream) are what the relay pair
(A -> B -> upstream) is compared with, so the comparison isolates what the
relay adds (sealing, pairing, its own bookkeeping) from what any two-hop
Twisted proxy costs.  It is deliberately ordinary and idiomatic: a
``twisted.web`` Site, one leaf Resource, one treq ``HTTPClient`` over a
persistent ``HTTPConnectionPool``, bodies buffered whole (they are 1 KiB),
one access-log line per request like the relay.  No tricks either way.

Run: ``python bench/baseline_proxy.py LISTEN_PORT UPSTREAM_URL``.
"""

from __future__ import annotations

import sys
from typing import Any

import treq
from twisted.internet import defer
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

#: RFC 9110 hop-by-hop headers; Host and Content-Length are set by the agent.
SKIP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"host", b"content-length"}


def end_to_end(source: Headers) -> Headers:
    """A copy of ``source`` without hop-by-hop (and length/host) headers."""
    copied = Headers()
    for name, values in source.getAllRawHeaders():
        if name.lower() not in SKIP:
            copied.setRawHeaders(name, values)
    return copied


class ProxyResource(Resource):
    """Forwards every request (method, path+query, headers, body) to one upstream."""

    isLeaf = True

    def __init__(self, upstream: str, client: treq.client.HTTPClient) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.client = client

    def render(self, request: Any) -> Any:
        defer.ensureDeferred(self.forward(request))
        return NOT_DONE_YET

    def outgoing_headers(self, request: Any) -> Headers | None:
        """The headers sent upstream: every end-to-end one."""
        return end_to_end(request.requestHeaders)

    def copy_answer_headers(self, request: Any, response: Any) -> None:
        """The answer's end-to-end headers, all of them."""
        request.responseHeaders = end_to_end(response.headers)

    async def forward(self, request: Any) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        try:
            response = await self.client.request(
                request.method.decode("ascii"),
                self.upstream + request.uri.decode("ascii"),
                headers=self.outgoing_headers(request),
                data=request.content.read() or None,
                allow_redirects=False,
            )
            body = await response.content()
        except Exception as error:  # upstream unreachable / broke: 502 like any proxy
            if not gone:
                request.setResponseCode(502)
                request.write(f"bad gateway: {error}".encode())
                request.finish()
            return
        if gone:
            return
        request.setResponseCode(response.code)
        self.copy_answer_headers(request, response)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def pooled_client(reactor: Any) -> treq.client.HTTPClient:
    """treq over one persistent pool, as large as the bench's highest concurrency."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 256
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


def main(argv: list[str]) -> int:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    port, upstream = int(argv[1]), argv[2]
    # Access lines go to stdout (redirected to a file), as the relay's do.
    observer: Any = textFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer])
    site = Site(ProxyResource(upstream, pooled_client(reactor)))
    reactor.listenTCP(port, site, backlog=1024, interface="127.0.0.1")
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
