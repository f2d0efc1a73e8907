"""``make demo``: the relay in front of a sample API, on the embedded defaults.

Everything runs in this one process on loopback ports chosen by the kernel:
the sample API, and a relay in front of it with the in-memory store.  It sends
a few requests in clear (echo, pass-through), then the same kind of traffic
through ``RelayClient``, end-to-end encrypted, showing both what the
application sees and what actually travelled.  Then it keeps serving until
Ctrl-C so you can try it with curl or ``mterelay-client``.  ``--once`` exits
after the scripted requests.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from typing import Any

import treq
from twisted.internet import defer, endpoints, task
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent
from twisted.web.server import Site
from zope.interface import implementer

from mterelay.client import RelayClient

from mterelay.config import load_config
from mterelay.logs import make_observer
from mterelay.sampleapi import SampleAPI
from mterelay.tap import build_service


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
            self.lines = [
                f"    on the wire: {method.decode()} /{target[:60].decode()}...",
                f"    x-mte-relay: <client id>,{relay_header[102:].decode()}",
            ]
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


async def run(reactor: Any, once: bool) -> None:
    api_port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(SampleAPI())
    )
    api_url = f"http://127.0.0.1:{api_port.getHost().port}"
    config = load_config(
        {
            "UPSTREAM": api_url,
            "CLIENT_ID_SECRET": secrets.token_urlsafe(32),
            "LISTEN": "tcp:0:interface=127.0.0.1",
            "PASS_THROUGH_ROUTES": "/health,/version,/api/items",
            "LOG_LEVEL": "warning",
        }
    )
    relay = build_service(config, reactor, make_observer("warning", "text", sys.stdout))
    relay.startService()
    assert relay.listener is not None
    port = await relay.listener.when_listening()
    relay_url = f"http://127.0.0.1:{port.getHost().port}"
    print(f"sample API : {api_url}\nrelay      : {relay_url}  (store: in-memory)")

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

    if once:
        await relay.stopService()
        await api_port.stopListening()
        return
    print(f"\nThe relay keeps running: try  curl {relay_url}/api/mte-echo/test\n"
          f"or  .venv/bin/mterelay-client -i {relay_url}/api/items?page=2\nCtrl-C stops it.")
    await defer.Deferred()  # until Ctrl-C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="exit after the scripted requests")
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args.once)))


if __name__ == "__main__":
    main()
