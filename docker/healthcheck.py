"""Container health check: GET the relay's echo route on loopback; exit 0 if it answers.

A script rather than curl because the slim image has no curl or wget.  It follows
PORT (the image's default listener); set HEALTHCHECK_URL when LISTEN points
elsewhere (TLS, another interface).  Proxies are ignored on purpose: an
HTTP_PROXY meant for the upstream must not route a loopback check.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("PORT", "8080")
    url = os.environ.get("HEALTHCHECK_URL") or f"http://127.0.0.1:{port}/api/mte-echo/healthcheck"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "4"))) as reply:
            body = json.load(reply)
    except (OSError, ValueError) as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if not isinstance(body, dict) or not ({"echo", "message"} & body.keys()):
        print(f"unhealthy: {url} did not answer like an echo route", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
