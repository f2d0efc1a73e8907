"""TCP_NODELAY on every connection the relay makes or accepts.

Twisted leaves Nagle's algorithm on.  An HTTP client writes a request's
headers and its body in separate writes, and a server may write the headers
and the last chunk separately; with Nagle on, the second small segment waits
for the ACK of the first, which the peer delays by up to 40 ms.  A proxy
makes that wait on every hop of every request, so the relay turns Nagle off
on each connection: its listeners' and its agents' (upstream, remote relay).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (HostnameEndpoint, TCP4ClientEndpoint,
                                        TCP6ClientEndpoint, wrapClientTLS)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer


def set_no_delay(transport: Any) -> None:
    """Turn Nagle off on ``transport`` or the TCP transport it wraps (TLS)."""
    for _ in range(4):
        if transport is None:
            return
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:  # not a TCP socket after all (UNIX socket)
                pass
            return
        transport = getattr(transport, "transport", None)


@implementer(IStreamClientEndpoint)
class NoDelayEndpoint:
    """Connects through ``inner``, then turns Nagle off on the new connection."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self.inner = inner

    def connect(self, factory: Any) -> Deferred[Any]:
        def connected(protocol: Any) -> Any:
            set_no_delay(getattr(protocol, "transport", None))
            return protocol

        return self.inner.connect(factory).addCallback(connected)


@implementer(IAgentEndpointFactory)
class NoDelayEndpointFactory:
    """Twisted's standard endpoints for http/https URLs, with TCP_NODELAY."""

    def __init__(self, reactor: Any, connect_timeout: float,
                 tls_policy: IPolicyForHTTPS | None = None) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:  # noqa: N802 (interface)
        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        endpoint: IStreamClientEndpoint
        # An IP address needs no lookup: HostnameEndpoint would still send
        # it through a thread-pool getaddrinfo for every new connection.
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port,
                                          timeout=self.connect_timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port,
                                          timeout=self.connect_timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port,
                                        timeout=self.connect_timeout)
        if uri.scheme == b"https":
            creator = self.tls_policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        elif uri.scheme != b"http":
            raise ValueError(f"unsupported scheme {uri.scheme!r}")
        return NoDelayEndpoint(endpoint)
