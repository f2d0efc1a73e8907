"""The relay's wire names: headers, routes and content types, each spelled once.

Twisted's server and agent APIs take header names as bytes, the client's
caller-facing API (``RelayClient``, the sealed headers item) works in text.
Each name is written here once as bytes and derived as text, so the two forms
cannot drift apart; modules import the form they need.
"""

from __future__ import annotations

from mterelay.protocol import header as _protocol

__all__ = [
    "RELAY_HEADER", "ITEM_HEADER", "URL_TOKEN_HEADER", "FRAMING_HEADER", "FIXED_PATH_HEADER",
    "RESPONSE_HEADERS_CONTROL", "REACHED_HEADER", "OUTBOUND_TOKEN_HEADER", "PEER_HEADER",
    "ENCODE_TYPE_HEADER", "ENCODE_HEADERS_HEADER", "ENCODE_URL_HEADER", "PROTOCOL_PREFIX",
    "CONTENT_TYPE", "SEALED_CONTENT_TYPE", "RELAY_PATH", "PAIR_PATH", "ECHO_PATH", "FIXED_PATH", "text",
]

#: The clear protocol header (client id, pair id, mode, flags, seq; spec 5).
RELAY_HEADER = b"x-mte-relay"
#: The sealed headers item (spec 6.3).
ITEM_HEADER = b"x-mte-relay-eh"
#: The sealed url token on the fixed path (spec 5.2).
URL_TOKEN_HEADER = _protocol.URL_HEADER.encode("ascii")
#: The framing announcement of a relay's HEAD answer (spec 5.1).
FRAMING_HEADER = _protocol.FRAMING_HEADER.encode("ascii")
#: The fixed-path announcement of a relay's HEAD answer (spec 5.2).
FIXED_PATH_HEADER = _protocol.FIXED_PATH_HEADER.encode("ascii")
#: Which response headers the client wants sealed (spec 8.3); a sealed control, not a header.
RESPONSE_HEADERS_CONTROL = b"x-mte-response-headers"
#: Whether a refused request reached the UPSTREAM API (spec 10.1).
REACHED_HEADER = b"x-mte-upstream-reached"
#: The outbound role's entry headers: the application's token and the remote relay it names.
OUTBOUND_TOKEN_HEADER = b"x-mte-outbound-token"
PEER_HEADER = b"x-mte-upstream"
ENCODE_TYPE_HEADER = b"x-mte-encode-type"
ENCODE_HEADERS_HEADER = b"x-mte-encode-headers"
ENCODE_URL_HEADER = b"x-mte-encode-url"
#: The protocol's header namespace: never forwarded from, nor to, the caller.
PROTOCOL_PREFIX = b"x-mte-"

CONTENT_TYPE = b"content-type"
#: The clear Content-Type of every sealed body.
SEALED_CONTENT_TYPE = b"application/octet-stream"

RELAY_PATH = b"/api/mte-relay"
PAIR_PATH = b"/api/mte-pair"
ECHO_PATH = b"/api/mte-echo"
#: The fixed path of sealed-url requests (spec 5.2).
FIXED_PATH = _protocol.FIXED_PATH.encode("ascii")


def text(name: bytes) -> str:
    """The text form of one of the names above (they are all ASCII)."""
    return name.decode("ascii")
