"""Client-side failures that are not relay status codes.

Relay verdicts are the typed 55x errors of :mod:`mterelay.protocol.errors`;
these two cover a peer that is not (or not yet) usable as a relay.
"""

from __future__ import annotations

from mterelay.protocol.retry import retry_after_seconds

__all__ = ["NotARelay", "PairingFailed", "retry_after_seconds"]


class NotARelay(Exception):
    """The origin did not answer ``HEAD /api/mte-relay`` with a client id."""


class PairingFailed(Exception):
    """``POST /api/mte-pair`` was refused with a non-55x status (400, 429, 503, ...).

    ``retry_after`` (seconds) is set for a 429: the pool makes no pairing
    with that relay before it has passed (spec section 2).
    """

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"pairing refused with {status}" + (f": {reason}" if reason else ""))
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
