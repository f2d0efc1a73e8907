"""Parsing of ``REDIS_URL`` (``redis://``, ``rediss://`` and their ``+cluster`` forms).

Kept apart from the store so configuration validation can use it without
importing any Twisted networking code.

Accepted form::

    redis[s]://[[username]:password@]host[:port][/db]
        [?db=N&ssl_ca_certs=PATH&ssl_cert_reqs=required|none]
    redis[s]+cluster://[[username]:password@]host[:port]
        [?ssl_ca_certs=PATH&ssl_cert_reqs=required|none]

``+cluster`` speaks the Redis Cluster protocol (ElastiCache with cluster
mode enabled, ElastiCache Serverless): ``host`` is a seed (the
configuration endpoint) from which the slot map is read; a cluster has only
database 0, so another one is refused.

User name and password are percent-decoded; a user name without a
password is not sent (Redis AUTH needs a password).  Error messages never repeat
the URL, because it may hold the password.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import attr

__all__ = ["RedisAddress", "parse_redis_url"]

_DEFAULT_PORT = 6379
_TLS_PARAMS = ("ssl_ca_certs", "ssl_cert_reqs")


@attr.s(frozen=True, slots=True, kw_only=True)
class RedisAddress:
    """Where and how to connect to Redis; the password is kept out of repr."""

    host: str = attr.ib()
    port: int = attr.ib(default=_DEFAULT_PORT)
    tls: bool = attr.ib(default=False)
    db: int | None = attr.ib(default=None)
    username: str | None = attr.ib(default=None)
    password: str | None = attr.ib(default=None, repr=False)
    #: PEM file of trusted CAs for rediss://; None = the platform's trust
    ca_certs: str | None = attr.ib(default=None)
    #: False only with ssl_cert_reqs=none (no certificate check at all)
    verify: bool = attr.ib(default=True)
    #: redis+cluster:// or rediss+cluster://: route by slot (store.cluster)
    cluster: bool = attr.ib(default=False)

    def at(self, host: str, port: int) -> "RedisAddress":
        """The same credentials and TLS settings for another node of a cluster."""
        return attr.evolve(self, host=host, port=port)

    def redacted(self) -> str:
        """The URL with the password masked, for logs and error messages."""
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        auth = ""
        if self.username is not None or self.password is not None:
            auth = (self.username or "") + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        db = f"/{self.db}" if self.db is not None else ""
        return f"{scheme}://{auth}{host}:{self.port}{db}"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse a Redis URL; raise ValueError naming what is wrong."""
    if not isinstance(url, str):
        raise ValueError("the Redis URL must be a string")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("the Redis URL is malformed (bad port or brackets)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise ValueError("the Redis URL must start with redis:// or rediss:// "
                         "(redis+cluster:// or rediss+cluster:// for a Redis Cluster)")
    if not parts.hostname:
        raise ValueError("the Redis URL has no host")
    if parts.fragment:
        raise ValueError("the Redis URL must not have a #fragment")
    cluster = scheme.endswith("+cluster")
    tls = scheme.startswith("rediss")

    db = None
    path = parts.path.strip("/")
    if path:
        db = _parse_db(path)

    ca_certs = None
    verify = True
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name == "db":
            if db is not None:
                raise ValueError("the Redis URL gives the database twice")
            db = _parse_db(value)
        elif name in _TLS_PARAMS and not tls:
            raise ValueError(f"the Redis URL parameter {name} needs rediss://")
        elif name == "ssl_ca_certs":
            if not value:
                raise ValueError("the Redis URL parameter ssl_ca_certs is empty")
            ca_certs = value
        elif name == "ssl_cert_reqs":
            if value.lower() not in ("required", "none"):
                raise ValueError("the Redis URL parameter ssl_cert_reqs must be required or none")
            verify = value.lower() == "required"
        else:
            raise ValueError(f"the Redis URL has an unknown parameter {name!r}")

    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        password = None
    if cluster and db:
        raise ValueError("the Redis URL gives a database, but a Redis Cluster has only "
                         "database 0")
    return RedisAddress(
        host=parts.hostname, port=port or _DEFAULT_PORT, tls=tls,
        db=None if cluster else db, username=username, password=password,
        ca_certs=ca_certs, verify=verify, cluster=cluster)


def _parse_db(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise ValueError("the Redis URL database must be a number like /0")
    return int(text)
