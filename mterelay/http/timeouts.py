"""The one timeout of the relay's outgoing requests: cancel, then say why.

``Deferred.addTimeout`` lets whatever the cancelled operation fails with
(``ConnectingCancelledError``, ``ResponseNeverReceived``, ...) through; callers
would then tell a timeout from a failure by its type.  Here a fired timer turns
any failure into the caller's own timeout error, so one cause gives one error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

__all__ = ["with_timeout"]


def with_timeout(d: "Deferred[Any]", seconds: float, clock: IReactorTime,
                 expired: Callable[[], BaseException]) -> "Deferred[Any]":
    """Cancel ``d`` after ``seconds``; it then fails with ``expired()``."""
    fired: list[bool] = []

    def expire() -> None:
        fired.append(True)
        d.cancel()

    timer = clock.callLater(seconds, expire)

    def settle(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if fired and isinstance(result, Failure):
            raise expired()
        return result

    return d.addBoth(settle)
