"""Which address a request comes from, for limits keyed on the source.

The TCP peer is the only address nobody can forge, so it is the answer
unless the peer is a proxy the operator trusts (``TRUSTED_PROXIES``).  Then
``X-Forwarded-For`` is read *from the right*: every proxy appends the address
it received the request from, so the rightmost entry that is not itself a
trusted proxy is the first hop nobody trusted, i.e. the client.  Entries left
of it were written by that client and are ignored: a client can prepend
anything, but it cannot change what our own proxy appended after it.

Pure functions on strings and ``ipaddress`` values: no reactor, no request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: IPv6 sources are keyed by their /64: one host usually holds a whole /64,
#: so keying by the full address would give it 2**64 fresh buckets.
IPV6_KEY_PREFIX = 64
#: At most this many X-Forwarded-For entries are looked at (from the right).
MAX_FORWARDED_HOPS = 32


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it: bare, ``[v6]:port`` or ``v4:port``; None if not one."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port (a bare IPv6 address has several colons)
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def forwarded_entries(values: Iterable[bytes]) -> list[str]:
    """The comma-separated entries of every X-Forwarded-For header, in order."""
    entries: list[str] = []
    for value in values:
        entries.extend(part.strip() for part in value.decode("latin-1").split(","))
    return entries


def source_address(peer: str | None, forwarded_for: Iterable[bytes] | None,
                   trusted: Sequence[IPNetwork]) -> str:
    """The client's address as a string (``"unknown"`` when the peer has none, e.g. a unix socket).

    Only when the peer is a trusted proxy is ``X-Forwarded-For`` read; a
    malformed or missing entry stops the walk at the last address a trusted
    proxy vouched for, so garbage never becomes a fresh key of its own.
    """
    current = parse_address(peer) if peer else None
    if current is None:
        return peer or "unknown"
    if not trusted or not forwarded_for or not is_trusted(current, trusted):
        return str(current)
    entries = forwarded_entries(forwarded_for)
    for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
        hop = parse_address(entry)
        if hop is None:
            break
        current = hop
        if not is_trusted(hop, trusted):
            break
    return str(current)


def bucket_key(address: str) -> str:
    """The key a source is limited under: the IPv4 address, or the IPv6 /64."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((parsed, IPV6_KEY_PREFIX), strict=False)
        return str(network)
    return str(parsed) if parsed is not None else address
