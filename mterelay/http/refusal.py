"""The one exception for "this request is refused" outside the protocol's 55x codes.

Raised where the problem is found (a bad header, a route not allowed, an
oversize body), caught once where the answer is written, so every refusal is
a status, a message and a reason - the same JSON answer whichever role refused.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Refused"]


class Refused(Exception):
    """A refused request: HTTP ``status``, short ``message``, ``reason``, extra JSON fields."""

    def __init__(self, status: int, message: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.message, self.reason, self.extra = status, message, reason, extra
