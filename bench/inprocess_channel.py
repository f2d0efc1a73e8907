"""In-process CPU per request of the server channel: Twisted's ``HTTPChannel`` vs the lean one.

wrk numbers on a shared 2-core machine drift by 2x between runs; feeding
the same request bytes straight into a channel over a ``StringTransport``
measures the Python work per request without the kernel and the reactor,
and bounds what any channel replacement can save:

* ``channel``: the channel alone, with a request object that does nothing
  (the whole cost of HTTP/1.1 parsing, head and body, and of keep-alive);
* ``hello``: a twisted.web hello-world ``Site`` (1 KiB POST in, 1 KiB out);
* ``relay-site``: the relay's own ``RelaySite`` with ``StreamingRequest``
  and the same leaf Resource (its access line, metrics, request id, guard).

Each answer is checked (status 200, the full body) so both columns do the
same work.  ``python -m bench.inprocess_channel [ROUNDS] [REQUESTS]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from bench.lean_channel import LeanHTTPChannel, lean_channel_factory
from bench.server_channel import ANSWER, Hello, make_site

REQUEST = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1024\r\n\r\n" + b'{"data":"' + b"x" * 1013 + b'"}')


class NullRequest:
    """Takes what the channel hands it and is done at once: only the channel's cost is left."""

    def __init__(self, channel: Any, queued: Any = None) -> None:
        self.channel = channel
        self.requestHeaders = Headers()
        self.responseHeaders = Headers()
        self.received = 0

    def parseCookies(self) -> None:  # noqa: N802
        pass

    def gotLength(self, length: Any) -> None:  # noqa: N802
        pass

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        self.received += len(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        assert (command, path, self.received) == (b"POST", b"/", 1024)
        self.channel.transport.write(b"ok")
        self.channel.requestDone(self)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass


def _addresses() -> dict[str, Any]:
    return {"peerAddress": IPv4Address("TCP", "127.0.0.1", 40000),
            "hostAddress": IPv4Address("TCP", "127.0.0.1", 8080)}


def channel_only(kind: str) -> tuple[Any, StringTransport]:
    channel = HTTPChannel() if kind == "twisted" else LeanHTTPChannel()
    channel.requestFactory = NullRequest
    channel.timeOut = None
    transport = StringTransport(**_addresses())
    channel.makeConnection(transport)
    return channel, transport


def hello(kind: str) -> tuple[Any, StringTransport]:
    site = make_site(kind, reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport(**_addresses())
    channel.makeConnection(transport)
    return channel, transport


def relay_site(kind: str) -> tuple[Any, StringTransport]:
    from mterelay.http.observe import NO_METRICS
    from mterelay.web.site import RelaySite
    clock = Clock()
    site = RelaySite(Hello(), clock, NO_METRICS, reactor=clock)
    if kind == "lean":
        site.protocol = lean_channel_factory
    channel = site.buildProtocol(None)
    transport = StringTransport(**_addresses())
    channel.makeConnection(transport)
    return channel, transport


SETUPS: dict[str, Callable[[str], tuple[Any, StringTransport]]] = {
    "channel": channel_only, "hello": hello, "relay-site": relay_site}


def check(setup: str, answer: bytes) -> None:
    if setup == "channel":
        assert answer == b"ok", answer[:200]
    else:
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert answer.endswith(b"\r\n\r\n" + ANSWER), answer[:200]


def run(setup: str, kind: str, requests: int) -> float:
    """Microseconds per request (process CPU time)."""
    channel, transport = SETUPS[setup](kind)
    channel.dataReceived(REQUEST)
    check(setup, transport.value())
    transport.clear()
    feed, clear = channel.dataReceived, transport.clear
    started = time.process_time()
    for _ in range(requests):
        feed(REQUEST)
        clear()
    used = time.process_time() - started
    channel.dataReceived(REQUEST)
    check(setup, transport.value())
    channel.connectionLost(None)  # its timers go with it
    return used / requests * 1e6


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    print("| setup | twisted µs/request (min, median) | lean µs/request (min, median) "
          "| lean saves (min, median) |")
    print("|---|---:|---:|---:|")
    for setup in SETUPS:
        got: dict[str, list[float]] = {"twisted": [], "lean": []}
        for index in range(rounds):
            for kind in ("twisted", "lean") if index % 2 == 0 else ("lean", "twisted"):
                got[kind].append(run(setup, kind, requests))
        tw, le = got["twisted"], got["lean"]
        print(f"| {setup} | {min(tw):.1f}, {statistics.median(tw):.1f} | "
              f"{min(le):.1f}, {statistics.median(le):.1f} | "
              f"{min(tw) - min(le):.1f} µs = {(1 - min(le) / min(tw)) * 100:.0f} %, "
              f"{(1 - statistics.median(le) / statistics.median(tw)) * 100:.0f} % |",
              flush=True)


if __name__ == "__main__":
    main()
