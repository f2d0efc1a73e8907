"""The bare chain hop: the cheapest Twisted proxy of the relay pair's shape.

Two of these chained (B1 -> B2 -> upstream) are the baseline the relay pair
is judged against (issue 18): a ``twisted.web`` Site with one leaf Resource
forwarding with ``treq.request`` over a persistent pool, and nothing else —
no logging, no header copies.  Forwarded: method, path+query, body and the
content-type; copied back: status, body and content-type.  Anything this
hop does not do is work the relay would have to justify.
``bench/baseline_proxy.py`` (access line, header copies) stays as the
heavier second column.

Run: ``python bench/bare_proxy.py LISTEN_PORT UPSTREAM_URL``.
"""

from __future__ import annotations

import sys
from typing import Any

import treq
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class BareProxy(Resource):
    """Forwards method, path+query, body and content-type to one upstream."""

    isLeaf = True

    def __init__(self, upstream: str, client: treq.client.HTTPClient) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.client = client

    def render(self, request: Any) -> Any:
        defer.ensureDeferred(self.forward(request))
        return NOT_DONE_YET

    async def forward(self, request: Any) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        kind = request.getHeader(b"content-type")
        try:
            response = await self.client.request(
                request.method.decode("ascii"), self.upstream + request.uri.decode("ascii"),
                headers=Headers({b"content-type": [kind]}) if kind else None,
                data=request.content.read() or None, allow_redirects=False)
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
        answer_kind = response.headers.getRawHeaders(b"content-type")
        if answer_kind:
            request.setHeader(b"content-type", answer_kind[0])
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class QuietSite(Site):
    """No access log: the bare chain writes nothing per request."""

    def log(self, request: Any) -> None:
        pass


def main(argv: list[str]) -> int:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    port, upstream = int(argv[1]), argv[2]
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 256  # >= the highest concurrency the bench drives
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    reactor.listenTCP(port, QuietSite(BareProxy(upstream, client)), backlog=1024,
                      interface="127.0.0.1")
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
