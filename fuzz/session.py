"""A blocking protocol client for the harness, built on the product's pure protocol code.

Valid requests are built with :mod:`mterelay.protocol` and
:func:`mterelay.client.messages.seal_request` (exactly what the real clients
send), so mutations of them get past the outer checks and reach the deep
ones.  :class:`SealedRequest` keeps every part separately (header, token,
target, body) for the mutators; :meth:`SealedRequest.raw` assembles them.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field

from mterelay.client.messages import SealOptions, open_response, seal_request
from mterelay.protocol.clientid import new_client_id
from mterelay.protocol.errors import RelayError
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import PendingPairing, new_pair_id, start_pairing

from fuzz import wire


class HarnessError(RuntimeError):
    """The harness itself could not do something it needs (pairing failed, …)."""


def client_id_for(secret: str) -> str:
    """A signed client id, minted with the relay's own secret (the harness is its operator)."""
    return new_client_id(secret.encode("utf-8"))


def fetch_client_id(port: int) -> str:
    reply = wire.exchange(port, wire.request_bytes("HEAD", "/api/mte-relay", []), method="HEAD")
    value = reply.header("x-mte-relay")
    if reply.status != 200 or not value:
        raise HarnessError(f"HEAD /api/mte-relay on {port}: {reply.label}")
    return value


def pair_body(pendings: list[PendingPairing]) -> bytes:
    return json.dumps([p.request_entry() for p in pendings]).encode()


def pair(port: int, client_id: str, pendings: list[PendingPairing],
         source: str | None = None) -> tuple[wire.Reply, list[PairKeys]]:
    """POST /api/mte-pair; returns the reply and the keys (empty unless 200)."""
    raw = wire.request_bytes("POST", "/api/mte-pair",
                             [("x-mte-relay", client_id), ("content-type", "application/json")],
                             pair_body(pendings))
    reply = wire.exchange(port, raw, source=source, timeout=30)
    if reply.status != 200:
        return reply, []
    entries = json.loads(reply.body)
    return reply, [p.finish(e) for p, e in zip(pendings, entries)]


@dataclass
class SealedRequest:
    """One sealed request, in parts."""

    keys: PairKeys
    header: object  # RelayHeader
    cipher: object  # MessageCipher
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    case: str

    def raw(self) -> bytes:
        return wire.request_bytes(self.method, self.target, self.headers, self.body)

    def open(self, reply: wire.Reply) -> tuple[list[tuple[str, str]], bytes]:
        """Decrypt an answer to this request (raises RelayError 562 when it does not open)."""
        opened = open_response(self.keys, self.header, reply.status, reply.headers)  # type: ignore[arg-type]
        body = opened.cipher.open_body(reply.body) if opened.body_enc else b""
        return opened.headers, body


@dataclass
class Client:
    """A client id and a pool of pairs, with one seq counter per pair."""

    client_id: str
    pairs: list[PairKeys]
    _counters: dict[str, "itertools.count[int]"] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def paired(cls, port: int, secret: str, count: int, source: str | None = None) -> "Client":
        client_id = client_id_for(secret)
        pendings = [start_pairing(client_id[:36]) for _ in range(count)]
        reply, keys = pair(port, client_id, pendings, source)
        if not keys:
            raise HarnessError(f"pairing on {port} failed: {reply.label} {reply.body[:200]!r}")
        return cls(client_id, keys)

    def next_seq(self, pair_id: str) -> int:
        with self._lock:
            counter = self._counters.setdefault(pair_id, itertools.count())
            return next(counter)

    def seal(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None,
             *, case: str, pair_index: int = 0, seq: int | None = None,
             options: SealOptions | None = None) -> SealedRequest:
        keys = self.pairs[pair_index % len(self.pairs)]
        if seq is None:
            seq = self.next_seq(keys.pair_id)
        has_body = body is not None
        out = seal_request(keys, self.client_id, seq, method, target, headers,
                           has_body=has_body, options=options or SealOptions())
        sealed = out.cipher.seal_body(body) if has_body else b""
        return SealedRequest(keys, out.header, out.cipher, method, out.target,
                             list(out.headers) + [("x-fuzz-case", case)], sealed, case)


def opens(request: SealedRequest, reply: wire.Reply) -> bool:
    """True when the answer decrypts as an authentic answer to ``request``."""
    try:
        request.open(reply)
        return True
    except (RelayError, ValueError):
        return False


__all__ = ["Client", "SealedRequest", "HarnessError", "client_id_for", "fetch_client_id",
           "pair", "pair_body", "opens", "new_pair_id", "start_pairing"]
