"""The relay's Prometheus metrics, in one object the web layer calls per request.

``RelayMetrics`` owns its own ``CollectorRegistry`` (never the global one), so
tests and several relays in one process never collide.  Every labelled child
with a fixed label set (roles, status classes, store operations, crypto kinds)
is bound once at construction: the per-request methods are a dict lookup and
an ``inc``/``observe``, no ``labels()`` call, no string formatting.

Only ``relay_errors_total`` has open-ended labels; ``relay_error`` bounds them
(codes outside 400-599 become "other", at most ``MAX_REASONS`` distinct reason
slugs) so a misbehaving caller cannot blow up Prometheus with series.

Pure bookkeeping: no clock, no reactor.  Callers measure durations and pass
seconds in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import attrs
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from mterelay import __version__

__all__ = [
    "CRYPTO_KINDS",
    "CUT_REASONS",
    "LATENCY_BUCKETS",
    "MAX_REASONS",
    "ROLES",
    "STORE_OPERATIONS",
    "CryptoKind",
    "RelayMetrics",
    "Snapshot",
    "reason_slug",
    "status_class",
]

# Sub-millisecond buckets first: sealing, opening and the memory store are
# tens of microseconds, and a histogram whose first bucket is 5 ms (the
# prometheus_client default) would put all of them in one bucket.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)

ROLES = ("inbound", "outbound", "passthrough", "pairing", "other")
STORE_OPERATIONS = ("start", "stop", "ping", "create", "get", "accept", "delete")
CryptoKind = Literal["request_encode", "request_decode", "response_encode", "response_decode"]
CRYPTO_KINDS: tuple[CryptoKind, ...] = (
    "request_encode", "request_decode", "response_encode", "response_decode",
)

CUT_REASONS = ("connection_cap", "header_timeout", "idle_connection", "body_timeout", "other")

# Bounds on relay_errors_total's labels (see relay_error).
MAX_REASONS = 64
MAX_REASON_LENGTH = 40
# Raw (code, reason) pairs remembered for the fast path; beyond this a call
# re-normalises its arguments instead of growing the cache.
_ERROR_CACHE_SIZE = 1024

_CRYPTO_HELP = {
    "request_encode": "CPU time spent sealing requests (outbound relay).",
    "request_decode": "CPU time spent opening requests (inbound relay).",
    "response_encode": "CPU time spent sealing responses (inbound relay).",
    "response_decode": "CPU time spent opening responses (outbound relay).",
}
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_REASON_JUNK = re.compile(r"[^a-z0-9_]+")


def status_class(code: int) -> str:
    """``"2xx"`` for 200..299 and so on; the relay's 55x codes are ``"5xx"``.

    Anything outside 100..599 is ``"other"`` rather than an invented class.
    """
    if 100 <= code <= 599:
        return _CLASSES[code // 100]
    return "other"


def reason_slug(reason: str) -> str:
    """A label-safe slug: lower case, runs outside ``[a-z0-9_]`` become ``_``, 40 chars.

    ``"Bad Request"`` -> ``"bad_request"``; an empty result is ``"unknown"``.
    """
    slug = _REASON_JUNK.sub("_", str(reason).lower()).strip("_")
    return slug[:MAX_REASON_LENGTH].rstrip("_") or "unknown"


@attrs.frozen
class Snapshot:
    """Totals of the relay's own metrics at one moment, summed over their labels.

    Keyed by sample name as exposed (``mterelay_requests_total``,
    ``mterelay_request_seconds_sum``, ``mterelay_request_seconds_count``,
    ``mterelay_in_flight_requests`` ...); histogram buckets are left out.
    ``at`` is the caller's clock reading, so interval rates need no clock here.
    """

    at: float
    values: Mapping[str, float]

    def __getitem__(self, name: str) -> float:
        """The total, 0.0 for a sample never seen (a family with no children yet)."""
        return self.values.get(name, 0.0)


class _Role:
    """The children bound for one role value."""

    __slots__ = ("requests", "request_seconds", "upstream_seconds", "pairs_created")

    def __init__(self, metrics: RelayMetrics, role: str) -> None:
        self.requests = {
            number: metrics.requests.labels(role, name)
            for number, name in _CLASSES.items()
            if number != 1
        }
        self.request_seconds = metrics.request_seconds.labels(role)
        self.upstream_seconds = metrics.upstream_seconds.labels(role)
        self.pairs_created = metrics.pairs_created.labels(role)


class RelayMetrics:
    """Every metric the relay exposes, on a registry of its own.

    One instance per relay process, created before the web layer so even the
    first request is counted.  ``registry`` is what ``/metrics`` exposes.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mterelay_requests_total", "Requests answered, by relay role and status class.",
            ["role", "status_class"], registry=r)
        self.request_seconds = Histogram(
            "mterelay_request_seconds", "Whole request time at the relay, by role.",
            ["role"], buckets=LATENCY_BUCKETS, registry=r)
        self.outbound_seconds = Histogram(
            "mterelay_outbound_proxy_seconds",
            "Outbound relay: time waiting on the remote relay's answer.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_seconds = Histogram(
            "mterelay_upstream_proxy_seconds", "Time waiting on the upstream API, by role.",
            ["role"], buckets=LATENCY_BUCKETS, registry=r)
        self.crypto_seconds = {
            kind: Histogram(f"mterelay_{kind}_seconds", _CRYPTO_HELP[kind],
                            buckets=LATENCY_BUCKETS, registry=r)
            for kind in CRYPTO_KINDS
        }
        self.pairs_created = Counter(
            "mterelay_pairs_created_total",
            "Pairs created: accepted by this relay (inbound) or made by its client (outbound).",
            ["role"], registry=r)
        self.relay_errors = Counter(
            "mterelay_relay_errors_total",
            "Errors the relay answered itself, by status code and reason slug.",
            ["code", "reason"], registry=r)
        self.store_seconds = Histogram(
            "mterelay_store_operation_seconds", "Pair store operation time, by operation.",
            ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.store_errors = Counter(
            "mterelay_store_errors_total", "Pair store operations that failed, by operation.",
            ["op"], registry=r)
        # The multiprocess modes only matter with WORKERS > 1 (see
        # use_multiprocess): how the workers' gauges combine into one value.
        self.in_flight = Gauge(
            "mterelay_in_flight_requests", "Requests being processed now.", registry=r,
            multiprocess_mode="livesum")
        self.store_reachable = Gauge(
            "mterelay_store_reachable", "1 when the pair store answered its last call, else 0.",
            registry=r, multiprocess_mode="livemin")
        self.draining = Gauge(
            "mterelay_draining", "1 while the relay is shutting down.", registry=r,
            multiprocess_mode="livemax")
        self.connections_cut = Counter(
            "mterelay_connections_cut_total",
            "Client connections the relay closed or refused to protect itself, by reason "
            "(connection_cap, header_timeout, idle_connection, body_timeout).",
            ["reason"], registry=r)
        self.open_connections = Gauge(
            "mterelay_open_connections", "Client connections open on the main listener.",
            registry=r, multiprocess_mode="livesum")
        self.build_info = Gauge(
            "mterelay_build_info", "Always 1; the version is in the label.", ["version"],
            registry=r, multiprocess_mode="livemax")
        self.build_info.labels(__version__).set(1)
        # Assume reachable until a call says otherwise, so an idle relay with
        # a healthy store does not alert at start-up.
        self.store_reachable.set(1)
        self._families = (
            self.requests, self.request_seconds, self.outbound_seconds, self.upstream_seconds,
            *self.crypto_seconds.values(), self.pairs_created, self.relay_errors,
            self.store_seconds, self.store_errors, self.in_flight, self.store_reachable,
            self.draining, self.connections_cut, self.open_connections, self.build_info,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        self._roles = {role: _Role(self, role) for role in ROLES}
        self._other_role = self._roles["other"]
        self._store_ops = {
            op: (self.store_seconds.labels(op), self.store_errors.labels(op))
            for op in STORE_OPERATIONS
        }
        self._cut_reasons = {reason: self.connections_cut.labels(reason) for reason in CUT_REASONS}
        self._reasons: set[str] = set()
        self._error_children: dict[tuple[int, str], Counter] = {}

    # -- per request ------------------------------------------------------------

    def request_started(self) -> None:
        """A request arrived; pair with exactly one ``request_finished``."""
        self.in_flight.inc()

    def request_finished(self, role: str, status: int, seconds: float) -> None:
        """A request was answered (or abandoned) after ``seconds`` with ``status``.

        ``role`` outside ``ROLES`` counts as "other".
        """
        self.in_flight.dec()
        per_role = self._roles.get(role, self._other_role)
        counter = per_role.requests.get(status // 100) if 100 <= status <= 599 else None
        if counter is None:  # 1xx or nonsense: rare, bound lazily
            counter = self.requests.labels(role if role in self._roles else "other",
                                           status_class(status))
        counter.inc()
        per_role.request_seconds.observe(seconds if seconds > 0 else 0.0)

    def observe_upstream(self, role: str, seconds: float) -> None:
        """Time from sending to the upstream API until its answer's headers."""
        self._roles.get(role, self._other_role).upstream_seconds.observe(
            seconds if seconds > 0 else 0.0)

    def observe_outbound(self, seconds: float) -> None:
        """Outbound relay: time from sending to the remote relay until its answer."""
        self.outbound_seconds.observe(seconds if seconds > 0 else 0.0)

    def observe_crypto(self, kind: CryptoKind, seconds: float) -> None:
        """CPU time of one seal/open; ``kind`` is one of ``CRYPTO_KINDS``."""
        try:
            histogram = self.crypto_seconds[kind]
        except KeyError:
            raise ValueError(f"unknown crypto kind {kind!r}; one of {CRYPTO_KINDS}") from None
        histogram.observe(seconds if seconds > 0 else 0.0)

    def pair_created(self, role: str, n: int = 1) -> None:
        """``n`` pairs created: "inbound" (accepted by B) or "outbound" (made by A)."""
        self._roles.get(role, self._other_role).pairs_created.inc(n)

    def relay_error(self, code: int, reason: str) -> None:
        """Count an error the relay answered itself (55x, or a 4xx it decided on).

        ``reason`` is a short slug ("replay", "bad_request"); see ``reason_slug``.
        Codes outside 400..599 count as code "other"; past ``MAX_REASONS``
        distinct slugs, new ones count as reason "other".
        """
        key = (code, reason)
        child = self._error_children.get(key)
        if child is None:
            child = self._bind_error(code, reason)
            if len(self._error_children) < _ERROR_CACHE_SIZE:
                self._error_children[key] = child
        child.inc()

    def _bind_error(self, code: int, reason: str) -> Counter:
        code_label = str(code) if isinstance(code, int) and 400 <= code <= 599 else "other"
        slug = reason_slug(reason)
        if slug != "other" and slug not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                slug = "other"
            else:
                self._reasons.add(slug)
        return self.relay_errors.labels(code_label, slug)

    # -- pair store -------------------------------------------------------------

    def observe_store(self, op: str, seconds: float, failed: bool = False) -> None:
        """One pair store call of ``op`` took ``seconds``; ``failed`` also counts an error."""
        children = self._store_ops.get(op)
        if children is None:
            children = (self.store_seconds.labels("other"), self.store_errors.labels("other"))
        children[0].observe(seconds if seconds > 0 else 0.0)
        if failed:
            children[1].inc()

    # -- connections ------------------------------------------------------------

    def connection_cut(self, reason: str) -> None:
        """A client connection closed or refused by the guard; ``reason`` in ``CUT_REASONS``."""
        child = self._cut_reasons.get(reason)
        if child is None:
            child = self._cut_reasons["other"]
        child.inc()

    def set_open_connections(self, count: int) -> None:
        self.open_connections.set(count)

    def set_store_reachable(self, reachable: bool) -> None:
        self.store_reachable.set(1 if reachable else 0)

    def set_draining(self, draining: bool) -> None:
        self.draining.set(1 if draining else 0)

    # -- reading ---------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in Prometheus text format: ``(body, content type)``.

        ``accept`` (the scraper's Accept header) may select OpenMetrics, as
        prometheus_client's own handlers do; without it, text format 0.0.4.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.exposed), content_type

    @property
    def exposed(self) -> CollectorRegistry:
        """What ``/metrics`` shows: this process, or every worker's when WORKERS > 1."""
        return getattr(self, "_exposed", None) or self.registry

    def use_multiprocess(self, directory: str) -> None:
        """Expose the sum of every worker process's metrics (WORKERS > 1).

        Each worker writes its values to files in ``directory`` (the caller
        switched prometheus_client to multiprocess values before creating
        this object); the first process, which serves ``/metrics``, reads
        them all back.  Process and platform metrics are then left out.
        """
        from prometheus_client.multiprocess import MultiProcessCollector

        exposed = CollectorRegistry()
        MultiProcessCollector(exposed, path=directory)
        self._exposed = exposed

    def snapshot(self, at: float) -> Snapshot:
        """Current totals of the relay's own metrics (process metrics excluded).

        ``at`` is the caller's clock reading, kept with the totals.
        """
        totals: dict[str, float] = {}
        for family in self._families:
            for metric in family.collect():
                for sample in metric.samples:
                    name = sample.name
                    if name.endswith(("_bucket", "_created")):
                        continue
                    totals[name] = totals.get(name, 0.0) + sample.value
        return Snapshot(at=at, values=totals)
