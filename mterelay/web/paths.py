"""Request paths the relay refuses whatever the route."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

__all__ = ["path_problem", "target_problem"]

#: RFC 9112's request-target: visible ASCII.  Twisted accepts more (0x7F and
#: 0x80-0xFF), which its client then refuses to send, far from the cause.
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")


def path_problem(path: bytes) -> str | None:
    """Why a request path is refused, or None.

    Dot segments (also percent-encoded) are refused outright: an upstream that
    normalises ``/health/../admin`` would otherwise see a route the relay never
    matched against PASS_THROUGH_ROUTES or MTE_ROUTES.
    """
    if not path.startswith(b"/"):
        return "path must start with /"
    if (b"%" not in path and b"/." not in path and b"\x00" not in path
            and b"\\" not in path):
        # Nothing to decode, and a dot segment needs "/." (the path starts
        # with "/"): the answer below would be None.  Most paths take this
        # turn, sealed-url tokens always; it is a tenth of the full check.
        return None
    decoded = unquote_to_bytes(path)
    if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
        return "path must not contain . or .. segments"
    if b"\x00" in decoded or b"\\" in decoded:
        return "path contains a forbidden character"
    return None


def target_problem(target: bytes) -> str | None:
    """Why a whole request target (path and query) is refused, or None."""
    if _VISIBLE_ASCII.fullmatch(target) is None:
        return "request target must be visible ASCII (percent-encode other bytes)"
    return path_problem(target.split(b"?", 1)[0])
