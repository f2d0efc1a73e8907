"""A small JSON API for ``make demo`` and for trying a relay by hand.

It stands in for the customer's upstream: a login, an upload that reports
what it received, and a listing with a query string.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from mterelay import __version__
from mterelay.samplescenarios import scenario_answer


def _json(request: IRequest, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload).encode("utf-8")


class SampleAPI(Resource):
    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        path, method = request.path, request.method
        body = request.content.read()
        if path == b"/health":
            return _json(request, 200, {"status": "ok"})
        if path == b"/version":
            return _json(request, 200, {"name": "sample-api", "version": __version__})
        if path == b"/api/login" and method == b"POST":
            try:
                login = json.loads(body)
                user = login["user"]
            except (ValueError, KeyError, TypeError):
                return _json(request, 400, {"error": "send JSON {\"user\": ..., \"password\": ...}"})
            token = hashlib.sha256(f"demo:{user}".encode()).hexdigest()[:16]
            request.addCookie(b"session", token.encode(), path=b"/", httpOnly=True)
            return _json(request, 200, {"ok": True, "user": user, "token": token})
        if path == b"/api/upload" and method in (b"POST", b"PUT"):
            return _json(
                request,
                201,
                {
                    "bytes": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "contentType": (request.getHeader(b"content-type") or b"").decode("latin-1"),
                },
            )
        if path == b"/api/items" and method == b"GET":
            page = int((request.args.get(b"page") or [b"1"])[0] or 1)
            items = [{"id": (page - 1) * 3 + i, "name": f"item {(page - 1) * 3 + i}"} for i in (1, 2, 3)]
            return _json(request, 200, {"page": page, "items": items})
        scenario = scenario_answer(method, path, body)
        if scenario is not None:
            return _json(request, *scenario)
        return _json(request, 404, {"error": "not found", "path": path.decode("latin-1")})
