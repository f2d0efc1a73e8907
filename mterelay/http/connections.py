"""Persistent HTTP connections for the relay's agents (upstream, remote relay, client).

Every agent the relay builds is a :class:`~mterelay.http.leanclient.LeanAgent`
on a :class:`~mterelay.http.leanclient.LeanPool` (httptools/llhttp over
Twisted transports): Twisted's ``Agent`` and ``HTTPConnectionPool`` cost
about 1 ms of CPU per request, and needed two private hooks to behave.
The pool rules the relay relies on, each tested in ``tests/integration/test_leanclient.py``,
``tests/integration/test_connections.py`` and ``tests/integration/test_no_retry.py``:

* **Never reuse a closing connection.**  A body dropped unread (the relay's
  client hung up after the response headers) closes its connection even
  when the rest of the body was already in the same read; such a connection
  is never handed out again, so the next request - a POST, never resent -
  does not fail with ``ResponseNeverReceived(ConnectionDone)``.  A
  connection the server closed while idle leaves the pool when its close
  is read; one whose server said when it closes idle connections
  (``Keep-Alive: timeout=N``) is closed by us first, so no request is
  written to it just as the server closes it.
* **Never resend by itself what may have arrived.**  The protocol's rule
  (docs/protocol.md section 10) is that only what certainly did not arrive
  may be sent again: a request is resent once, on a fresh connection, only
  when it failed with ``RequestNotSent`` (not one byte was written).
* **A body's late failure stays quiet.**  When the server answered before
  the request body was fully sent and the body's producer then fails (the
  uploader went away), the connection is aborted - the server sees an
  incomplete request, never a complete truncated one - and it is logged at
  debug only.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent

from mterelay.http.leanclient import LeanAgent, LeanPool, lean_agent

#: Idle connections kept per origin.  Above the relay's concurrency every
#: extra request would open and close a connection of its own.
POOL_SIZE = 512
#: Seconds to wait for a TCP connection to UPSTREAM or a remote relay.
CONNECT_TIMEOUT = 10.0
#: Seconds an idle connection to UPSTREAM is kept (UPSTREAM_IDLE_TIMEOUT's
#: default): below nginx's default keepalive_timeout of 75 s, so the relay
#: closes first and never writes a request just as nginx closes.
UPSTREAM_IDLE_TIMEOUT = 60
#: Idle connections to a remote relay are closed by us before the load
#: balancers in front of it do (AWS ALB: 60 s), so a request is not sent on a
#: connection the other side is closing (not retried for POST: a 502).
PEER_IDLE_TIMEOUT = 50


def persistent_agent(reactor: Any, size: int, idle_timeout: float,
                     connect_timeout: float) -> tuple[LeanAgent, LeanPool]:
    """An agent keeping up to ``size`` idle connections per origin, with TCP_NODELAY.

    https origins get TLS with certificate and host name checks (the
    endpoint factory's ``BrowserLikePolicyForHTTPS``).  The pool is returned
    too: whoever builds an agent closes its pool when stopping.
    """
    return lean_agent(reactor, size, idle_timeout, connect_timeout)


def upstream_agent(reactor: Any, pool_size: int = POOL_SIZE,
                   connect_timeout: float = CONNECT_TIMEOUT,
                   idle_timeout: float = UPSTREAM_IDLE_TIMEOUT) -> LeanAgent:
    """Persistent connections to UPSTREAM, reused across requests (its pool: ``.pool``)."""
    agent, _ = persistent_agent(reactor, pool_size, idle_timeout, connect_timeout)
    return agent


def peer_agent(reactor: Any, pool_size: int = POOL_SIZE,
               connect_timeout: float = CONNECT_TIMEOUT) -> LeanAgent:
    """Persistent connections to remote relays; a bare agent: no cookies, no redirects."""
    agent, _ = persistent_agent(reactor, pool_size, PEER_IDLE_TIMEOUT, connect_timeout)
    return agent


def agent_pool(agent: IAgent) -> LeanPool | None:
    """The pool of an agent built here (None for any other agent, e.g. a test's)."""
    pool = getattr(agent, "pool", None)
    return pool if isinstance(pool, LeanPool) else None


__all__ = ["LeanAgent", "LeanPool", "agent_pool", "peer_agent", "persistent_agent",
           "upstream_agent", "POOL_SIZE", "CONNECT_TIMEOUT", "PEER_IDLE_TIMEOUT",
           "UPSTREAM_IDLE_TIMEOUT"]
