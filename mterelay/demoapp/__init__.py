"""The browser demo page of ``make demo``: Login and File Upload through a relay.

Like the product's test application: a page, served from its own origin
(so the browser's CORS checks against the relay are real), that loads the
browser client from the relay's ``/public/mte-relay-browser.js`` and sends
the demo requests with ``mteFetch``.  The static files (``index.html``,
``app.js``, ``style.css``) sit beside this module and are read once; the only
dynamic answer is ``config.json``, which tells the page the default relay URL
and the sample API's upload limit.  Any other path is a 404 in JSON.
"""

from __future__ import annotations

import json
import os

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
#: URL path -> (file beside this module, content type).
FILES = {
    b"/": ("index.html", b"text/html; charset=utf-8"),
    b"/index.html": ("index.html", b"text/html; charset=utf-8"),
    b"/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"/style.css": ("style.css", b"text/css; charset=utf-8"),
}


class DemoPage(Resource):
    """The page origin.  ``relay_url`` may be set after construction (relay B starts later)."""

    isLeaf = True

    def __init__(self, relay_url: str = "", upload_limit: int | None = None) -> None:
        super().__init__()
        self.relay_url = relay_url
        self.upload_limit = upload_limit
        self.files: dict[bytes, tuple[bytes, bytes]] = {}
        for path, (name, content_type) in FILES.items():
            with open(os.path.join(DIRECTORY, name), "rb") as handle:
                self.files[path] = (handle.read(), content_type)

    def render(self, request: IRequest) -> bytes:
        # The page changes with the package, and config.json with each run: never cached.
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return _json(request, {"error": "use GET or HEAD", "code": 405})
        if request.path == b"/config.json":
            return _json(request, {"relayUrl": self.relay_url, "uploadLimit": self.upload_limit})
        found = self.files.get(request.path)
        if found is None:
            request.setResponseCode(404)
            return _json(request, {"error": "not found", "code": 404})
        body, content_type = found
        request.setHeader(b"content-type", content_type)
        return body


def _json(request: IRequest, payload: object) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload).encode("utf-8")
