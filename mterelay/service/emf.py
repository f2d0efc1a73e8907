"""CloudWatch Embedded Metric Format: one JSON line per interval, for ``METRICS_FORMAT=emf``.

Where no Prometheus scrapes the relay (Lambda, ECS/EKS shipping stdout to
CloudWatch Logs through the CloudWatch agent or a log router), the same
numbers reach CloudWatch as EMF log lines: CloudWatch Logs turns the members
named in ``_aws.CloudWatchMetrics`` into metrics, no API calls or credentials
in the relay.

Two parts, as everywhere in mterelay:

* ``emf_document`` is pure: two ``Snapshot``s of ``RelayMetrics`` in, one EMF
  document (a dict) out, with the interval's counts (deltas) and average
  times.  Times are averaged over the interval, not percentiles: a histogram
  cannot be re-expanded into the raw values EMF would need for those.
* ``EmfReporter`` is the I/O: a Twisted service writing one line every
  ``interval`` seconds (``task.LoopingCall`` on the clock it is given), plus
  a last line on ``stopService`` so the final partial interval is not lost.

Document shape (CloudWatch EMF specification): a root object whose ``_aws``
member holds ``Timestamp`` (integer milliseconds since the epoch) and
``CloudWatchMetrics``, a list of directives ``{Namespace, Dimensions: [[dimension
names]], Metrics: [{Name, Unit}]}``; every dimension named is a root member
with a string value, every metric named a root member with a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import IO, Any, Callable

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mterelay.service.metrics import RelayMetrics, Snapshot

__all__ = [
    "METRIC_UNITS",
    "NAMESPACE",
    "SERVICE",
    "EmfReporter",
    "emf_dimensions",
    "emf_document",
    "emf_line",
    "line_writer",
]

log = Logger(namespace="mterelay.emf")

NAMESPACE = "MTERelay"
SERVICE = "mterelay"

# (EMF metric name, snapshot sample name prefix): averages in milliseconds
# over the interval, left out when nothing was observed in it.
_AVERAGES = (
    ("RequestTime", "mterelay_request_seconds"),
    ("OutboundProxyTime", "mterelay_outbound_proxy_seconds"),
    ("UpstreamProxyTime", "mterelay_upstream_proxy_seconds"),
    ("RequestEncodeTime", "mterelay_request_encode_seconds"),
    ("RequestDecodeTime", "mterelay_request_decode_seconds"),
    ("ResponseEncodeTime", "mterelay_response_encode_seconds"),
    ("ResponseDecodeTime", "mterelay_response_decode_seconds"),
)
# counters: the interval's increase
_COUNTS = (
    ("PairsCreated", "mterelay_pairs_created_total"),
    ("RelayErrors", "mterelay_relay_errors_total"),
)
# gauges: the value at the end of the interval
_GAUGES = (
    ("InFlightRequests", "mterelay_in_flight_requests", "Count"),
    ("StoreReachable", "mterelay_store_reachable", "None"),
)

#: Every metric a document may carry, with its CloudWatch unit.
METRIC_UNITS: dict[str, str] = {
    "RequestsProcessed": "Count",
    "RequestsPerSecond": "Count/Second",
    **{name: "Milliseconds" for name, _ in _AVERAGES},
    **{name: "Count" for name, _ in _COUNTS},
    **{name: unit for name, _, unit in _GAUGES},
}

# Limits from the EMF specification and CloudWatch's dimension rules.
_MAX_DIMENSIONS = 30
_MAX_NAME = 255
_MAX_DIMENSION_VALUE = 1024


def emf_dimensions(role: str, region: str | None = None) -> dict[str, str]:
    """``Service`` and ``Role`` always, ``Region`` only when an AWS region is configured."""
    dimensions = {"Service": SERVICE, "Role": role}
    if region:
        dimensions["Region"] = region
    return dimensions


def _check(namespace: str, dimensions: Mapping[str, str]) -> None:
    if not isinstance(namespace, str) or not 1 <= len(namespace) <= _MAX_NAME:
        raise ValueError(f"EMF namespace must be 1..{_MAX_NAME} characters")
    if len(dimensions) > _MAX_DIMENSIONS:
        raise ValueError(f"EMF allows at most {_MAX_DIMENSIONS} dimensions")
    for name, value in dimensions.items():
        if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME:
            raise ValueError(f"EMF dimension name must be 1..{_MAX_NAME} characters: {name!r}")
        if name == "_aws" or name in METRIC_UNITS:
            raise ValueError(f"EMF dimension {name!r} collides with a root member")
        if not isinstance(value, str) or not 1 <= len(value) <= _MAX_DIMENSION_VALUE:
            raise ValueError(
                f"EMF dimension {name!r} needs a string value of 1..{_MAX_DIMENSION_VALUE} "
                f"characters, not {value!r}")


def _number(value: float) -> float | int:
    """Counts as integers, the rest to 6 significant digits: shorter lines, same meaning.

    Significant digits, not decimal places, so a slow rate (0.00333 req/s) or
    a sub-millisecond time keeps its precision.
    """
    if float(value).is_integer():
        return int(value)
    return float(f"{value:.6g}")


def emf_document(
    previous: Snapshot | None,
    current: Snapshot,
    *,
    timestamp_ms: int,
    namespace: str = NAMESPACE,
    dimensions: Mapping[str, str],
) -> dict[str, Any]:
    """One EMF document for the interval from ``previous`` to ``current``.

    ``previous`` None means "since the metrics were created": counts are the
    totals, and ``RequestsPerSecond`` is left out (the interval's length is
    unknown), as it is for an interval of zero length.  Counts are never
    negative (snapshots of different registries could make them so).
    Raises ValueError for dimensions EMF would reject.
    """
    _check(namespace, dimensions)

    def increase(name: str) -> float:
        before = previous[name] if previous is not None else 0.0
        return max(0.0, current[name] - before)

    values: dict[str, float | int] = {}
    requests = increase("mterelay_requests_total")
    values["RequestsProcessed"] = requests
    if previous is not None and current.at > previous.at:
        values["RequestsPerSecond"] = requests / (current.at - previous.at)
    for name, base in _AVERAGES:
        count = increase(base + "_count")
        if count > 0:
            values[name] = increase(base + "_sum") / count * 1000.0
    for name, sample in _COUNTS:
        values[name] = increase(sample)
    for name, sample, _ in _GAUGES:
        values[name] = current[sample]
    values = {name: _number(value) for name, value in values.items() if math.isfinite(value)}

    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(timestamp_ms),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [list(dimensions)],
                "Metrics": [{"Name": name, "Unit": METRIC_UNITS[name]} for name in values],
            }],
        },
    }
    document.update(dimensions)
    document.update(values)
    return document


def emf_line(document: Mapping[str, Any]) -> str:
    """The document as one log line: compact JSON, strict numbers, ending in a newline."""
    return json.dumps(document, separators=(",", ":"), allow_nan=False) + "\n"


def line_writer(stream: IO[str]) -> Callable[[str], None]:
    """A ``write`` for ``EmfReporter`` that flushes each line (stdout may be a pipe).

    ``stream`` is bound now, on purpose: build it while assembling the service
    (``line_writer(sys.stdout)`` next to the log observer), because twistd then
    replaces ``sys.stdout`` with a file that turns writes into log events, and
    an EMF line wrapped in a log record is no longer EMF.
    """

    def write(line: str) -> None:
        stream.write(line)
        stream.flush()

    return write


class EmfReporter(Service):
    """Writes ``metrics`` as one EMF line every ``interval`` seconds, and once more on stop.

    A line that cannot be built or written is logged and its interval folds
    into the next line, so counts are delayed, never lost or doubled.
    """

    def __init__(
        self,
        metrics: RelayMetrics,
        clock: IReactorTime,
        write: Callable[[str], None],
        interval: float,
        dimensions: Mapping[str, str],
        namespace: str = NAMESPACE,
    ) -> None:
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
            raise ValueError(f"EMF interval must be a positive number of seconds, not {interval!r}")
        _check(namespace, dimensions)
        self.metrics = metrics
        self.clock = clock
        self.write = write
        self.interval = float(interval)
        self.dimensions = dict(dimensions)
        self.namespace = namespace
        self._previous: Snapshot | None = None
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._previous = self.metrics.snapshot(self.clock.seconds())
        self._loop = task.LoopingCall(self.report)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda failure: log.failure("EMF reporting stopped", failure))

    def stopService(self) -> None:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if self._previous is not None:
            self.report()  # the last, partial interval

    def report(self) -> None:
        """Write the line for the interval since the last written line."""
        now = self.clock.seconds()
        current = self.metrics.snapshot(now)
        try:
            document = emf_document(self._previous, current, timestamp_ms=int(now * 1000),
                                    namespace=self.namespace, dimensions=self.dimensions)
            self.write(emf_line(document))
        except Exception:
            log.failure("Could not write the EMF metrics line; retrying next interval")
            return
        self._previous = current
