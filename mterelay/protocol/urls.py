"""The relay origin and the url item of a request URL (spec 5.1), for every client.

Pure (``urllib.parse`` only), so the Twisted client, the blocking client and
the CLI split a URL the same way: one origin per relay (its port always
named, so ``https://h`` and ``https://h:443`` share pairs) and the
path+query the url item carries.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

__all__ = ["split_url"]

#: Kept literal in a path+query; everything else is percent-encoded.
_URL_SAFE = "/?&=%:@!$'()*+,;~-._[]"
#: A path+query that ``quote(..., safe=_URL_SAFE)`` leaves as it is.
_PLAIN_TARGET = re.compile(r"/[A-Za-z0-9/?&=%:@!$'()*+,;~\-._\[\]]*")
#: Origins split_url returned that were also spelled so in the URL given:
#: such a URL followed by a plain target splits at its first slash, with no
#: urllib parse (a client sends every request to one of a few origins).
_CANONICAL: set[str] = set()
_MAX_CANONICAL = 256


def split_url(url: str | bytes) -> tuple[str, str]:
    """``(origin, path_and_query)``; the origin always names its port.

    Characters the url item cannot carry (spaces, non-ASCII) are
    percent-encoded; the fragment is dropped; credentials are refused
    (they would travel in clear).
    """
    if isinstance(url, bytes):
        url = url.decode("utf-8")
    slash = url.find("/", url.find("://") + 3)
    if slash > 0 and url[:slash] in _CANONICAL:
        target = url[slash:]
        # "/p?" has an empty query, which the full split drops with its "?".
        if _PLAIN_TARGET.fullmatch(target) and target.find("?") != len(target) - 1:
            return url[:slash], target
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url[:100]!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not supported")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    origin = f"{scheme}://{host}:{port}"
    if url.startswith(origin + "/") and origin not in _CANONICAL:
        if len(_CANONICAL) >= _MAX_CANONICAL:
            _CANONICAL.clear()
        _CANONICAL.add(origin)
    return origin, quote(target, safe=_URL_SAFE)
