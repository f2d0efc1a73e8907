"""The pair store contract shared by the memory and the Redis stores.

A pair store keeps, per (client id, pair id), the opaque pair secrets the
protocol core produced at pairing time, and the decoding side's anti-replay
window.  The relay only ever talks to ``IPairStore``, so the embedded default
(memory) and the shared one (Redis) are interchangeable; one conformance
suite (tests/integration/test_store_conformance.py) holds both to the same behaviour.
"""

from __future__ import annotations

import hashlib
import re

import attr
from zope.interface import Attribute, Interface

from mterelay.protocol.replay import DEFAULT_WIDTH, Verdict, validate_width

__all__ = [
    "IPairStore",
    "PairExists",
    "StoreLimits",
    "StoreUnavailable",
    "Verdict",
    "pair_generation",
    "validate_generation",
    "validate_ids",
]

#: Domain separation for :func:`pair_generation` (never used as a key).
_GENERATION_LABEL = b"mterelay pair generation v1\x00"


class StoreUnavailable(Exception):
    """The backend cannot answer now (down, unreachable, timing out, loading).

    Raised fast instead of queueing, so the relay can answer 503 and the
    client can retry; the store keeps reconnecting by itself.  An ``accept``
    that failed this way may or may not have consumed its sequence number:
    a retry must be re-sealed with a fresh one.
    """


class PairExists(Exception):
    """``create`` refused: that (client id, pair id) is already a pair.

    Pair ids are never replaced: whoever sees a client id and a pair id on
    the wire (both travel in clear) must not be able to swap the keys of
    someone else's pair or reset its replay window.  The existing pair is
    left exactly as it was.
    """


def pair_generation(secrets: bytes) -> str:
    """The generation of a pair: a fingerprint of the secrets ``create`` stored.

    Why: an id can be paired again once its pair is gone (expired, deleted,
    Redis flushed or restarted), and a replica may still cache the old keys.
    Binding the generation to the secrets themselves lets ``accept`` tell
    "this request opened under the pair's *current* keys" from "it opened
    under keys this id had before", whoever holds which cache.  It is a
    one-way function of 256-bit random keys, so storing it in clear reveals
    nothing about them; 128 bits make two pairings' generations collide
    with negligible probability.  32 lowercase hex digits.
    """
    if not isinstance(secrets, (bytes, bytearray, memoryview)):
        raise ValueError("pair secrets must be bytes")
    return hashlib.sha256(_GENERATION_LABEL + bytes(secrets)).hexdigest()[:32]


def validate_generation(generation: str) -> str:
    """Return ``generation`` if it has :func:`pair_generation`'s shape, else ValueError."""
    if not isinstance(generation, str) or not _GENERATION.fullmatch(generation):
        raise ValueError("invalid pair generation")
    return generation


class IPairStore(Interface):
    """Pair secrets plus an atomic anti-replay window; all methods -> Deferred.

    Pairs expire after ``limits.idle_ttl`` seconds without an accepted
    message, ``limits.max_age`` seconds after creation, or after
    ``limits.max_messages`` accepted messages.
    """

    limits = Attribute("The StoreLimits this store enforces.")

    def start():
        """Start connecting; fires None when usable.

        May fail with StoreUnavailable if the backend is not reachable in
        time; the store keeps trying in the background until ``stop()``.
        """

    def stop():
        """Release connections and timers; fires None when done."""

    def ping():
        """Fire True when the backend answers, False otherwise (readiness)."""

    def create(client_id, pair_id, secrets):
        """Store ``secrets`` (bytes) for a new pair, if and only if the id is free.

        Atomic create-if-absent: fails with :class:`PairExists` (the existing
        pair untouched) while (client id, pair id) holds a pair, i.e. from
        its creation until it is removed (idle expiry, exhaustion by
        ``accept``, ``delete``, or loss of the store's data).  The new pair
        has a fresh window, message count, age and the generation
        ``pair_generation(secrets)``.
        """

    def get(client_id, pair_id):
        """Fire the pair's secrets, or None if unknown, expired or aged out.

        Does not refresh the idle timer: only accepted messages keep a pair
        alive.
        """

    def accept(client_id, pair_id, seq, generation):
        """Atomically check-and-record ``seq``; fire a Verdict.

        ``generation`` is ``pair_generation`` of the secrets the caller
        opened the message with.  The check runs first: a pair of another
        generation answers STALE and nothing changes (no seq recorded, no
        deletion), so a message sealed under keys this id had before cannot
        consume, reset or remove the current pair.  Then ACCEPTED (recorded,
        idle timer refreshed), REPLAYED, TOO_OLD, UNKNOWN (no such pair) or
        EXHAUSTED (max age or max messages reached; the pair is deleted).
        Safe under any number of concurrent callers, across processes for
        shared stores.
        """

    def delete(client_id, pair_id, generation=None):
        """Forget the pair (no error if unknown); fire None.

        With ``generation``, only a pair of that generation is removed, so a
        caller undoing its own ``create`` can never remove a pair someone
        else made under the same id since.
        """


@attr.s(frozen=True, slots=True, kw_only=True)
class StoreLimits:
    """Lifetimes of a pair; defaults are the brief's (30 min idle, 1 day)."""

    idle_ttl: float = attr.ib(default=1800.0, converter=float)
    max_age: float = attr.ib(default=86400.0, converter=float)
    max_messages: int = attr.ib(default=1_000_000)
    window: int = attr.ib(default=DEFAULT_WIDTH)

    @idle_ttl.validator
    def _check_idle_ttl(self, attribute: attr.Attribute, value: float) -> None:
        # Redis PEXPIRE works in whole milliseconds; below 1 ms means "never".
        if not 0.001 <= value <= 10 * 365 * 86400:
            raise ValueError(f"idle_ttl must be 0.001..315360000 s, not {value}")

    @max_age.validator
    def _check_max_age(self, attribute: attr.Attribute, value: float) -> None:
        if not 0.001 <= value <= 10 * 365 * 86400:
            raise ValueError(f"max_age must be 0.001..315360000 s, not {value}")

    @max_messages.validator
    def _check_max_messages(self, attribute: attr.Attribute, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"max_messages must be an integer, not {value!r}")
        if not 1 <= value <= 2**53 - 1:
            raise ValueError(f"max_messages must be 1..2**53-1, not {value}")

    @window.validator
    def _check_window(self, attribute: attr.Attribute, value: int) -> None:
        validate_width(value)


# Ids end up inside Redis key names separated by ':'; anything outside this
# set could make two different (client, pair) tuples share a key.  The relay
# validates the real formats (uuid.hmac, base64url); this is defence in depth.
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_GENERATION = re.compile(r"[0-9a-f]{32}")


def validate_ids(client_id: str, pair_id: str) -> None:
    """Raise ValueError unless both ids are safe to use in a key name."""
    for name, value in (("client id", client_id), ("pair id", pair_id)):
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise ValueError(f"invalid {name} for the pair store")
