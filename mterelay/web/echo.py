"""The seed's liveness route, kept byte-compatible with its documentation.

``/api/mte-echo/<msg>`` answers ``{"echo", "time"}``; the bare and ``?msg=``
forms answer ``{"message", "timestamp"}``.  Two shapes because the two seed
products document two shapes and health checks in the field match on them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from mterelay.http.names import ECHO_PATH
from mterelay.web.responses import error_body, json_body

PREFIX = ECHO_PATH


def is_echo_path(path: bytes) -> bool:
    return path == PREFIX or path.startswith(PREFIX + b"/")


def iso_timestamp(seconds: float) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``, as JavaScript's toISOString prints it."""
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_echo(request: IRequest, clock: IReactorTime) -> bytes:
    if request.method not in (b"GET", b"HEAD"):
        request.setHeader(b"allow", b"GET, HEAD, OPTIONS")
        return error_body(request, 405, "Method not allowed", "the echo route answers GET")
    now = iso_timestamp(clock.seconds())
    rest = request.path[len(PREFIX) + 1 :]
    try:
        if rest:
            message = unquote_to_bytes(rest).decode("utf-8")
            return json_body(request, 200, {"echo": message, "time": now})
        raw = (request.args or {}).get(b"msg", [b""])[0]
        return json_body(request, 200, {"message": raw.decode("utf-8"), "timestamp": now})
    except UnicodeDecodeError:
        return error_body(request, 400, "Bad request", "echo message is not UTF-8")
