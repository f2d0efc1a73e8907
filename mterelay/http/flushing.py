"""Flush on pause: what arrives in one reactor turn is sent on at the next one.

A record-framed body (spec 7.2) may be cut anywhere, so a sender never has
to wait for more data - but sealing every socket read or every tiny write on
its own would cost a record (20 bytes, one AES-GCM call) each.  Writes made
during one reactor turn (the pieces one socket read decodes into, a burst of
small writes) are joined and handed on together at the start of the next
turn: never later, and never waiting for data that has not arrived.

Memory is bounded by what one turn delivers; back-pressure is the caller's
(its producer is paused while its consumer is slow, so nothing new arrives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

__all__ = ["TurnCoalescer"]


class TurnCoalescer:
    """Collects writes and calls ``flush(joined)`` once, at the next reactor turn."""

    def __init__(self, clock: IReactorTime, flush: Callable[[bytes], None]) -> None:
        self._clock = clock
        self._flush = flush
        self._parts: list[bytes] = []
        self._call: Any = None

    @property
    def pending(self) -> int:
        """Bytes waiting for the next turn."""
        return sum(len(part) for part in self._parts)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._parts.append(data)
        if self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        data = self.take()
        if data:
            self._flush(data)

    def take(self) -> bytes:
        """Everything pending, now (the caller seals it itself, e.g. as the final record)."""
        self.cancel_call()
        parts, self._parts = self._parts, []
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def cancel_call(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def discard(self) -> None:
        """Drop what is pending (the body failed or was abandoned)."""
        self.cancel_call()
        self._parts = []
