"""The recording upstream: answers everything, writes down everything that reached it.

Run as its own process (``python -m fuzz.upstream PORT RECORDS``) so that
what it saw is independent of the harness.  A request is recorded only once
it arrived complete (Twisted renders a resource after the whole body): an
upstream request the relay aborted mid-body is, correctly, not "reached".
Each record is one JSON line, flushed before the answer is sent, so by the
time a client holds the answer the record is on disk.

Answers: ``200`` JSON ``{"case", "n", "uri"}`` with ``x-fuzz-upstream: 1``
(so the harness can tell an upstream answer from a relay-made one);
``/slow?ms=N`` waits N ms first (the shutdown attack).
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

CASE_HEADER = b"x-fuzz-case"
#: Header values recorded in full (the attacks look at them); others: names only.
KEPT_VALUES = frozenset({b"x-fuzz-case", b"authorization", b"x-api-key", b"connection",
                         b"set-cookie", b"x-mte-response-headers", b"content-type"})


def case_of(uri: bytes, header: list[bytes] | None) -> str | None:
    """The case id: from the ``x-fuzz-case`` header, else the ``case`` query parameter."""
    if header:
        return header[0].decode("latin-1")[:200]
    try:
        query = parse_qs(urlsplit(uri.decode("latin-1")).query)
    except ValueError:
        return None
    values = query.get("case")
    return values[0][:200] if values else None


class Recorder(Resource):
    isLeaf = True

    def __init__(self, out: IO[str]) -> None:
        super().__init__()
        self.out = out
        self.count = 0

    def render(self, request: Any) -> Any:
        self.count += 1
        body = request.content.read()
        headers = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            lower = name.lower()
            headers[lower.decode("latin-1")] = (
                [v.decode("latin-1")[:300] for v in values] if lower in KEPT_VALUES else len(values))
        case = case_of(request.uri, request.requestHeaders.getRawHeaders(CASE_HEADER))
        record = {"n": self.count, "case": case, "method": request.method.decode("latin-1"),
                  "uri": request.uri.decode("latin-1")[:300], "headers": headers,
                  "body_len": len(body), "body_sha": hashlib.sha256(body).hexdigest()[:16]}
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-fuzz-upstream", b"1")
        answer = json.dumps({"case": case, "n": self.count,
                             "uri": record["uri"]}).encode()
        if request.path == b"/slow":
            try:
                delay = int(request.args.get(b"ms", [b"1000"])[0]) / 1000.0
            except ValueError:
                delay = 1.0

            def finish() -> None:
                if not request._disconnected:
                    request.write(answer)
                    request.finish()
            reactor.callLater(delay, finish)
            return NOT_DONE_YET
        return answer


def main(argv: list[str]) -> None:
    port, path = int(argv[0]), argv[1]
    out = open(path, "a", encoding="utf-8")
    site = Site(Recorder(out))
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(port, site, backlog=1024, interface="127.0.0.1")
    print(f"fuzz upstream listening on {port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
