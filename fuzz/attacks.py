"""The targeted attacks of issue 14, each a function returning an :class:`AttackResult`.

Every attack uses fresh client ids and case ids of its own, so the
upstream's records tell exactly how often each captured request reached it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from mterelay.client.messages import SealOptions

from fuzz import logscan, wire
from fuzz.network import INJECTED_COOKIE
from fuzz.parts import Parts
from fuzz.runner import is_refusal
from fuzz.session import Client, client_id_for, opens, pair, start_pairing
from fuzz.stack import SECRET_B, TOKEN, Stack

VICTIM_SOURCE = "127.0.0.2"
ATTACKER_SOURCE = "127.0.0.3"


@dataclass
class AttackResult:
    name: str
    passed: bool
    finding: str
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: The attack's key in :data:`ATTACKS` (set by the campaign).
    key: str = ""


@dataclass
class Attacks:
    """The attacks against one running stack; ``scale`` sizes floods (1.0: the full campaign)."""

    stack: Stack
    scale: float = 1.0
    _counter: int = 0

    def case(self, label: str) -> str:
        self._counter += 1
        return f"atk-{label}-{self._counter}-{os.getpid()}"

    def hits(self, case: str) -> int:
        return sum(1 for r in self.stack.records() if r.get("case") == case)

    def send(self, port: int, request: Any, **kw: Any) -> wire.Reply:
        return wire.exchange(port, request.raw(), method=request.method, **kw)

    def log_mark(self) -> dict[str, int]:
        return {p.name: p.log_path.stat().st_size if p.log_path.exists() else 0
                for p in self.stack.relays}

    def new_critical(self, mark: dict[str, int]) -> list[str]:
        out = []
        for proc in self.stack.relays:
            lines, _ = logscan.read(proc.name, proc.log_path, mark.get(proc.name, 0))
            for line in logscan.scan(lines).critical:
                out.append(f"{proc.name}: {logscan.first_line(line.text)}")
        return out

    # ------------------------------------------------------------ replay / re-pair

    def _victim(self, pairs: int = 1) -> Client:
        return Client.paired(self.stack.b1.port, SECRET_B, pairs)  # type: ignore[arg-type]

    def _repair(self, port: int, client_id: str, pair_id: str) -> wire.Reply:
        """Anyone who saw (client id, pair id) on the wire asks to re-pair that pair."""
        pending = start_pairing(client_id[:36], pair_id)
        reply, _ = pair(port, client_id, [pending])
        return reply

    def replay_after_repair(self) -> AttackResult:
        b1, b2 = self.stack.b1.port, self.stack.b2.port
        victim = self._victim()
        case = self.case("replay-repair")
        warm = victim.seal("GET", f"/api/warm?case={self.case('warm')}", [], None, case="warm")
        first_warm = self.send(b2, warm)  # B2 now caches the pair's keys
        captured = victim.seal("POST", f"/api/transfer?case={case}", [("content-type", "text/plain")],
                               b"pay 100", case=case)
        first = self.send(b1, captured)
        replay_before = self.send(b2, captured)
        repair = self._repair(b1, victim.client_id, victim.pairs[0].pair_id)
        replays = [self.send(port, captured) for port in (b1, b2, b2, self.stack.balancer_port,
                                                          self.stack.balancer_port)]
        hits = self.hits(case)
        accepted = [r.label for r in replays if not is_refusal(r)]
        passed = hits == 1 and not accepted and not is_refusal(first) is False or False
        passed = hits == 1 and not accepted and first.status == 200
        return AttackResult(
            "replay after re-pair (both replicas)", passed, "issue 14 #1 (critical)",
            f"warm on B2 {first_warm.label}; captured request {first.label}; replay before "
            f"re-pair {replay_before.label}; re-pair of the victim's pair id with its clear "
            f"client id {repair.label}; replays to B1,B2,B2,LB,LB: "
            f"{[r.label for r in replays]}; the upstream executed it {hits} time(s)",
            {"hits": hits, "repair": repair.label, "replays": [r.label for r in replays]})

    def replay_after_flush(self) -> AttackResult:
        b1, b2 = self.stack.b1.port, self.stack.b2.port
        victim = self._victim()
        case = self.case("replay-flush")
        warm = victim.seal("GET", f"/api/warm?case={self.case('warm')}", [], None, case="warm")
        self.send(b2, warm)
        captured = victim.seal("POST", f"/api/transfer?case={case}", [("content-type", "text/plain")],
                               b"pay 100", case=case)
        first = self.send(b1, captured)
        self.stack.redis.command("FLUSHALL")
        repair = self._repair(b1, victim.client_id, victim.pairs[0].pair_id)
        replays = [self.send(port, captured) for port in (b1, b2, b2, self.stack.balancer_port)]
        hits = self.hits(case)
        accepted = [r.label for r in replays if not is_refusal(r)]
        passed = hits == 1 and not accepted and first.status == 200
        return AttackResult(
            "replay after flush + re-pair", passed, "issue 14 #1 (critical)",
            f"captured request {first.label}; Redis FLUSHALL; re-pair of the same pair id "
            f"{repair.label}; replays to B1,B2,B2,LB: {[r.label for r in replays]}; the upstream "
            f"executed it {hits} time(s)", {"hits": hits})

    def knockout_via_repair(self) -> AttackResult:
        b1, b2 = self.stack.b1.port, self.stack.b2.port
        victim = self._victim()
        before = self.send(b1, victim.seal("GET", f"/api/me?case={self.case('ko')}", [], None,
                                           case="ko"))
        repair = self._repair(b2, victim.client_id, victim.pairs[0].pair_id)
        after = []
        for port in (b1, b2):
            request = victim.seal("GET", f"/api/me?case={self.case('ko')}", [], None, case="ko")
            reply = self.send(port, request)
            after.append(f"{reply.label}{'' if opens(request, reply) else ' (not authentic)'}")
        passed = all(a == "200" for a in after) and before.status == 200
        return AttackResult(
            "knock-out of a client's pair via re-pair", passed, "issue 14 #1",
            f"victim before {before.label}; third party re-pairs the victim's pair id with its "
            f"clear client id: {repair.label}; victim's next requests on B1, B2: {after}",
            {"repair": repair.label, "after": after})

    def truncated_final_chunk(self) -> AttackResult:
        """The sealed body stops before its final chunk is complete: nothing may be executed."""
        victim = self._victim()
        out = []
        for size in (0, 100, 70000):
            case = self.case(f"trunc{size}")
            sealed = victim.seal("PUT", f"/api/doc?case={case}", [("content-type", "text/plain")],
                                 b"x" * size, case=case, options=SealOptions.build(framing="MKE"))
            p = Parts(b"PUT", sealed.target.encode(),
                      [(n.encode(), v.encode()) for n, v in sealed.headers], sealed.body,
                      cut=len(sealed.body) - 13)
            reply = wire.exchange(self.stack.b1.port, p.raw(), timeout=1.5,  # type: ignore[arg-type]
                                  method="PUT")
            time.sleep(0.2)
            out.append((size, reply.label, self.hits(case)))
        passed = all(hits == 0 for _, _, hits in out)
        return AttackResult(
            "truncated final chunk (MKE body cut 13 bytes short, client stalls)", passed,
            "new (campaign)",
            "; ".join(f"{size}-byte body: answer {label}, upstream executed it {hits} time(s)"
                      for size, label, hits in out), {"results": out})

    # ------------------------------------------------------------ header integrity

    def header_stripping(self) -> AttackResult:
        # 1. Through relay A and the on-path rewriter (adds Connection: authorization, x-api-key).
        case_a = self.case("strip-a")
        p = Parts.of("GET", f"/api/secret?case={case_a}", [
            ("x-mte-outbound-token", TOKEN),
            ("x-mte-upstream", f"http://127.0.0.1:{self.stack.tamper_port}"),
            ("x-fuzz-case", case_a), ("authorization", "Bearer app-secret"),
            ("x-api-key", "app-key")])
        reply_a = wire.exchange(self.stack.a1.port, p.raw(), timeout=20)
        # 2. Directly: a sealed request plus the attacker's clear Connection header.
        victim = self._victim()
        case_b = self.case("strip-b")
        sealed = victim.seal("GET", f"/api/secret?case={case_b}",
                             [("authorization", "Bearer app-secret"), ("x-api-key", "app-key")],
                             None, case=case_b)
        sealed.headers.append(("connection", "authorization, x-api-key"))
        reply_b = self.send(self.stack.balancer_port, sealed)
        seen = {}
        for record in self.stack.records():
            if record.get("case") in (case_a, case_b):
                headers = record.get("headers", {})
                seen[record["case"]] = sorted(k for k in ("authorization", "x-api-key")
                                              if k in headers)
        ok_a = seen.get(case_a) == ["authorization", "x-api-key"]
        ok_b = seen.get(case_b) == ["authorization", "x-api-key"]
        return AttackResult(
            "header stripping via clear Connection", ok_a and ok_b, "issue 14 #3",
            f"via A1 + rewriter: {reply_a.label}, sealed headers at the upstream "
            f"{seen.get(case_a)}; direct to B: {reply_b.label}, at the upstream "
            f"{seen.get(case_b)} (both must be [authorization, x-api-key])",
            {"via_a": seen.get(case_a), "direct": seen.get(case_b)})

    def response_header_injection(self) -> AttackResult:
        case = self.case("inject")
        p = Parts.of("GET", f"/api/page?case={case}", [
            ("x-mte-outbound-token", TOKEN),
            ("x-mte-upstream", f"http://127.0.0.1:{self.stack.tamper_port}"),
            ("x-fuzz-case", case)])
        reply = wire.exchange(self.stack.a1.port, p.raw(), timeout=20)
        injected_a = INJECTED_COOKIE.decode() in reply.values("set-cookie")
        # The reference client (what RelayClient uses): open an answer that went through the rewriter.
        victim = self._victim()
        sealed = victim.seal("GET", f"/api/page?case={self.case('inject')}", [], None, case="inj")
        reply_c = self.send(self.stack.tamper_port, sealed)
        try:
            headers, _ = sealed.open(reply_c)
            injected_c = any(n == "set-cookie" for n, _ in headers)
            opened = "opened"
        except Exception as error:  # noqa: BLE001 - any failure to open is reported
            injected_c, opened = False, f"not opened ({error})"
        passed = not injected_a and not injected_c and reply.status == 200
        return AttackResult(
            "clear response-header injection between relays", passed, "issue 14 #4",
            f"relay A answered {reply.label} with set-cookie {reply.values('set-cookie')}; the "
            f"reference client's open_response {opened}, exposes set-cookie: {injected_c}",
            {"relay_a": injected_a, "client": injected_c})

    def clear_response_headers_control(self) -> AttackResult:
        mark = self.log_mark()
        victim = self._victim()
        results = []
        for variant in ("clear header", "seal_headers=none"):
            case = self.case("rh")
            if variant == "clear header":
                sealed = victim.seal("GET", f"/api/x?case={case}", [], None, case=case)
                sealed.headers.append(("x-mte-response-headers", "content-type"))
            else:
                sealed = victim.seal("GET", f"/api/x?case={case}", [], None, case=case,
                                     options=SealOptions.build(seal_headers="none",
                                                               response_headers=["content-type"]))
            reply = self.send(self.stack.balancer_port, sealed)
            results.append(f"{variant}: {reply.label}"
                           f"{' authentic' if opens(sealed, reply) else ''}")
        time.sleep(0.3)
        critical = self.new_critical(mark)
        passed = not critical and all("500" not in r for r in results)
        return AttackResult(
            "clear x-mte-response-headers", passed, "issue 14 #7",
            f"{results}; new critical/traceback lines: {len(critical)}"
            + (f" (first: {critical[0]})" if critical else ""), {"results": results})

    def dns_label_64(self) -> AttackResult:
        mark = self.log_mark()
        out = []
        label = "a" * 64
        for proc in (self.stack.a2, self.stack.a1):
            p = Parts.of("GET", "/api/x", [("x-mte-outbound-token", TOKEN),
                                           ("x-mte-upstream", f"http://{label}.example")])
            reply = wire.exchange(proc.port, p.raw(), timeout=20)  # type: ignore[arg-type]
            out.append((proc.name, reply.label))
        time.sleep(0.3)
        critical = self.new_critical(mark)
        passed = not critical and all(label_.startswith("4") for _, label_ in out)
        return AttackResult(
            "64-char DNS label in x-mte-upstream", passed, "issue 14 #7",
            f"answers {out} (must be 4xx); new critical/traceback lines: {len(critical)}"
            + (f" (first: {critical[0]})" if critical else ""), {"answers": out})

    # ------------------------------------------------------------ floods

    def _pair_entries(self, count: int) -> list[dict[str, Any]]:
        return [start_pairing("00000000-0000-4000-8000-000000000000").request_entry()
                for _ in range(count)]

    def _pair_raw(self, client_id: str, entries: list[dict[str, Any]], stamp: int) -> bytes:
        body = []
        for i, entry in enumerate(entries):
            body.append(dict(entry, pairId=f"flood{stamp:08d}x{i:04d}{os.getpid()}"[:64]))
        return wire.request_bytes("POST", "/api/mte-pair", [("x-mte-relay", client_id),
                                  ("content-type", "application/json")], json.dumps(body).encode())

    def pairing_flood_victim_id(self) -> AttackResult:
        port = self.stack.b1.port
        victim_id = client_id_for(SECRET_B)
        entry = self._pair_entries(1)
        count = max(110, int(160 * self.scale))
        statuses: Counter = Counter()

        def flood(i: int) -> None:
            reply = wire.exchange(port, self._pair_raw(victim_id, entry, i),  # type: ignore[arg-type]
                                  source=ATTACKER_SOURCE, timeout=30)
            statuses[reply.label] += 1

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(flood, range(count)))
        victim = []
        for _ in range(5):
            pending = start_pairing(victim_id[:36])
            reply, _ = pair(port, victim_id, [pending], source=VICTIM_SOURCE)  # type: ignore[arg-type]
            victim.append(reply.label)
        passed = all(v == "200" for v in victim)
        return AttackResult(
            "pairing flood on a victim's client id", passed, "issue 14 #5",
            f"{count} one-entry pairings with the victim's (clear) id from {ATTACKER_SOURCE}: "
            f"{dict(statuses)}; then the victim's own 5 pairings from {VICTIM_SOURCE}: {victim}",
            {"flood": dict(statuses), "victim": victim})

    def _cpu_seconds(self, pid: int) -> float:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _flood_load(self, label: str, ids: int, rate: float | None, entries: int,
                    seconds: float) -> dict[str, Any]:
        """Flood B1 (``rate`` req/s, None: as fast as 4 senders go) while a new client pairs."""
        port = self.stack.b1.port
        pool_entries = self._pair_entries(entries)
        client_ids = [client_id_for(SECRET_B) for _ in range(ids)]
        stop = time.monotonic() + seconds
        statuses: Counter = Counter()
        stored = [0]
        lock = threading.Lock()
        sent = [0]

        def sender(k: int, senders: int) -> None:
            i = k
            start = time.monotonic()
            while time.monotonic() < stop:
                if rate is not None:
                    due = start + (i // senders) / (rate / senders)
                    if due > time.monotonic():
                        time.sleep(due - time.monotonic())
                        continue
                raw = self._pair_raw(client_ids[i % ids], pool_entries, i)
                reply = wire.exchange(port, raw, source=ATTACKER_SOURCE, timeout=30)  # type: ignore[arg-type]
                with lock:
                    statuses[reply.label] += 1
                    sent[0] += 1
                    if reply.status == 200:
                        stored[0] += entries
                i += senders

        latencies: list[float] = []
        victim_status: Counter = Counter()
        cpu0 = self._cpu_seconds(self.stack.b1.pid)
        t0 = time.monotonic()
        senders = 4
        threads = [threading.Thread(target=sender, args=(k, senders)) for k in range(senders)]
        for t in threads:
            t.start()
        while time.monotonic() < stop:
            victim_id = client_id_for(SECRET_B)
            pending = start_pairing(victim_id[:36])
            started = time.monotonic()
            reply, _ = pair(port, victim_id, [pending], source=VICTIM_SOURCE)  # type: ignore[arg-type]
            latencies.append((time.monotonic() - started) * 1000)
            victim_status[reply.label] += 1
            time.sleep(0.2)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        cpu = (self._cpu_seconds(self.stack.b1.pid) - cpu0) / elapsed * 100
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0
        return {"label": label, "seconds": round(elapsed, 1), "flood_requests": sent[0],
                "flood_rate": round(sent[0] / elapsed, 1), "flood_statuses": dict(statuses),
                "pairs_stored_per_s": round(stored[0] / elapsed, 1),
                "relay_cpu_percent": round(cpu, 1),
                "new_client_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
                "new_client_p99_ms": round(p99, 1), "new_client_statuses": dict(victim_status),
                "new_client_pairings": len(latencies)}

    def pairing_flood_load(self) -> AttackResult:
        seconds = max(3.0, 15 * self.scale)
        # Issue 14's measure: a 50 req/s flood on one id and on 200 ids must leave a new
        # client's pairing p99 <= 100 ms and cost the relay <= 25 % CPU.  A closed-loop flood
        # as fast as 4 senders go is run and reported too, not judged: the relay's CPU is
        # then bounded only by what answering a 429 costs (HTTP parsing, the access line),
        # and on a 2-core machine the flooding threads share the cores with the relay and
        # the probe, so the probe's latency measures the machine as much as the relay.
        single = self._flood_load("one id at 50 req/s", 1, 50.0, 1, seconds)
        many = self._flood_load("200 ids at 50 req/s, 8-entry batches", 200, 50.0, 8, seconds)
        flat = self._flood_load("200 ids, 8-entry batches, 4 senders flat out (reported)",
                                200, None, 8, seconds)
        paced_ok = all(r["new_client_p99_ms"] <= 100 and r["relay_cpu_percent"] <= 25
                       and set(r["new_client_statuses"]) == {"200"} for r in (single, many))
        flat_ok = set(flat["new_client_statuses"]) == {"200"}  # never locked out
        evidence = "; ".join(
            f"{r['label']}: {r['flood_rate']} req/s for {r['seconds']} s, relay B1 CPU "
            f"{r['relay_cpu_percent']} %, {r['pairs_stored_per_s']} pairs stored/s, new client "
            f"pairing p50 {r['new_client_p50_ms']} ms / p99 {r['new_client_p99_ms']} ms "
            f"{r['new_client_statuses']}" for r in (single, many, flat))
        return AttackResult("pairing flood cost (target at 50 req/s: new client p99 ≤ 100 ms, "
                            "CPU ≤ 25 %)", paced_ok and flat_ok, "issue 14 #5", evidence,
                            {"single": single, "many": many, "flat_out": flat})

    def store_reply_confusion(self) -> AttackResult:
        """Requests aborted mid-body flood B1/B2 while valid requests and replays run."""
        stack = self.stack
        flood_count = max(200, int(10000 * self.scale))
        client = Client.paired(stack.b1.port, SECRET_B, 16)  # type: ignore[arg-type]
        checker = Client.paired(stack.b1.port, SECRET_B, 4)  # type: ignore[arg-type]
        rss0 = {p.name: _rss_kib(p.pid) for p in (stack.b1, stack.b2)}
        mark = self.log_mark()
        junk = os.urandom(30000)
        statuses: Counter = Counter()
        checks: Counter = Counter()
        replays_accepted = [0]
        done = threading.Event()

        def aborted(i: int) -> None:
            sealed = client.seal("POST", f"/api/upload?case=abort-{i}", [], b"", case=f"ab{i}",
                                 pair_index=i, options=SealOptions.build(framing="MKE"))
            head = Parts(b"POST", sealed.target.encode(),
                         [(n.encode(), v.encode()) for n, v in sealed.headers], b"",
                         "length", length=300000)
            wire.exchange(stack.balancer_port, head.raw() + junk, abort=True)
            statuses["sent"] += 1

        def check() -> None:
            while not done.is_set():
                case = self.case("srv")
                sealed = checker.seal("GET", f"/api/check?case={case}", [], None, case=case,
                                      pair_index=checks["n"])
                reply = self.send(stack.balancer_port, sealed, timeout=30)
                checks["n"] += 1
                checks[reply.label if opens(sealed, reply) or reply.status != 200
                       else "200-not-authentic"] += 1
                first_ok = reply.status == 200
                again = self.send(stack.balancer_port, sealed, timeout=30)
                # Only a copy of a request that was accepted is a replay: after a 503 the
                # copy is the first delivery (the executed-twice count checks the rest).
                if first_ok and (again.status == 200 or again.header("x-mte-relay")):
                    replays_accepted[0] += 1
                checks[f"copy-{again.label}"] += 1

        settle = 5 if self.scale >= 1 else 1

        def flood(offset: int) -> float:
            done.clear()
            checkers = [threading.Thread(target=check) for _ in range(2)]
            for t in checkers:
                t.start()
            t0 = time.monotonic()
            with ThreadPoolExecutor(64) as pool:
                list(pool.map(aborted, range(offset, offset + flood_count)))
            elapsed = time.monotonic() - t0
            done.set()
            for t in checkers:
                t.join()
            time.sleep(settle)
            return elapsed

        # CPython rarely hands memory back to the OS, so "back to baseline" is measured as
        # "a second, identical flood does not grow it again": a leak grows with every flood.
        flood_seconds = flood(0)
        rss1 = {p.name: _rss_kib(p.pid) for p in (stack.b1, stack.b2)}
        flood(flood_count)
        rss2 = {p.name: _rss_kib(p.pid) for p in (stack.b1, stack.b2)}
        confusion = []
        store_503 = 0
        for proc in (stack.b1, stack.b2):
            lines, _ = logscan.read(proc.name, proc.log_path, mark[proc.name])
            found = logscan.scan(lines)
            confusion += [f"{proc.name}: {logscan.first_line(l.text)}" for l in found.store_confusion]
            store_503 += sum(1 for l in lines if _ANSWERED_503.search(l.text))
        hits = Counter(r.get("case") for r in stack.records() if str(r.get("case", "")).startswith("atk-srv"))
        duplicates = sum(1 for n in hits.values() if n > 1)
        first = {name: (rss1[name] - rss0[name]) / 1024 for name in rss0}
        growth = {name: round((rss2[name] - rss1[name]) / 1024, 1) for name in rss0}
        # A leak grows about as much on every flood; the allocator's high-water mark only
        # once.  Allowed on the second flood: 10 MiB or a third of the first flood's growth.
        memory_ok = all(growth[n] <= max(10.0, first[n] / 3) for n in rss0)
        not_authentic = checks.get("200-not-authentic", 0)
        passed = (not confusion and replays_accepted[0] == 0 and duplicates == 0
                  and not_authentic == 0 and memory_ok)
        return AttackResult(
            "store replies under a starved loop (aborted-mid-body flood)", passed, "issue 14 #2",
            f"2 × {flood_count} requests aborted mid-body (the first in {flood_seconds:.1f} s) "
            f"through the balancer; {checks['n']} checked requests during them: "
            f"{ {k: v for k, v in checks.items() if k != 'n'} }; replays accepted "
            f"{replays_accepted[0]}; executed twice {duplicates}; store-confusion log lines "
            f"{len(confusion)}{' (first: ' + confusion[0] + ')' if confusion else ''}; 503 log "
            f"lines {store_503}; RSS MiB before / after flood 1 / after flood 2 (target: flood 2 "
            f"adds ≤ max(10, a third of flood 1's growth)) "
            + ", ".join(f"{n} {rss0[n] // 1024}/{rss1[n] // 1024}/{rss2[n] // 1024}" for n in rss0),
            {"checks": dict(checks), "replays_accepted": replays_accepted[0],
             "confusion": len(confusion), "rss_growth_mib": growth, "flood": flood_count,
             # Log lines are counted by the campaign's log scan; these are the answers.
             "mismatched_answers": replays_accepted[0] + duplicates + not_authentic})

    # ------------------------------------------------------------ connections, shutdown

    def _sigterm_phase(self, relay: Any, build: Callable[[int, str], tuple[Any, bytes]],
                       count: int = 100) -> dict[str, Any]:
        """``count`` keep-alive requests in flight through ``relay`` on a slow upstream, then SIGTERM."""
        stack = self.stack
        prefix = self.case(f"term-{relay.name}")
        replies: list[tuple[Any, wire.Reply]] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            sealed, raw = build(i, f"{prefix}-{i}")
            reply = wire.exchange(relay.port, raw, timeout=40)
            with lock:
                replies.append((sealed, reply))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        arrived = 0
        while time.monotonic() < deadline:
            arrived = sum(1 for r in stack.records()
                          if str(r.get("case", "")).startswith(prefix + "-"))
            if arrived >= count:
                break
            time.sleep(0.05)
        os.kill(relay.pid, signal.SIGTERM)
        for t in threads:
            t.join()
        try:
            code = relay.popen.wait(30)
        except Exception:  # noqa: BLE001
            code = None
        labels = Counter(r.label for _, r in replies)
        complete = sum(1 for sealed, r in replies
                       if r.status == 200 and (opens(sealed, r) if sealed is not None
                                               else b'"case"' in r.body))
        drained = [l for l in relay.log_text().splitlines() if "Drained" in l]
        return {"relay": relay.name, "in_flight": arrived, "count": count, "labels": dict(labels),
                "complete": complete, "exit": code,
                "said": logscan.first_line(drained[-1], 160) if drained else "nothing about draining"}

    def lost_answer_at_sigterm(self) -> AttackResult:
        """Inbound (half sealed, half pass-through) and outbound, 100 in flight each."""
        stack = self.stack
        inbound = stack.start_inbound(f"b3-shutdown-{self._counter}")
        client = Client.paired(stack.b1.port, SECRET_B, 4)  # type: ignore[arg-type]  # shared Redis

        def inbound_request(i: int, case: str) -> tuple[Any, bytes]:
            if i % 2:
                sealed = client.seal("GET", f"/slow?ms=2000&case={case}", [], None, case=case,
                                     pair_index=i)
                lines = [f"GET {sealed.target} HTTP/1.1", "Host: 127.0.0.1",
                         *[f"{n}: {v}" for n, v in sealed.headers]]
                return sealed, ("\r\n".join(lines) + "\r\n\r\n").encode()
            return None, f"GET /slow?ms=2000&case={case} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

        def outbound_request(i: int, case: str) -> tuple[Any, bytes]:
            return None, (f"GET /slow?ms=2000&case={case} HTTP/1.1\r\nHost: x\r\n"
                          f"x-mte-outbound-token: {TOKEN}\r\n"
                          f"x-mte-upstream: http://127.0.0.1:{stack.balancer_port}\r\n"
                          f"x-fuzz-case: {case}\r\n\r\n").encode()

        phases = [self._sigterm_phase(inbound, inbound_request)]
        outbound = stack.start_outbound(f"b3-shutdown-a-{self._counter}")
        phases.append(self._sigterm_phase(outbound, outbound_request))
        passed = all(p["complete"] == p["count"] for p in phases)
        return AttackResult(
            "answers lost at SIGTERM (100 in flight, keep-alive)", passed, "issue 14 #6",
            "; ".join(f"{'inbound (half sealed)' if i == 0 else 'outbound'} relay: "
                      f"{p['in_flight']} of {p['count']} in flight at the upstream at SIGTERM, "
                      f"clients got {p['labels']}, {p['complete']} complete answers, exit "
                      f"{p['exit']}; relay said: {p['said']}" for i, p in enumerate(phases)),
            {"phases": phases})

    def slowloris(self, connections: int = 300, seconds: float = 75.0,
                  interval: float = 5.0) -> AttackResult:
        proc = self.stack.b1
        socks = []
        for _ in range(connections):
            try:
                sock = wire.connect(proc.port, 5)  # type: ignore[arg-type]
                sock.sendall(b"GET /api/mte-echo HTTP/1.1\r\nHost: x\r\n")
                socks.append(sock)
            except OSError:
                break
        fds0 = _fds(proc.pid)
        start = time.monotonic()
        closed_at: list[float] = []
        alive = list(socks)
        while alive and time.monotonic() - start < seconds:
            time.sleep(interval)
            still = []
            for sock in alive:
                try:
                    sock.sendall(b"X")
                    sock.setblocking(False)
                    try:
                        if sock.recv(1024) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    sock.setblocking(True)
                    still.append(sock)
                except OSError:
                    closed_at.append(time.monotonic() - start)
                    sock.close()
            alive = still
        held = len(alive)
        for sock in socks:
            sock.close()
        passed = held == 0
        return AttackResult(
            "slowloris (a header byte every few seconds)", passed, "issue 14 #7",
            f"{len(socks)} connections each sending one header byte every {interval:g} s; after "
            f"{time.monotonic() - start:.0f} s {held} were still open (relay B1 held {fds0} fds); "
            f"{len(closed_at)} cut by the relay"
            + (f", first after {min(closed_at):.0f} s" if closed_at else ""),
            {"held": held, "opened": len(socks), "fds": fds0})

    def origin_state(self) -> AttackResult:
        """Relay A without an allow-list, asked for thousands of distinct remote origins.

        Every origin is a closed port on a loopback address (no DNS, nothing
        listening): what is measured is the state relay A keeps per origin.
        """
        proc = self.stack.a2
        batch = max(300, int(3000 * self.scale))

        def origins(start: int) -> None:
            def one(i: int) -> None:
                n = start + i
                host = f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255 or 1}"
                raw = wire.request_bytes("GET", "/api/x", [
                    ("x-mte-outbound-token", TOKEN), ("x-mte-upstream", f"http://{host}:9")])
                wire.exchange(proc.port, raw, timeout=20)  # type: ignore[arg-type]
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(one, range(batch)))

        origins(1 << 16)          # warm-up: caches, pools and allocator reach their size
        rss0 = _rss_kib(proc.pid)
        origins(2 << 16)          # as many new origins again
        time.sleep(1)
        rss1 = _rss_kib(proc.pid)
        per_thousand = (rss1 - rss0) * 1000 / batch
        passed = per_thousand <= 100
        return AttackResult(
            "per-origin state in relay A (distinct x-mte-upstream)", passed, "issue 14 #7",
            f"{batch} distinct origins after {batch} others: relay A2 RSS {rss0 // 1024} → "
            f"{rss1 // 1024} MiB, {per_thousand:.0f} KiB per 1,000 origins (target ≤ 100)",
            {"kib_per_1000": round(per_thousand), "rss_before_kib": rss0, "rss_after_kib": rss1})

    def in_flight_gauge(self) -> AttackResult:
        values = {}
        for name, port in self.stack.metrics_ports.items():
            reply = wire.exchange(port, wire.request_bytes("GET", "/metrics", []))
            for line in reply.body.decode("utf-8", "replace").splitlines():
                if line.startswith("mterelay_in_flight_requests"):
                    values[name] = float(line.split()[-1])
        passed = bool(values) and all(v == 0 for v in values.values())
        return AttackResult(
            "in-flight gauge back to 0 when idle", passed, "issue 14 #7 (GET * / OPTIONS *)",
            f"mterelay_in_flight_requests when idle: {values}", {"values": values})


#: An access line of an answer 503 ("POST /path 503 1.2ms").
_ANSWERED_503 = re.compile(r"^[A-Z]+ \S+ 503 [0-9.]+ms")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


#: name -> (method, included in the smoke run)
ATTACKS: dict[str, tuple[Callable[[Attacks], AttackResult], bool]] = {
    "replay-after-repair": (Attacks.replay_after_repair, True),
    "knockout-via-repair": (Attacks.knockout_via_repair, True),
    "header-stripping": (Attacks.header_stripping, True),
    "response-header-injection": (Attacks.response_header_injection, True),
    "clear-response-headers": (Attacks.clear_response_headers_control, True),
    "dns-label-64": (Attacks.dns_label_64, True),
    "truncated-final-chunk": (Attacks.truncated_final_chunk, True),
    "pairing-flood-victim-id": (Attacks.pairing_flood_victim_id, True),
    "store-reply-confusion": (Attacks.store_reply_confusion, True),
    "lost-answer-at-sigterm": (Attacks.lost_answer_at_sigterm, True),
    "pairing-flood-load": (Attacks.pairing_flood_load, False),
    "slowloris": (Attacks.slowloris, False),
    "origin-state": (Attacks.origin_state, False),
    # Flushes Redis: every pair of the campaign is gone afterwards, so it runs last.
    "replay-after-flush": (Attacks.replay_after_flush, True),
    "in-flight-gauge": (Attacks.in_flight_gauge, True),
}
