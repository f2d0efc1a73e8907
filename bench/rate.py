"""Arithmetic for the fixed-rate latency test (pure; unit-tested).

wrk has no rate limit, so an approximately fixed offered rate comes from
think time: each of ``c`` connections waits ``d`` ms after an answer before
its next request, so one connection's cycle is ``d + t`` ms, ``t`` being the
answer time plus the load generator's own overhead (timer granularity,
scheduling on a busy 2-core machine).  With every connection busy the
offered rate is ``c * 1000 / (d + t)`` req/s, hence ``d = c * 1000 / R - t``.

``t`` is first estimated (the target's median from the sweep), then
measured by a short calibration run: the achieved rate gives the real cycle
``c * 1000 / achieved``, and the part of it that was not think time is the
real ``t``.  One adjustment is enough when ``t`` does not change much with the
small rate change; when ``t`` alone exceeds the cycle (the target cannot
keep up at this rate) the think time bottoms out at zero and the achieved
rate says so.

This is a closed loop, not an open-loop (constant arrival) generator: a
slow answer delays that connection's next request, so latency under a
burst is under-reported compared with a true fixed-rate tool (coordinated
omission).  Both targets are measured the same way, so their difference is
still meaningful.
"""

from __future__ import annotations

__all__ = ["target_rate", "initial_delay_ms", "adjusted_delay_ms", "rate_error",
           "needs_adjustment", "steady_rate"]

#: Calibrate again when the achieved rate is off by more than this fraction.
TOLERANCE = 0.10


def target_rate(baseline_max_rps: float, fraction: float = 0.5) -> float:
    """The offered rate: ``fraction`` of the baseline's best throughput."""
    if baseline_max_rps <= 0:
        raise ValueError("the baseline reached no throughput")
    return baseline_max_rps * fraction


def cycle_ms(rate: float, connections: int) -> float:
    """How long one connection's request-plus-think cycle must last for ``rate``."""
    if rate <= 0 or connections <= 0:
        raise ValueError("rate and connections must be positive")
    return connections * 1000.0 / rate


def initial_delay_ms(rate: float, connections: int, latency_ms: float) -> float:
    """First guess at the mean think time, from an estimated answer time."""
    return max(cycle_ms(rate, connections) - max(latency_ms, 0.0), 0.0)


def adjusted_delay_ms(rate: float, connections: int, delay_ms: float,
                      achieved_rps: float) -> float:
    """The think time that corrects a calibration run which achieved ``achieved_rps``."""
    if achieved_rps <= 0:
        return delay_ms
    overhead = cycle_ms(achieved_rps, connections) - delay_ms
    return max(cycle_ms(rate, connections) - overhead, 0.0)


def rate_error(rate: float, achieved_rps: float) -> float:
    """Relative difference of the achieved rate from the offered one (0.1 = 10 %)."""
    return abs(achieved_rps - rate) / rate


def needs_adjustment(rate: float, achieved_rps: float, tolerance: float = TOLERANCE) -> bool:
    return rate_error(rate, achieved_rps) > tolerance


def steady_rate(requests: int, duration_s: float, connections: int) -> float:
    """The steady-state rate of a think-time run, corrected for its cut-off end.

    Every connection starts with a think time and the run stops at a random
    point of each connection's cycle, so on average half a cycle per
    connection is lost: ``requests ≈ c × (D / T - 1/2)``, hence the rate
    ``c / T = (requests + c/2) / D``.  Negligible for long runs, it matters
    for short calibration runs whose cycle is a sizeable part of the run.
    """
    if duration_s <= 0:
        return 0.0
    if requests <= 0:
        return 0.0
    return (requests + connections / 2.0) / duration_s
