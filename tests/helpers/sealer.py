"""A minimal spec-following client over a :class:`~tests.helpers.support.MemoryRelay`.

Written against the protocol core directly (not ``mterelay.client``), so the
tests that use it check the relay against the spec, not against our own client.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from mterelay.protocol.header import RelayHeader
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import start_pairing
from mterelay.protocol.sealing import Direction, MessageCipher
from tests.helpers.support import MemoryRelay, json_of

__all__ = ["Sealer", "Sent", "header_value"]


def header_value(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode("latin-1") if values else None


@attrs.define
class Sent:
    header: RelayHeader
    response: Any
    body: bytes
    wire: dict[str, Any]


class Sealer:
    """A minimal spec-following client over a MemoryRelay."""

    def __init__(self, relay: MemoryRelay) -> None:
        self.relay = relay
        response, _ = relay.call("HEAD", "/api/mte-relay")
        assert response.code == 200, response.code
        self.client_id = header_value(response, "x-mte-relay")
        self.keys: list[PairKeys] = []
        self.seq = 0

    def pair(self, count: int = 1) -> list[PairKeys]:
        pending = [start_pairing(self.client_id[:36]) for _ in range(count)]
        response, body = self.relay.call(
            "POST", "/api/mte-pair",
            headers={"x-mte-relay": [self.client_id], "content-type": ["application/json"]},
            data=json.dumps([p.request_entry() for p in pending]).encode())
        assert response.code == 200, body
        keys = [p.finish(entry) for p, entry in zip(pending, json_of(body))]
        self.keys.extend(keys)
        return keys

    def wire(self, method: str, target: str, headers: dict[str, list[str]] | None = None,
             body: bytes | None = None, *, mode: str = "MKE", url_enc: bool = True,
             headers_enc: bool = True, streaming: bool = True, seq: int | None = None,
             keys: PairKeys | None = None, clear: dict[str, list[str]] | None = None
             ) -> tuple[RelayHeader, str, dict[str, list[str]], bytes | None]:
        keys = keys or self.keys[-1]
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        header = RelayHeader(self.client_id, keys.pair_id, mode, url_enc, headers_enc,
                             body is not None, streaming, seq)
        cipher = MessageCipher(keys, header, Direction.C2S)
        wire_target = "/" + cipher.seal_url(target) if url_enc else target
        item = cipher.seal_request_headers(headers or {}, method, wire_target,
                                           has_body=body is not None)
        wire_headers = {"x-mte-relay": [header.format()], "x-mte-relay-eh": [item]}
        wire_headers.update(clear or {})
        sealed = None
        if body is not None:
            sealed = cipher.seal_body(body)
            wire_headers["content-type"] = ["application/octet-stream"]
        return header, wire_target, wire_headers, sealed

    def send(self, method: str, target: str, headers: dict[str, list[str]] | None = None,
             body: bytes | None = None, **options: Any) -> Sent:
        header, wire_target, wire_headers, sealed = self.wire(method, target, headers, body,
                                                              **options)
        return self.post_wire(method, header, wire_target, wire_headers, sealed)

    def post_wire(self, method: str, header: RelayHeader, target: str,
                  headers: dict[str, list[str]], body: bytes | None) -> Sent:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["data"] = body
        response, raw = self.relay.call(method, target, **kwargs)
        return Sent(header, response, raw, {"target": target, "headers": headers, "body": body})

    @staticmethod
    def open(sent: Sent, keys: PairKeys) -> tuple[dict[str, list[str]], bytes | None]:
        received = RelayHeader.parse(header_value(sent.response, "x-mte-relay"))
        expected = sent.header.for_response(mode=received.mode, body_enc=received.body_enc)
        assert received == expected, (received, expected)
        cipher = MessageCipher(keys, expected, Direction.S2C)
        headers = cipher.open_response_headers(header_value(sent.response, "x-mte-relay-eh"),
                                               sent.response.code)
        body = cipher.open_body(sent.body) if received.body_enc else None
        return headers, body
