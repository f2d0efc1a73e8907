"""Persistent HTTP connections for the relay's agents (upstream, remote relay, client).

Twisted's ``HTTPConnectionPool`` takes a connection back as soon as its
response has been parsed, without asking whether somebody already asked the
connection to close.  That happens whenever a body is dropped unread (the
relay's client hung up after the response headers arrived): dropping it calls
``loseConnection``, but when the rest of the body was already in the same
read, the response still completes and the pool keeps the closing
connection.  The next request written to it is flushed, then the socket
closes under it, and a POST — which is never retried — fails with
``ResponseNeverReceived(ConnectionDone)``.  :class:`RelayConnectionPool`
refuses such connections, so they are closed and never handed out again.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IAgent

from mterelay.nodelay import pooled_agent


def is_closing(connection: Any) -> bool:
    """True once ``loseConnection`` or ``abortConnection`` was called on its transport."""
    transport = getattr(connection, "transport", None)
    if transport is None:
        return True
    return bool(getattr(transport, "disconnecting", False)
                or getattr(transport, "disconnected", False)
                or getattr(transport, "_aborting", False))


class RelayConnectionPool(HTTPConnectionPool):
    """An ``HTTPConnectionPool`` that never keeps a connection that is closing."""

    def _putConnection(self, key: Any, connection: Any) -> None:  # noqa: N802 (Twisted hook)
        if is_closing(connection):
            return  # its close is under way; connectionLost forgets it
        super()._putConnection(key, connection)


def persistent_agent(reactor: Any, size: int, idle_timeout: float,
                     connect_timeout: float) -> tuple[IAgent, RelayConnectionPool]:
    """An agent keeping up to ``size`` idle connections per host, with TCP_NODELAY."""
    pool = RelayConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = size
    pool.cachedConnectionTimeout = idle_timeout
    return pooled_agent(reactor, pool, connect_timeout), pool


__all__ = ["RelayConnectionPool", "is_closing", "persistent_agent"]
