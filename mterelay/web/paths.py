"""Request paths the relay refuses whatever the route."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

__all__ = ["path_problem"]


def path_problem(path: bytes) -> str | None:
    """Why a request path is refused, or None.

    Dot segments (also percent-encoded) are refused outright: an upstream that
    normalises ``/health/../admin`` would otherwise see a route the relay never
    matched against PASS_THROUGH_ROUTES or MTE_ROUTES.
    """
    if not path.startswith(b"/"):
        return "path must start with /"
    decoded = unquote_to_bytes(path)
    if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
        return "path must not contain . or .. segments"
    if b"\x00" in decoded or b"\\" in decoded:
        return "path contains a forbidden character"
    return None
