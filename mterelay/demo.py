"""``make demo``: the relays in front of a sample API, on the embedded defaults.

Everything runs in this one process on loopback ports chosen by the kernel:
the sample API, relay B in front of it, and relay A (the outbound relay)
in front of B, with a wire tap between A and B recording what travels there
- all with the in-memory store - and the browser demo page (``mterelay/demoapp``:
Login and File Upload with the browser client) on an origin of its own that
relay B's CORS_ORIGINS allows.  It sends a few requests in clear to B (echo,
pass-through), then the same kind of traffic through ``RelayClient``, then
the headline deployment: plain HTTP requests from an "application" to relay
A, which encrypts them for relay B, showing the answers and an excerpt of the
bytes between A and B.  Then it keeps serving until Ctrl-C so you can try it
with curl or ``mterelay-client``.  ``--once`` exits after the scripted requests.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
import secrets
import sys
import tempfile
from typing import Any

import attrs
import treq
from twisted.internet import defer, endpoints, task
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.internet.interfaces import IListeningPort
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from mterelay.client import RelayClient

from mterelay.demoapp import DemoPage
from mterelay.sampleapi import UPLOAD_LIMIT, SampleAPI
from mterelay.service.config import load_config
from mterelay.service.logs import make_observer
from mterelay.service.tap import RelayService, build_service
from mterelay.wiretap import WireTap, hexdump

#: What the demo application sends to relay A; none of it may appear between A and B.
PLAINTEXT = (b"/api/login", b"/api/upload", b"/api/items", b"carol", b"s3cret-pw", b"page=5",
             b"x-mte-outbound-token")


def _show(title: str, method: str, url: str, status: int, body: bytes) -> None:
    print(f"\n--- {title}\n    {method} {url}\n    <- {status}")
    try:
        text = json.dumps(json.loads(body), indent=2)
    except ValueError:
        text = body[:300].decode("utf-8", "replace")
    print("    " + text.replace("\n", "\n    "))


@implementer(IAgent)
class WireLog:
    """Wraps the client's agent to show what an observer of the wire would see."""

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.lines: list[str] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
                ) -> Any:
        relay_header = headers.getRawHeaders(b"x-mte-relay", [b""])[0] if headers else b""
        if b"," in relay_header:  # an encrypted request, not the handshake
            target = uri.split(b"/", 3)[-1]
            token = headers.getRawHeaders(b"x-mte-relay-url", [None])[0]
            if token is not None:
                # The fixed path (spec 5.2): the sealed url travels in a header.
                self.lines = [
                    f"    on the wire: {method.decode()} /{target.decode()}",
                    f"    x-mte-relay-url: {token[:60].decode()}...",
                ]
            else:
                self.lines = [
                    f"    on the wire: {method.decode()} /{target[:60].decode()}...",
                ]
            self.lines.append(f"    x-mte-relay: <client id>,{relay_header[102:].decode()}")
        return self.agent.request(method, uri, headers, bodyProducer)


async def encrypted(reactor: Any, relay_url: str) -> None:
    """The same API, through RelayClient: sealed URL, headers and bodies."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    wire = WireLog(Agent(reactor, pool=pool))
    client = RelayClient(reactor, pairs=2, agent=wire)
    calls = [
        ("encrypted JSON login", "POST", "/api/login",
         {"content-type": ["application/json"]}, b'{"user": "alice", "password": "secret"}'),
        ("encrypted file upload", "PUT", "/api/upload",
         {"content-type": ["application/octet-stream"]}, bytes(range(256)) * 64),
        ("encrypted GET with a query string", "GET", "/api/items?page=3", {}, None),
    ]
    for title, method, path, headers, data in calls:
        response = await client.request(method, relay_url + path, headers=headers, data=data)
        _show(title, method, path, response.code, await treq.content(response))
        print("\n".join(wire.lines))
        cookies = response.headers.getRawHeaders(b"set-cookie")
        if cookies:
            print(f"    (decrypted Set-Cookie: {cookies[0].decode()[:40]}...)")


def _sealed_request(sent: bytes, method: bytes) -> bytes:
    """The encrypted request among what A sent to B (not the validation or pairing)."""
    start = -1
    for index in _find_all(sent, method + b" /"):
        # Not the handshakes; the fixed path (spec 5.2) is an encrypted request.
        if not sent.startswith((b"/api/mte-relay ", b"/api/mte-pair "),
                               index + len(method) + 1):
            start = index
    return sent[start:] if start >= 0 else sent


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, index = [], data.find(needle)
    while index >= 0:
        found.append(index)
        index = data.find(needle, index + 1)
    return found


def _show_wire(tap: WireTap, method: str) -> None:
    wire = _sealed_request(tap.sent(), method.encode())
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    verb, target = lines[0].decode("latin-1").split(" ")[:2]
    print(f"    between A and B: {verb} {target[:40]}... HTTP/1.1  ({len(wire)} bytes)")
    if not body:  # no body: show the sealed headers item instead
        body = next((line for line in lines if line.lower().startswith(b"x-mte-relay-eh:")),
                    head)
        print("    (its x-mte-relay-eh header, the sealed request headers:)")
    else:
        print("    (its body, sealed:)")
    for row in hexdump(body, lines=3):
        print("      " + row)
    seen = tap.sent() + tap.received()
    leaked = [word.decode() for word in PLAINTEXT if word in seen]
    print(f"    plaintext seen between A and B: {', '.join(leaked) or 'none'}")


async def server_to_server(reactor: Any, api_url: str, relay_b_port: int) -> RelayService:
    """Relay A (outbound) → wire tap → relay B; an application's plain requests through A."""
    tap = WireTap([relay_b_port], reactor)
    await tap.listen()
    token = secrets.token_urlsafe(16)
    config = load_config({
        "UPSTREAM": api_url,  # A's own upstream; outbound requests name theirs
        "CLIENT_ID_SECRET": secrets.token_urlsafe(32),
        "OUTBOUND_TOKEN": token,
        "OUTBOUND_UPSTREAMS": tap.url,
        "LISTEN": "tcp:0:interface=127.0.0.1",
        "LOG_LEVEL": "warning",
    })
    relay_a = build_service(config, reactor, make_observer("warning", "text", sys.stdout))
    relay_a.startService()
    assert relay_a.listener is not None
    port = await relay_a.listener.when_listening()
    a_url = f"http://127.0.0.1:{port.getHost().port}"
    print("\n=== server to server: application -> relay A -> (wire tap) -> relay B -> sample API"
          f" ===\nrelay A    : {a_url}  (OUTBOUND_TOKEN set, OUTBOUND_UPSTREAMS={tap.url})"
          f"\nwire tap   : {tap.url}  (records the bytes between A and B)"
          "\nThe application sends plain HTTP to relay A with two extra headers:"
          f"\n    x-mte-outbound-token: <token>\n    x-mte-upstream: {tap.url}")
    upload = tempfile.TemporaryFile()
    upload.write(bytes(range(256)) * 40)
    upload.seek(0)
    calls = [
        ("JSON login through relay A", "POST", "/api/login",
         {"content-type": ["application/json"]}, b'{"user": "carol", "password": "s3cret-pw"}'),
        ("file upload through relay A", "POST", "/api/upload",
         {"content-type": ["application/octet-stream"]}, FileBodyProducer(upload)),
        ("GET with a query string through relay A", "GET", "/api/items?page=5", {}, None),
    ]
    outbound = {"x-mte-outbound-token": [token], "x-mte-upstream": [tap.url]}
    for title, method, path, headers, data in calls:
        tap.clear()
        response = await treq.request(method, a_url + path, headers={**headers, **outbound},
                                      data=data, reactor=reactor)
        _show(title, method, path, response.code, await treq.content(response))
        _show_wire(tap, method)
    upload.close()
    return relay_a


def page_origins(port: int) -> list[str]:
    """The origins a browser may give the demo page: both loopback spellings."""
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


@attrs.define
class DemoStack:
    """The sample API, relay B in front of it, and the demo page (CORS allowed at B)."""

    api_url: str
    relay_url: str
    page_url: str
    relay: RelayService
    ports: Sequence[IListeningPort]

    @property
    def relay_port(self) -> int:
        return int(self.relay_url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        await self.relay.stopService()
        for port in self.ports:
            await port.stopListening()


async def start_stack(reactor: Any, api: Resource | None = None, page_port: int = 0,
                      log_level: str = "warning") -> DemoStack:
    """Start what the browser demo needs on loopback; the page first, so B can allow its origin."""
    loopback = endpoints.TCP4ServerEndpoint
    api_port = await loopback(reactor, 0, interface="127.0.0.1").listen(
        Site(api if api is not None else SampleAPI()))
    page = DemoPage(upload_limit=getattr(api, "upload_limit", UPLOAD_LIMIT))
    page_listener = await loopback(reactor, page_port, interface="127.0.0.1").listen(Site(page))
    api_url = f"http://127.0.0.1:{api_port.getHost().port}"
    page_number = page_listener.getHost().port
    config = load_config(
        {
            "UPSTREAM": api_url,
            "CLIENT_ID_SECRET": secrets.token_urlsafe(32),
            "LISTEN": "tcp:0:interface=127.0.0.1",
            "PASS_THROUGH_ROUTES": "/health,/version,/api/items",
            "CORS_ORIGINS": ",".join(page_origins(page_number)),
            "LOG_LEVEL": log_level,
        }
    )
    relay = build_service(config, reactor, make_observer(log_level, "text", sys.stdout))
    relay.startService()
    assert relay.listener is not None
    port = await relay.listener.when_listening()
    page.relay_url = f"http://127.0.0.1:{port.getHost().port}"
    return DemoStack(api_url, page.relay_url, f"http://127.0.0.1:{page_number}/", relay,
                     [page_listener, api_port])


async def run(reactor: Any, once: bool, page_port: int = 0) -> None:
    stack = await start_stack(reactor, page_port=page_port)
    api_url, relay_url = stack.api_url, stack.relay_url
    print(f"sample API : {api_url}\nrelay B    : {relay_url}  (store: in-memory)"
          f"\ndemo page  : {stack.page_url}  (open it in a browser: Login and File Upload"
          " through relay B with the browser client; relay B's CORS_ORIGINS allows this origin)")

    calls = [
        ("echo (liveness, no pairing)", "GET", "/api/mte-echo/hello", None),
        ("echo, query form", "GET", "/api/mte-echo?msg=demo", None),
        ("pass-through route", "GET", "/health", None),
        ("pass-through with a query string", "GET", "/api/items?page=2", None),
        ("an encrypted route sent in clear is refused", "POST", "/api/login",
         b'{"user": "alice", "password": "secret"}'),
    ]
    for title, method, path, data in calls:
        response = await treq.request(method, relay_url + path, data=data, reactor=reactor)
        _show(title, method, path, response.code, await treq.content(response))

    print("\n=== through mterelay.client.RelayClient: end-to-end encrypted ===")
    await encrypted(reactor, relay_url)

    relay_a = await server_to_server(reactor, api_url, stack.relay_port)

    if once:
        await relay_a.stopService()
        await stack.stop()
        return
    print(f"\nThe relays keep running: try  curl {relay_url}/api/mte-echo/test\n"
          f"or  .venv/bin/mterelay-client -i {relay_url}/api/items?page=2\n"
          f"or open the demo page {stack.page_url} in a browser\nCtrl-C stops them.")
    await defer.Deferred()  # until Ctrl-C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="exit after the scripted requests")
    parser.add_argument("--page-port", type=int, default=0, metavar="PORT",
                        help="port of the demo page on 127.0.0.1 (default: any free port)")
    args = parser.parse_args(argv)
    if not 0 <= args.page_port <= 65535:
        parser.error("--page-port: must be 0..65535")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(
        run(reactor, args.once, args.page_port)))


if __name__ == "__main__":
    main()
