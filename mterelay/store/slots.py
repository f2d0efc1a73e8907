"""Redis Cluster addressing, pure and reactor-free: key slots, slot maps, redirects.

The cluster store (``mterelay.store.cluster``) routes every command by the
slot of its one key.  What that takes is kept here, apart from any I/O, so
the byte-level rules are tested on their own:

* ``key_slot``: CRC16 (XMODEM) of the key, or of its hash tag (the part
  between the first ``{`` and the next ``}``, when not empty), mod 16384 —
  the cluster specification's algorithm, so every key of one pair, which
  shares one tag, lives on one slot;
* ``parse_cluster_slots``: the reply of ``CLUSTER SLOTS`` as a list of
  (first slot, last slot, master node);
* ``parse_redirect``: ``MOVED`` and ``ASK`` error replies.
"""

from __future__ import annotations

import attr

__all__ = ["SLOTS", "Node", "Redirect", "SlotRange", "crc16", "key_slot",
           "parse_cluster_slots", "parse_redirect"]

#: Number of hash slots in every Redis Cluster.
SLOTS = 16384


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM: poly 0x1021, init 0), the cluster's key hash."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: bytes) -> int:
    """The hash slot of ``key``, honouring a non-empty ``{hash tag}``."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key) % SLOTS


@attr.s(frozen=True, slots=True)
class Node:
    """A cluster node as a client reaches it (host as the cluster announces it)."""

    host: str = attr.ib()
    port: int = attr.ib()

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attr.s(frozen=True, slots=True)
class SlotRange:
    first: int = attr.ib()
    last: int = attr.ib()
    master: Node = attr.ib()
    #: connected in advance, never used for commands: a promoted one is ready at once
    replicas: tuple[Node, ...] = attr.ib(default=())


@attr.s(frozen=True, slots=True)
class Redirect:
    """A ``MOVED`` (the slot lives elsewhere now) or ``ASK`` (this once) reply."""

    kind: str = attr.ib()  # "MOVED" or "ASK"
    slot: int = attr.ib()
    node: Node = attr.ib()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string in the slot map, got {type(value).__name__}")


def _endpoint(entry: object, asked: str) -> Node:
    """One node entry of CLUSTER SLOTS: [ip, port, id, {metadata}]."""
    if not isinstance(entry, list) or len(entry) < 2 or not isinstance(entry[1], int):
        raise ValueError("malformed node in the CLUSTER SLOTS reply")
    host = _text(entry[0])
    # Redis 7 may add metadata pairs, e.g. ["hostname", "node-1.example"]:
    # a TLS certificate names the host, not its address.
    if len(entry) >= 4 and isinstance(entry[3], list):
        meta = entry[3]
        for name, value in zip(meta[::2], meta[1::2]):
            if _text(name) == "hostname" and _text(value):
                host = _text(value)
    if host in ("", "?"):
        # "unknown endpoint": the node we asked, per the cluster spec
        host = asked
    port = entry[1]
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port {port} in the CLUSTER SLOTS reply")
    return Node(host, port)


def parse_cluster_slots(reply: object, asked: str) -> list[SlotRange]:
    """The masters of a ``CLUSTER SLOTS`` reply; ValueError when malformed.

    ``asked`` is the host of the node that answered, used where the reply
    leaves a node's endpoint unknown.  Commands go to masters only (a
    replica can lag, and the accept is a write); replicas are listed so the
    store can hold connections to them, ready for when one is promoted.
    """
    if not isinstance(reply, list):
        raise ValueError("CLUSTER SLOTS did not answer an array")
    ranges = []
    for item in reply:
        if not isinstance(item, list) or len(item) < 3 \
                or not isinstance(item[0], int) or not isinstance(item[1], int):
            raise ValueError("malformed slot range in the CLUSTER SLOTS reply")
        first, last = item[0], item[1]
        if not 0 <= first <= last < SLOTS:
            raise ValueError(f"bad slot range {first}-{last} in the CLUSTER SLOTS reply")
        replicas = tuple(_endpoint(entry, asked) for entry in item[3:])
        ranges.append(SlotRange(first, last, _endpoint(item[2], asked), replicas))
    return ranges


def parse_redirect(message: str) -> Redirect | None:
    """``MOVED 3999 127.0.0.1:6381`` / ``ASK ...`` as a Redirect; None otherwise."""
    parts = message.split(" ")
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    kind, slot_text, where = parts
    host, sep, port_text = where.rpartition(":")
    if not sep or not slot_text.isdigit() or not port_text.isdigit():
        return None
    slot, port = int(slot_text), int(port_text)
    if not 0 <= slot < SLOTS or not 1 <= port <= 65535:
        return None
    host = host.strip("[]")
    return Redirect(kind, slot, Node(host, port))
