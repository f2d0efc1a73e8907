"""Per-request crypto timers for the encode/decode metrics.

A request's sealing or opening is spread over several calls (headers item,
url, every body chunk) and, when bodies stream, over several reactor turns.
The dashboards want one figure per request, so a :class:`Stopwatch` adds the
pieces up and reports the total once, when the last piece is done.
``perf_counter`` rather than the reactor's clock: the pieces are microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from mterelay.http.observe import Metrics

T = TypeVar("T")


class Stopwatch:
    """Sums the time spent in :meth:`time` calls; :meth:`report` hands it on once."""

    __slots__ = ("total", "_observe")

    def __init__(self, observe: Callable[[float], None] | None) -> None:
        self.total = 0.0
        self._observe = observe

    def time(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        started = perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.total += perf_counter() - started

    def report(self) -> None:
        """Observe the total (only if something was timed); later calls do nothing."""
        observe, self._observe = self._observe, None
        if observe is not None and self.total:
            observe(self.total)


def crypto_stopwatch(metrics: Metrics, kind: str) -> Stopwatch:
    """A stopwatch reporting into ``metrics.observe_crypto(kind, ...)``."""
    return Stopwatch(lambda seconds: metrics.observe_crypto(kind, seconds))
