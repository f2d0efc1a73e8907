"""``make demo``: the relay in front of a sample API, on the embedded defaults.

Everything runs in this one process on loopback ports chosen by the kernel:
the sample API, and a relay in front of it with the in-memory store.  It sends
a few requests, prints what came back, then keeps serving until Ctrl-C so you
can try it with curl.  ``--once`` exits after the scripted requests.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from typing import Any

import treq
from twisted.internet import defer, endpoints, task
from twisted.web.server import Site

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

    if once:
        await relay.stopService()
        await api_port.stopListening()
        return
    print(f"\nThe relay keeps running: try  curl {relay_url}/api/mte-echo/test\nCtrl-C stops it.")
    await defer.Deferred()  # until Ctrl-C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="exit after the scripted requests")
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args.once)))


if __name__ == "__main__":
    main()
