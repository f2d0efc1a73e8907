"""A hello-world twisted.web Site answering a POST, under Twisted's channel or the lean one.

For the issue-18 server-side measurement: the same Site, Resource and Request
class, only ``Site.protocol`` differs.  ``python -m bench.server_channel
twisted|lean PORT`` listens on 127.0.0.1:PORT and prints "ready".
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

ANSWER = b"x" * 1024


class Hello(Resource):
    """Reads the body, answers 1 KiB."""

    isLeaf = True

    def render_POST(self, request):  # noqa: N802 (twisted.web's name)
        request.content.read()
        request.setHeader(b"content-type", b"text/plain")
        return ANSWER

    render_GET = render_POST


def make_site(channel: str, reactor: Any = None) -> Site:
    """The hello-world Site; ``reactor`` (default the global one) runs its timers."""
    site = Site(Hello(), reactor=reactor)
    site.log = lambda request: None  # a hello world: no access line in either column
    if channel == "lean":
        from bench.lean_channel import lean_channel_factory
        site.protocol = lean_channel_factory
    elif channel != "twisted":
        raise SystemExit(f"channel must be twisted or lean, not {channel!r}")
    return site


def main() -> None:
    channel, port = sys.argv[1], int(sys.argv[2])
    reactor.listenTCP(port, make_site(channel), interface="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
