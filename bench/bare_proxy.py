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

from twisted.web.http_headers import Headers
from twisted.web.server import Site

try:  # run as a script (bench/ on sys.path) or imported as bench.bare_proxy
    from baseline_proxy import ProxyResource, pooled_client
except ImportError:  # pragma: no cover - the package form
    from bench.baseline_proxy import ProxyResource, pooled_client


class BareProxy(ProxyResource):
    """The heavy chain's hop with only content-type copied each way."""

    def outgoing_headers(self, request: Any) -> Headers | None:
        kind = request.getHeader(b"content-type")
        return Headers({b"content-type": [kind]}) if kind else None

    def copy_answer_headers(self, request: Any, response: Any) -> None:
        kind = response.headers.getRawHeaders(b"content-type")
        if kind:
            request.setHeader(b"content-type", kind[0])


class QuietSite(Site):
    """No access log: the bare chain writes nothing per request."""

    def log(self, request: Any) -> None:
        pass


def main(argv: list[str]) -> int:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    port, upstream = int(argv[1]), argv[2]
    reactor.listenTCP(port, QuietSite(BareProxy(upstream, pooled_client(reactor))),
                      backlog=1024, interface="127.0.0.1")
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
