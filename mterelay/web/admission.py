"""Admission for ``POST /api/mte-pair``: who may make the relay do ML-KEM work now.

A pairing costs two ML-KEM-768 encapsulations and two X25519 exchanges per
pair, plus a store write; refusing one after that work (as the relay once
did) lets a flood of refusals burn the CPU anyway.  So admission is decided
on the cheap facts only (source address, verified client id, entry count)
and before any key is parsed, in this order:

1. **Source address** (``PAIRING_ADDRESS_RATE`` pairs/s): the TCP peer, or
   the client named by a trusted proxy (see :mod:`mterelay.web.sourceaddress`);
   IPv6 by /64.  This is the limit a flooder cannot multiply for free: client
   ids are handed out to anyone by ``HEAD /api/mte-relay``, addresses are not.
2. **Client id from that address** (``PAIRING_CLIENT_RATE`` pairs/s), keyed
   by *(source, client id)*: one client behind a shared address (a NAT, an
   office) cannot take the whole address's budget.  Keying by the pair is
   what makes a lock-out impossible: client ids travel in clear, and a bucket
   keyed by id alone would let anyone who saw a victim's id drain the
   victim's budget from another address.  A per-id cap across addresses is
   deliberately absent: it would protect nothing (a flooder simply uses more
   ids) and would be exactly that lock-out lever.
3. **Global budget** (``PAIRING_GLOBAL_RATE`` pairs/s per process): what
   bounds the CPU and store growth however many addresses flood.  A quarter
   of it is held back for *quiet* sources, so sources that are flooding
   cannot starve a newcomer: they only ever get the part above the reserve.
   Quiet is measured on demand, not on success: a second bucket per source,
   refilling at a quarter of the address rate, is charged for every attempt,
   refused ones included, and a source is quiet while, net of that refill,
   it has asked for at most one request's worth of pairs (``max_entries``).
   A newcomer is quiet for its first request; a source that keeps asking is
   not, however it paces itself above a quarter of its address rate.
   (Measured on admitted pairs, a flooder refused by the global budget would
   refill its address bucket and count as quiet again.)  An attacker with K
   addresses can still take up to K quiet requests at once and K quarters of
   the address rate from the reserve; past that, many slow sources look like
   many new clients, and only the global budget is left to protect the CPU.
4. **Concurrency** (``PAIRING_CONCURRENCY``): pairings between admission and
   their answer, store wait included, so a slow store cannot pile up
   requests holding bodies and keys.

No budget is charged unless every limit passes, so a refusal never costs
the client budget (only demand, see 3).  Every bucket holds four seconds of
its rate (at least the largest request), and the keyed tables are
LRU-bounded: under a flood of distinct sources memory stays flat, and the
bucket forgotten first is the one idle longest, i.e. the one closest to
full anyway.

Pure bookkeeping on a clock: no reactor, no request objects.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger(namespace="mterelay.pairing")

LIMITS = ("address", "client", "global", "concurrency")
#: Seconds of its rate a bucket holds when full.
BURST_SECONDS = 4.0
#: Share of the global budget only quiet sources may use.
RESERVE_SHARE = 0.25
#: The demand bucket refills at this share of the address rate.
QUIET_SHARE = 0.25
#: Keyed buckets kept at most per table (addresses, demand, address+client id):
#: about 260 bytes each with its key, so under 8 MB for the three tables full.
MAX_KEYS = 10_000
#: Seconds between two log lines about refusals of one limit.
LOG_INTERVAL = 10.0


@attrs.frozen
class PairingLimits:
    """The admission settings, in pairs per second (concurrency in requests)."""

    address_rate: float = 100.0
    client_rate: float = 25.0
    global_rate: float = 200.0
    concurrency: int = 32
    #: The largest request (pairs): every bucket holds at least this many.
    max_entries: int = 25
    max_keys: int = MAX_KEYS

    def burst(self, rate: float) -> float:
        return max(BURST_SECONDS * rate, float(self.max_entries))


@attrs.frozen
class Refusal:
    """Why a pairing was refused and when to come back (whole seconds, at least 1)."""

    limit: str
    retry_after: int
    reason: str


class TokenBuckets:
    """Token buckets by key, the least recently used forgotten past ``max_keys``.

    A key never seen (or forgotten) has a full bucket, so forgetting the one
    idle longest is the cheapest possible error.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._state: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def level(self, key: Hashable, now: float) -> float:
        """Tokens in ``key``'s bucket at ``now`` (reading never creates a bucket)."""
        state = self._state.get(key)
        if state is None:
            return self.burst
        tokens, stamp = state
        return min(self.burst, tokens + max(0.0, now - stamp) * self.rate)

    def wait(self, key: Hashable, count: float, now: float, keep: float = 0.0) -> float:
        """Seconds until ``count`` tokens (leaving ``keep``) are there; 0.0: now."""
        missing = count + keep - self.level(key, now)
        return missing / self.rate if missing > 0 else 0.0

    def take(self, key: Hashable, count: float, now: float) -> None:
        """Remove ``count`` tokens; the caller checked :meth:`wait` first."""
        self._state[key] = (self.level(key, now) - count, now)
        self._state.move_to_end(key)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)


class PairingAdmission:
    """The four limits of the module docstring, for one relay process."""

    def __init__(self, clock: IReactorTime, limits: PairingLimits) -> None:
        self.clock = clock
        self.limits = limits
        keys = limits.max_keys
        self.addresses = TokenBuckets(limits.address_rate, limits.burst(limits.address_rate), keys)
        quiet_rate = QUIET_SHARE * limits.address_rate
        self.demand = TokenBuckets(quiet_rate, limits.burst(quiet_rate), keys)
        #: Demand level a quiet source keeps after its request.
        self.quiet_level = self.demand.burst - limits.max_entries
        self.clients = TokenBuckets(limits.client_rate, limits.burst(limits.client_rate), keys)
        self.budget = TokenBuckets(limits.global_rate, limits.burst(limits.global_rate), 1)
        # Never so large that a busy source could not pass a full request.
        self.reserve = min(RESERVE_SHARE * self.budget.burst,
                           self.budget.burst - limits.max_entries)
        self.in_flight = 0

    def check(self, source: str, client: str, count: int = 1) -> Refusal | None:
        """The refusal ``count`` pairs would get now; only a refusal is charged (as demand).

        Used before the body is read, so an admitted check is followed by
        :meth:`admit`, which charges the demand of the whole request.
        """
        now = self.clock.seconds()
        refusal = self._refusal(source, client, count, now)
        if refusal is not None:
            self._demand(source, count, now)
        return refusal

    def admit(self, source: str, client: str, count: int) -> Refusal | None:
        """Charge every limit and take a concurrency slot, or refuse charging only demand.

        An admitted pairing must be followed by exactly one :meth:`release`.
        """
        now = self.clock.seconds()
        refusal = self._refusal(source, client, count, now)
        self._demand(source, count, now)
        if refusal is not None:
            return refusal
        self.addresses.take(source, count, now)
        self.clients.take((source, client), count, now)
        self.budget.take(None, count, now)
        self.in_flight += 1
        return None

    def _refusal(self, source: str, client: str, count: int, now: float) -> Refusal | None:
        wait = self.addresses.wait(source, count, now)
        if wait:
            return _refusal("address", wait, "pairing rate exceeded for this source address")
        wait = self.clients.wait((source, client), count, now)
        if wait:
            return _refusal("client", wait,
                            "pairing rate exceeded for this client id from this address")
        quiet = self.demand.level(source, now) - count >= self.quiet_level
        wait = self.budget.wait(None, count, now, keep=0.0 if quiet else self.reserve)
        if wait:
            return _refusal("global", wait, "the relay is pairing at its global limit")
        if self.in_flight >= self.limits.concurrency:
            return _refusal("concurrency", 1.0, "too many pairings in progress")
        return None

    def _demand(self, source: str, count: int, now: float) -> None:
        self.demand.take(source, min(count, self.demand.level(source, now)), now)

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)


def _refusal(limit: str, wait: float, reason: str) -> Refusal:
    seconds = max(1, math.ceil(wait))
    return Refusal(limit, seconds, f"{reason}; retry in {seconds} s")


class RefusalLog:
    """Logs refusals once per limit per ``interval``, with the count in between.

    A flood refused ten thousand times a second must not write ten thousand
    log lines: the first refusal of a limit is logged, later ones are counted
    and reported with the next one logged after ``interval`` seconds (the
    exact counts are in ``mterelay_relay_errors_total``).
    """

    def __init__(self, clock: IReactorTime, interval: float = LOG_INTERVAL,
                 logger: Logger = log) -> None:
        self.clock = clock
        self.interval = interval
        self.log = logger
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, refusal: Refusal, source: str, **fields: Any) -> bool:
        """Note one refusal; True when it was logged."""
        now = self.clock.seconds()
        last = self._last.get(refusal.limit)
        if last is not None and now - last < self.interval:
            self._suppressed[refusal.limit] = self._suppressed.get(refusal.limit, 0) + 1
            return False
        self._last[refusal.limit] = now
        more = self._suppressed.pop(refusal.limit, 0)
        self.log.info(
            "pairing refused by the {limit} limit from {source}: {reason}{more}",
            limit=refusal.limit, source=source, reason=refusal.reason,
            more=(f" ({more} more refusal(s) by this limit since the last such line)"
                  if more else ""),
            **fields)
        return True
