"""``/public/<name>``: the browser client's build files, served by the relay itself.

The files are read once, when the relay starts, from the ``mterelay/public``
package directory: a request never touches the file system, so no path a
client sends (``..``, ``%2e%2e``, ``%2f``, backslashes, NUL) can name a file
the relay did not load, and there is nothing to list.  Only the names that
were loaded answer; every other ``/public/`` path is the relay's 404 in the
one error shape.

``ETag`` is a strong validator (SHA-256 of the bytes) so a browser revalidates
with ``If-None-Match`` and gets a 304 without the body.  ``Cache-Control:
public, max-age=300``: the file name carries no version, so an upgrade of the
relay must reach browsers within minutes, and the ETag makes each
revalidation after that a bodiless 304.
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

import attrs
from twisted.web.iweb import IRequest

from mterelay.web.responses import error_body

PUBLIC_PREFIX = b"/public/"
CACHE_CONTROL = b"public, max-age=300"
#: Content types by file extension; a file with any other extension is not served.
CONTENT_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".map": b"application/json",
}
#: The package directory holding the build files.
PUBLIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "public")


@attrs.frozen
class PublicFile:
    body: bytes
    content_type: bytes
    etag: bytes


def load_public_files(directory: str = PUBLIC_DIR) -> dict[bytes, PublicFile]:
    """Every servable regular file directly in ``directory``, keyed by its name."""
    files: dict[bytes, PublicFile] = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return files
    for name in names:
        content_type = CONTENT_TYPES.get(os.path.splitext(name)[1])
        full = os.path.join(directory, name)
        if content_type is None or not os.path.isfile(full) or os.path.islink(full):
            continue
        with open(full, "rb") as handle:
            body = handle.read()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
        files[name.encode("utf-8")] = PublicFile(body, content_type, etag)
    return files


def is_public_path(path: bytes) -> bool:
    return path == b"/public" or path.startswith(PUBLIC_PREFIX)


def render_public(request: IRequest, files: Mapping[bytes, PublicFile]) -> bytes:
    """A loaded file, a 304, or the 404/405 JSON answer; nothing else is possible.

    The lookup is by the raw (still percent-encoded) path segment, so an encoded
    name never matches a file: the build files have plain names.
    """
    if request.method not in (b"GET", b"HEAD"):
        request.setHeader(b"allow", b"GET, HEAD")
        return error_body(request, 405, "Method not allowed", "use GET or HEAD on /public/")
    path = request.path
    public = files.get(path[len(PUBLIC_PREFIX):]) if path.startswith(PUBLIC_PREFIX) else None
    if public is None:
        return error_body(request, 404, "Not found", "no such file under /public/")
    request.setHeader(b"etag", public.etag)
    request.setHeader(b"cache-control", CACHE_CONTROL)
    request.setHeader(b"x-content-type-options", b"nosniff")
    if _matches(request.getHeader(b"if-none-match"), public.etag):
        request.setResponseCode(304)
        return b""
    request.setHeader(b"content-type", public.content_type)
    return public.body


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    """RFC 9110 13.1.2: weak comparison, ``*`` or a list of tags."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == b"*":
        return True
    tags = (tag.strip() for tag in if_none_match.split(b","))
    return any(tag.removeprefix(b"W/") == etag for tag in tags)
