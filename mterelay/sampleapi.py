"""A small JSON API for ``make demo`` and for trying a relay by hand.

It stands in for the customer's upstream: a login (demo accounts, a wrong
password answers 401), an upload that reports what it received (over a size
limit: 413), and a listing with a query string.  Like the product's test
application, the login is a plain form POST, not a real login.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from mterelay import __version__
from mterelay.samplescenarios import scenario_answer

#: The demo accounts (user -> password).  Not secrets: they are printed by the demo.
DEMO_USERS = {"alice": "secret", "carol": "s3cret-pw", "demo": "demo-password"}
#: Default upload limit: big enough for any demo file, small enough to show a 413.
UPLOAD_LIMIT = 1024 * 1024


def _json(request: IRequest, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload).encode("utf-8")


def _credentials(request: IRequest, body: bytes) -> tuple[str, str] | None:
    """User and password from a JSON body or an HTML form (urlencoded) body."""
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    try:
        if ctype == b"application/x-www-form-urlencoded":
            form = parse_qs(body.decode("utf-8"), strict_parsing=bool(body))
            login = {key: values[0] for key, values in form.items()}
        else:
            login = json.loads(body)
        user, password = login["user"], login.get("password", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(user, str) or not isinstance(password, str):
        return None
    return user, password


class SampleAPI(Resource):
    isLeaf = True

    def __init__(self, upload_limit: int = UPLOAD_LIMIT) -> None:
        super().__init__()
        self.upload_limit = upload_limit

    def render(self, request: IRequest) -> bytes:
        path, method = request.path, request.method
        body = request.content.read()
        if path == b"/health":
            return _json(request, 200, {"status": "ok"})
        if path == b"/version":
            return _json(request, 200, {"name": "sample-api", "version": __version__})
        if path == b"/api/login" and method == b"POST":
            return self._login(request, body)
        if path == b"/api/upload" and method in (b"POST", b"PUT"):
            return self._upload(request, body)
        if path == b"/api/items" and method == b"GET":
            page = int((request.args.get(b"page") or [b"1"])[0] or 1)
            items = [{"id": (page - 1) * 3 + i, "name": f"item {(page - 1) * 3 + i}"} for i in (1, 2, 3)]
            return _json(request, 200, {"page": page, "items": items})
        scenario = scenario_answer(method, path, body)
        if scenario is not None:
            return _json(request, *scenario)
        return _json(request, 404, {"error": "not found", "path": path.decode("latin-1")})

    def _login(self, request: IRequest, body: bytes) -> bytes:
        credentials = _credentials(request, body)
        if credentials is None:
            return _json(request, 400, {"error": "send JSON or a form with user and password"})
        user, password = credentials
        expected = DEMO_USERS.get(user, "")
        # Both compared even for an unknown user, so timing tells nothing about the accounts.
        good = hmac.compare_digest(password.encode(), expected.encode()) and bool(expected)
        if not good:
            return _json(request, 401, {"ok": False, "error": "wrong user or password",
                                        "user": user})
        token = hashlib.sha256(f"demo:{user}".encode()).hexdigest()[:16]
        request.addCookie(b"session", token.encode(), path=b"/", httpOnly=True)
        return _json(request, 200, {"ok": True, "user": user, "token": token})

    def _upload(self, request: IRequest, body: bytes) -> bytes:
        name = (request.getHeader(b"x-file-name") or b"").decode("utf-8", "replace")
        if len(body) > self.upload_limit:
            return _json(request, 413, {"error": "file too large", "bytes": len(body),
                                        "limit": self.upload_limit, "name": name})
        return _json(
            request,
            201,
            {
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "contentType": (request.getHeader(b"content-type") or b"").decode("latin-1"),
                "name": name,
            },
        )
