"""Runs cases concurrently (blocking sockets in threads) and classifies every answer.

What a case's answer means (the relay's rules, docs/protocol.md 8.3 and 10):

* an answer carrying ``x-fuzz-upstream`` (clear routes, outbound) or
  ``x-mte-relay`` (sealed) came from the upstream;
* a 4xx or 55x answer without either is a **refusal**: the request must not
  have reached the upstream (checked afterwards against its records);
* a hang-up or stalled body (``abort`` cases) must not reach it either;
* a valid control request must get an authentic answer (it opens) and reach
  the upstream exactly once; a replayed copy must be refused.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from fuzz import wire
from fuzz.parts import Case
from fuzz.session import opens


def is_refusal(reply: wire.Reply) -> bool:
    if reply.outcome != "answer":
        return False
    if reply.header("x-fuzz-upstream") or reply.header("x-mte-relay"):
        return False
    return 400 <= reply.status <= 499 or 559 <= reply.status <= 569


@dataclass
class Outcome:
    """What one case did, kept small: 100,000 of them stay in memory."""

    id: str
    entry: str
    kind: str
    label: str
    must_not_reach: bool
    valid: bool = False
    valid_ok: bool = True
    replay: bool = False
    replay_label: str = ""


@dataclass
class EntryStats:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    refused_reached: int = 0
    refused_reached_examples: list = field(default_factory=list)
    replays_accepted: int = 0
    valid_failed: int = 0
    valid_failed_examples: list = field(default_factory=list)
    reached: int = 0
    server_errors: int = 0


def run_case(case: Case) -> Outcome:
    reply = wire.exchange(case.port, case.data, timeout=case.timeout, pause=case.pause,
                          abort=case.abort, method=case.method,
                          half_close=bool(case.extra.get("half_close")))
    aborted = case.abort or (case.entry == "abort")
    outcome = Outcome(case.id, case.entry, case.kind, reply.label,
                      must_not_reach=is_refusal(reply) or aborted)
    if case.sealed is not None:
        outcome.valid = True
        outcome.valid_ok = reply.status == 200 and opens(case.sealed, reply)  # type: ignore[arg-type]
        if not outcome.valid_ok:
            outcome.label = f"{reply.label}" + ("" if reply.status != 200 else "-unopened")
    if case.replay_port is not None:
        again = wire.exchange(case.replay_port, case.data, timeout=case.timeout,
                              method=case.method)
        outcome.replay = True
        outcome.replay_label = "refused" if is_refusal(again) else again.label
    return outcome


def run_cases(cases: Iterable[Case], threads: int,
              progress: Callable[[int], None] | None = None) -> list[Outcome]:
    """Run every case with ``threads`` in flight; outcomes in completion order."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    semaphore = threading.BoundedSemaphore(threads * 2)

    def one(case: Case) -> None:
        try:
            result = run_case(case)
        except Exception as error:  # a harness bug must not lose the run: record it
            result = Outcome(case.id, case.entry, case.kind, f"harness-error:{type(error).__name__}",
                             must_not_reach=False)
        finally:
            semaphore.release()
        with lock:
            outcomes.append(result)
            if progress is not None:
                progress(len(outcomes))

    with ThreadPoolExecutor(threads) as pool:
        for case in cases:
            semaphore.acquire()
            pool.submit(one, case)
    return outcomes


def tally(outcomes: list[Outcome], records: list[dict[str, Any]]) -> dict[str, EntryStats]:
    """Join outcomes with what the upstream saw (counts of each case id)."""
    reached = Counter(r.get("case") for r in records)
    stats: dict[str, EntryStats] = defaultdict(EntryStats)
    for o in outcomes:
        s = stats[o.entry]
        s.cases += 1
        s.statuses[o.label] += 1
        s.kinds[o.kind] += 1
        hits = reached.get(o.id, 0)
        if hits:
            s.reached += 1
        if o.label.isdigit() and o.label.startswith("5") and o.label not in (
                "559", "560", "561", "562", "563", "564", "565", "566", "567", "568", "569"):
            s.server_errors += 1
        if o.must_not_reach and hits:
            s.refused_reached += 1
            if len(s.refused_reached_examples) < 5:
                s.refused_reached_examples.append(f"{o.id} {o.kind} -> {o.label}, upstream x{hits}")
        if o.valid and (not o.valid_ok or (not o.replay and hits != 1)):
            s.valid_failed += 1
            if len(s.valid_failed_examples) < 5:
                s.valid_failed_examples.append(f"{o.id} {o.kind} -> {o.label}, upstream x{hits}")
        # A replay is accepted when the copy executed again, or when both the request and
        # its copy were answered 200 (after a refused or failed first try, the copy is the
        # first delivery; a 503 from an overloaded relay is not an acceptance).
        if o.replay and (hits > 1 or (o.label == "200" and o.replay_label == "200")):
            s.replays_accepted += 1
    return dict(stats)
