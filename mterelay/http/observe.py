"""What the relay's parts report as they work, and a reporter that keeps nothing.

The routes (web/), the relay client (client/), the upstream forwarder and the
store wrapper report timings and counts through the methods of
:class:`Metrics`.  The service layer passes its Prometheus-backed
``mterelay.service.metrics.RelayMetrics``; a part built without one (a
library user's ``RelayClient``, a unit test) gets :data:`NO_METRICS`, so no
caller ever asks whether there is something to report to.  Defined here,
below every layer that reports, so none of them imports the service layer.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Metrics", "NO_METRICS", "NoMetrics"]


class Metrics(Protocol):
    """The reporting side of ``RelayMetrics`` (which satisfies this structurally)."""

    def request_started(self) -> None: ...

    def request_finished(self, role: str, status: int, seconds: float) -> None: ...

    def observe_upstream(self, role: str, seconds: float) -> None: ...

    def observe_outbound(self, seconds: float) -> None: ...

    def observe_crypto(self, kind: str, seconds: float) -> None: ...

    def pair_created(self, role: str, n: int = 1) -> None: ...

    def relay_error(self, code: int, reason: str) -> None: ...

    def observe_store(self, op: str, seconds: float, failed: bool = False) -> None: ...

    def connection_cut(self, reason: str) -> None: ...

    def set_open_connections(self, count: int) -> None: ...


class NoMetrics:
    """Accepts every report and keeps none (the null object for :class:`Metrics`)."""

    __slots__ = ()

    def request_started(self) -> None:
        pass

    def request_finished(self, role: str, status: int, seconds: float) -> None:
        pass

    def observe_upstream(self, role: str, seconds: float) -> None:
        pass

    def observe_outbound(self, seconds: float) -> None:
        pass

    def observe_crypto(self, kind: str, seconds: float) -> None:
        pass

    def pair_created(self, role: str, n: int = 1) -> None:
        pass

    def relay_error(self, code: int, reason: str) -> None:
        pass

    def observe_store(self, op: str, seconds: float, failed: bool = False) -> None:
        pass

    def connection_cut(self, reason: str) -> None:
        pass

    def set_open_connections(self, count: int) -> None:
        pass


#: The one shared instance (it has no state).
NO_METRICS: Metrics = NoMetrics()
