"""The results document (JSON) and the Markdown table made from it (pure).

Everything printed is computed from the JSON document alone, so a saved
``bench/results/*.json`` can be printed again (``python -m bench.report
FILE``) and the formatter is tested on hand-made documents.  Throughput is
*good* answers per second (status < 400): an error answer is not
throughput, and errors get a column of their own.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

SCHEMA = "mterelay-bench/1"
NA = "n/a"

Doc = Mapping[str, Any]


# ---------------------------------------------------------------- document


def target_entry(name: str, label: str, available: bool, note: str = "",
                 **extra: Any) -> dict[str, Any]:
    """One measured thing (direct, baseline, relay, relay with workers)."""
    return {"name": name, "label": label, "available": available, "note": note, **extra}


def run_entry(target: str, connections: int, result: Mapping[str, Any],
              cpu: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One wrk run in the sweep: ``result`` is ``WrkResult.to_json()``, ``cpu`` who used the CPU."""
    return {"target": target, "connections": connections, **result, "cpu": dict(cpu or {})}


def build_document(*, timestamp: str, started: str, finished: str, command: list[str],
                   machine: Mapping[str, Any], settings: Mapping[str, Any],
                   targets: Iterable[Mapping[str, Any]], runs: Iterable[Mapping[str, Any]],
                   fixed_rate: Mapping[str, Any] | None, profile: Mapping[str, Any] | None,
                   logs: Mapping[str, Any],
                   teardown: Mapping[str, Any] | None = None,
                   compare: Mapping[str, Any] | None = None,
                   light_load: Mapping[str, Any] | None = None,
                   memory: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON written to ``bench/results/<timestamp>.json``: every raw number.

    ``compare`` (``--compare REV`` only; the key is absent otherwise): the
    revision, its target's name and label, ``levels`` and ``fixed_rate``,
    the relay vs relay@REV figures of :func:`compare_levels` and
    :func:`compare_fixed_rate`.  ``light_load`` (one request at a time and
    paced, per target) and ``memory`` (the relay per connection and per
    pair) are None when not run.
    """
    doc = {
        "schema": SCHEMA,
        "timestamp": timestamp,
        "started": started,
        "finished": finished,
        "command": list(command),
        "machine": dict(machine),
        "settings": dict(settings),
        "targets": [dict(t) for t in targets],
        "runs": [dict(r) for r in runs],
        "fixed_rate": dict(fixed_rate) if fixed_rate is not None else None,
        "profile": dict(profile) if profile is not None else None,
        "logs": dict(logs),
        "teardown": dict(teardown or {}),
        "light_load": dict(light_load) if light_load is not None else None,
        "memory": dict(memory) if memory is not None else None,
    }
    if compare is not None:
        doc["compare"] = dict(compare)
        doc["compare"]["levels"] = compare_levels(doc)
        doc["compare"]["fixed_rate"] = compare_fixed_rate(doc)
    return doc


def check_document(doc: Doc) -> list[str]:
    """Problems with a document's shape (empty list: fine); used by the tests."""
    problems = []
    for key in ("schema", "timestamp", "machine", "settings", "targets", "runs", "logs"):
        if key not in doc:
            problems.append(f"missing {key}")
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}")
    names = {t.get("name") for t in doc.get("targets", [])}
    compared = doc.get("compare")
    if compared is not None:
        for key in ("rev", "commit", "short", "target", "label", "levels"):
            if key not in compared:
                problems.append(f"compare lacks {key}")
        if compared.get("target") not in names:
            problems.append(f"compare target {compared.get('target')!r} is not a target")
    light = doc.get("light_load") or {}
    for name, entry in (light.get("targets") or {}).items():
        if name not in names:
            problems.append(f"light load for unknown target {name!r}")
        for kind in ("sequential", "paced"):
            found = entry.get(kind)
            if found is None:
                continue
            for key in ("answers", "errors", "achieved_rps", "latency_ms", "cpu_ms_per_answer"):
                if key not in found:
                    problems.append(f"light load {name} {kind} lacks {key}")
    for run in doc.get("runs", []):
        if run.get("target") not in names:
            problems.append(f"run for unknown target {run.get('target')!r}")
        for key in ("connections", "requests", "duration_s", "rps", "ok_rps", "non2xx",
                    "socket_errors", "latency_us"):
            if key not in run:
                problems.append(f"run {run.get('target')}@{run.get('connections')} lacks {key}")
    return problems


def median_run(runs: Iterable[Mapping[str, Any]], target: str, connections: int
               ) -> Mapping[str, Any] | None:
    """The run of ``target`` at ``connections``; with several rounds, the median one.

    Ranked by answers per second; with an even count the lower middle, so a
    lucky round never stands for the target.
    """
    found = [run for run in runs
             if run["target"] == target and run["connections"] == connections]
    if not found:
        return None
    found.sort(key=lambda run: good_rps(run) or 0.0)
    return found[(len(found) - 1) // 2]


def find_run(doc: Doc, target: str, connections: int) -> Mapping[str, Any] | None:
    return median_run(doc.get("runs", []), target, connections)


def round_ratios(doc: Doc, numerator: str, denominator: str, connections: int) -> list[float]:
    """``numerator`` ÷ ``denominator`` req/s of each round at one level (rounds paired)."""
    def by_round(target: str) -> dict[int, float]:
        return {run.get("round", 1): good_rps(run) or 0.0 for run in doc.get("runs", [])
                if run["target"] == target and run["connections"] == connections}
    top, bottom = by_round(numerator), by_round(denominator)
    return [top[r] / bottom[r] for r in sorted(top) if r in bottom and bottom[r] > 0]


def levels(doc: Doc) -> list[int]:
    return list(doc["settings"]["levels"])


def target_map(doc: Doc) -> dict[str, Mapping[str, Any]]:
    return {t["name"]: t for t in doc["targets"]}


def compare_target(doc: Doc) -> Mapping[str, Any] | None:
    """The ``--compare REV`` target (relay@<short>), None without ``--compare``."""
    compared = doc.get("compare")
    if not compared:
        return None
    return target_map(doc).get(compared.get("target", ""))


# ---------------------------------------------------------------- logs

#: Level markers of twisted.logger text lines (``[mterelay.outbound#warn]``), nginx
#: (``[error]``) and redis (``# WARNING``), tracebacks and Twisted's unhandled errors.
#: Case-sensitive on purpose: sealed URL paths are random base64 (``.../XwARn...``).
_PROBLEM = re.compile(r"#(?:warn|error|critical)\]|\[(?:warn|error|crit|alert|emerg)\]"
                      r"|# WARNING|Traceback \(most recent call last\)|Unhandled Error"
                      r"|Unhandled error")
#: An access line of the relay (``POST /bench 502 1.2ms``) or twisted.web's combined log.
_ACCESS_5XX = re.compile(r'\s(5\d\d)\s+[\d.]+ms\b|"\s(5\d\d)\s')
_TIMESTAMP = re.compile(r"^\S+[T ]\S+\s+")


def log_findings(text: str, limit: int = 20) -> dict[str, Any]:
    """Lines of a process log that tell of trouble: warnings, errors, 5xx answers.

    Returns how many there were and up to ``limit`` distinct ones (timestamps
    stripped for the comparison), so a run's JSON shows *why* requests
    failed.  Lines about a cancelled request (``CancelledError``) are counted
    apart: wrk closes its connections with requests in flight when a run
    ends, and a proxy then cancels them, which is not a failure under load.
    """
    count = cancelled = 0
    seen: dict[str, str] = {}
    cancelled_example: str | None = None
    for line in text.splitlines():
        if not (_PROBLEM.search(line) or _ACCESS_5XX.search(line)):
            continue
        if "CancelledError" in line:
            cancelled += 1
            cancelled_example = cancelled_example or line.strip()[:500]
            continue
        count += 1
        key = _TIMESTAMP.sub("", line)
        if key not in seen and len(seen) < limit:
            seen[key] = line.strip()[:500]
    return {"count": count, "lines": list(seen.values()), "cancelled": cancelled,
            "cancelled_example": cancelled_example}


# ---------------------------------------------------------------- numbers


def ms(latency_us: float | None) -> float | None:
    return None if latency_us is None else latency_us / 1000.0


def percentile_ms(run: Mapping[str, Any] | None, name: str) -> float | None:
    if run is None:
        return None
    value = run.get("latency_us", {}).get(name)
    return ms(value)


def added_ms(run: Mapping[str, Any] | None, reference: Mapping[str, Any] | None,
             name: str) -> float | None:
    """Latency percentile ``name`` of ``run`` minus the same of ``reference``, in ms."""
    a, b = percentile_ms(run, name), percentile_ms(reference, name)
    return None if a is None or b is None else a - b


def ratio_percent(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return 100.0 * numerator / denominator


def good_rps(run: Mapping[str, Any] | None) -> float | None:
    return None if run is None else float(run["ok_rps"])


# ---------------------------------------------------------------- formatting


def fmt_rps(value: float | None) -> str:
    if value is None:
        return NA
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_pct(value: float | None) -> str:
    return NA if value is None else f"{value:.0f} %"


def fmt_ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return NA
    if signed:
        return f"{value:+.2f}" if abs(value) < 100 else f"{value:+.0f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return NA if value is None else f"× {value:.2f}"


def fmt_errors(runs: Mapping[str, Mapping[str, Any] | None],
               short: Mapping[str, str]) -> str:
    """``0``, or per target: ``relay 12 (10 non-2xx, 2 socket)``."""
    parts = []
    for name, run in runs.items():
        if run is None:
            continue
        non2xx, sock = int(run["non2xx"]), int(run["socket_errors"])
        if non2xx or sock:
            detail = ", ".join(x for x in (f"{non2xx} non-2xx" if non2xx else "",
                                           f"{sock} socket" if sock else "") if x)
            parts.append(f"{short.get(name, name)} {non2xx + sock} ({detail})")
    return "; ".join(parts) if parts else "0"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def title_line(doc: Doc) -> str:
    s, m = doc["settings"], doc["machine"]
    return (
        f"## mterelay bench {doc['timestamp']} — upstream: {s['upstream_label']}; "
        f"wrk -t{s['wrk_threads']}, {s['duration_s']:g} s per run after {s['warmup_s']:g} s "
        f"warm-up, POST {s['request_body_bytes']} B → {s['response_body_bytes']} B; "
        f"{m.get('cores', '?')} cores ({m.get('cpu_model', '?')}), everything on this machine"
    )


def sweep_table(doc: Doc) -> str:
    """The main table: one row per concurrency level."""
    targets = target_map(doc)
    multi = next((t for t in doc["targets"] if t["name"].startswith("relay-w")), None)
    multi_name = multi["name"] if multi else "relay-w2"
    multi_label = multi["label"] if multi else "relay (2 workers)"
    short = {"direct": "direct", "baseline": "baseline", "relay": "relay",
             multi_name: multi_label}
    # --compare REV: relay@REV's req/s and % of baseline, each next to the relay's.
    other = compare_target(doc)
    other_name = other["name"] if other else None
    extra_rps = [f"{other['label']} req/s"] if other else []
    extra_pct = [f"{other['label']} % of baseline"] if other else []
    if other:
        short[other["name"]] = other["label"]
    header = (["c", "direct req/s", "baseline req/s", "relay req/s"] + extra_rps
              + [f"{multi_label} req/s", "relay % of baseline"] + extra_pct
              + ["relay % of direct", "baseline +p50 ms", "relay +p50 ms", "relay +p90 ms",
                 "relay +p99 ms", "errors"])
    names = ["direct", "baseline", "relay"] + ([other_name] if other_name else []) + [multi_name]
    rows = []
    for level in levels(doc):
        runs = {name: (find_run(doc, name, level) if targets.get(name, {}).get("available")
                       else None)
                for name in names}
        direct, baseline, relay, many = (runs[n] for n in ("direct", "baseline", "relay",
                                                            multi_name))
        theirs = runs.get(other_name) if other_name else None
        rows.append([
            str(level),
            fmt_rps(good_rps(direct)),
            fmt_rps(good_rps(baseline)),
            fmt_rps(good_rps(relay)),
            *([fmt_rps(good_rps(theirs))] if other else []),
            fmt_rps(good_rps(many)),
            fmt_pct(ratio_percent(good_rps(relay), good_rps(baseline))),
            *([fmt_pct(ratio_percent(good_rps(theirs), good_rps(baseline)))] if other else []),
            fmt_pct(ratio_percent(good_rps(relay), good_rps(direct))),
            fmt_ms(added_ms(baseline, direct, "p50"), signed=True),
            fmt_ms(added_ms(relay, direct, "p50"), signed=True),
            fmt_ms(added_ms(relay, direct, "p90"), signed=True),
            fmt_ms(added_ms(relay, direct, "p99"), signed=True),
            fmt_errors(runs, short),
        ])
    return markdown_table(header, rows)


def latency_table(doc: Doc) -> str:
    """Raw p50 / p90 / p99 (ms) per target and level."""
    shown = [t for t in doc["targets"]]
    header = ["c"] + [f"{t['label']} p50 / p90 / p99 ms" for t in shown]
    rows = []
    for level in levels(doc):
        row = [str(level)]
        for target in shown:
            run = find_run(doc, target["name"], level) if target["available"] else None
            if run is None or not run.get("latency_us"):
                row.append(NA)
            else:
                row.append(" / ".join(fmt_ms(percentile_ms(run, p)) for p in ("p50", "p90",
                                                                             "p99")))
        rows.append(row)
    return markdown_table(header, rows)


def cpu_ms_per_answer(run: Mapping[str, Any] | None,
                      target: Mapping[str, Any]) -> float | None:
    """CPU time the target's own processes spent per answer, in ms.

    Less sensitive to a busy machine than req/s: work per request does not
    change much when other programs take cores away, throughput does.
    """
    if run is None or not run.get("requests"):
        return None
    cpu = run.get("cpu") or {}
    cores = cpu.get("processes_cores") or {}
    names = target.get("processes") or []
    if not names or "elapsed_s" not in cpu or not any(n in cores for n in names):
        return None
    seconds = sum(cores.get(name, 0.0) for name in names) * cpu["elapsed_s"]
    return 1000.0 * seconds / run["requests"]


def cpu_table(doc: Doc) -> str:
    """CPU ms per answer for each target and level (its processes only, wrk excluded)."""
    shown = [t for t in doc["targets"]]
    header = ["c"] + [f"{t['label']} CPU ms/answer" for t in shown]
    rows = []
    for level in levels(doc):
        row = [str(level)]
        for target in shown:
            run = find_run(doc, target["name"], level) if target["available"] else None
            row.append(fmt_ms(cpu_ms_per_answer(run, target)))
        rows.append(row)
    return markdown_table(header, rows)


def cpu_ratio(doc: Doc, numerator: str, denominator: str, connections: int) -> float | None:
    """CPU per answer of ``numerator`` ÷ that of ``denominator`` at one level."""
    targets = target_map(doc)
    top, bottom = targets.get(numerator), targets.get(denominator)
    if not top or not bottom or not top.get("available") or not bottom.get("available"):
        return None
    mine = cpu_ms_per_answer(find_run(doc, numerator, connections), top)
    theirs = cpu_ms_per_answer(find_run(doc, denominator, connections), bottom)
    return None if mine is None or not theirs else mine / theirs


def baselines_table(doc: Doc) -> str:
    """Every column against the bare chain (issue 18's yardstick), one row per level.

    Empty when the document has no ``bare`` target (results of an older harness).
    """
    targets = target_map(doc)
    if "bare" not in targets:
        return ""
    other = compare_target(doc)
    multi = next((t for t in doc["targets"] if t["name"].startswith("relay-w")), None)
    columns = [name for name in ("direct", "sidecar", "bare", "baseline", "relay")
               if name in targets]
    if other:
        columns.append(other["name"])
    if multi:
        columns.append(multi["name"])
    judged = ["relay"] + ([other["name"]] if other else []) + ([multi["name"]] if multi else [])
    header = (["c"] + [f"{targets[n]['label']} req/s" for n in columns]
              + [f"{targets[n]['label']} ÷ bare req/s" for n in judged]
              + [f"{targets[n]['label']} ÷ bare CPU/answer" for n in judged] + ["errors"])
    short = {n: targets[n]["label"] for n in columns}
    rows = []
    for level in levels(doc):
        runs = {n: (find_run(doc, n, level) if targets[n].get("available") else None)
                for n in columns}
        bare = good_rps(runs.get("bare"))
        rows.append([str(level)] + [fmt_rps(good_rps(runs[n])) for n in columns]
                    + [fmt_ratio(None if good_rps(runs[n]) is None or not bare
                                 else good_rps(runs[n]) / bare) for n in judged]  # type: ignore
                    + [fmt_ratio(cpu_ratio(doc, n, "bare", level)) for n in judged]
                    + [fmt_errors(runs, short)])
    lines = ["### Against the bare two-hop treq chain", "",
             "bare chain = two twisted.web hops forwarding with treq over a persistent pool, "
             "nothing else (the baseline the relay is judged against); heavy chain = the "
             "same with an access line and header copies; nginx sidecar = nginx → TLS 1.3 → "
             "nginx. ÷ bare req/s > 1 and ÷ bare CPU/answer < 1 are better than the bare "
             "chain.", "", markdown_table(header, rows)]
    if doc["settings"].get("repeat", 1) > 1:
        spread = "; ".join(
            f"c={level}: " + ", ".join(f"{ratio:.2f}" for ratio in
                                      round_ratios(doc, "relay", "bare", level))
            for level in levels(doc))
        lines += ["", f"relay ÷ bare chain req/s round by round: {spread}."]
    return "\n".join(lines)


def light_cpu_ms(result: Mapping[str, Any]) -> float | None:
    """CPU ms of the target's processes per good answer of one light-load run."""
    cpu = result.get("cpu") or {}
    cores = cpu.get("processes_cores") or {}
    answers = result.get("answers") or 0
    if not answers or "elapsed_s" not in cpu or not cores:
        return None
    return 1000.0 * sum(cores.values()) * cpu["elapsed_s"] / answers


def light_added(section: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per target and kind: its p50 / p99 minus the reference's (direct), in ms."""
    targets = section.get("targets") or {}
    reference = targets.get(section.get("reference", "direct")) or {}
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, entry in targets.items():
        out[name] = {}
        for kind in ("sequential", "paced"):
            mine = (entry.get(kind) or {}).get("latency_ms") or {}
            base = (reference.get(kind) or {}).get("latency_ms") or {}
            out[name][kind] = {p: (None if mine.get(p) is None or base.get(p) is None
                                   else mine[p] - base[p]) for p in ("p50", "p99")}
    return out


def light_load_section(doc: Doc) -> str:
    """``### Light load``: one request at a time, and paced, with the added median."""
    light = doc.get("light_load")
    if not light:
        return "### Light load\n\nnot run."
    targets = target_map(doc)
    added = light.get("added") or light_added(light)
    header = ["target", "1-at-a-time p50 ms", "p99 ms", "added median over direct ms",
              "CPU ms/answer", f"paced {fmt_rps(light['rate_rps'])} req/s: achieved req/s",
              "p50 ms", "p99 ms", "added median over direct ms", "CPU ms/answer", "errors"]
    rows = []
    for name, entry in light["targets"].items():
        shown = targets.get(name, {}).get("label", name)
        if not entry.get("sequential") and not entry.get("paced"):
            rows.append([shown] + [NA] * 9 + [entry.get("note", NA)])
            continue
        row = [shown]
        errors = []
        for kind in ("sequential", "paced"):
            found = entry.get(kind)
            if not found:
                row += [NA] * (4 if kind == "sequential" else 5)
                continue
            latency = found["latency_ms"]
            if kind == "paced":
                row.append(fmt_rps(found["achieved_rps"]))
            row += [fmt_ms(latency.get("p50")), fmt_ms(latency.get("p99")),
                    fmt_ms(added.get(name, {}).get(kind, {}).get("p50"), signed=True),
                    fmt_ms(found.get("cpu_ms_per_answer"))]
            if found["errors"]:
                errors.append(f"{kind} {found['errors']}")
        rows.append(row + ["; ".join(errors) or "0"])
    lines = [f"### Light load: one request at a time, and paced at {fmt_rps(light['rate_rps'])} "
             f"req/s over {light['connections']} connections, {light['duration_s']:g} s each",
             "", markdown_table(header, rows), "",
             "Keep-alive client of bench/lightload.py; a paced request that found every "
             "connection busy counts from when it was due (no coordinated omission). Goals "
             "(issue 18): relay added median "
             f"≤ {light.get('goal_sequential_ms', 2.0):g} ms one at a time, ≤ "
             f"{light.get('goal_paced_ms', 3.0):g} ms paced."]
    rounds = {name: " / ".join(f"{v:.2f}" for v in entry["sequential"]["rounds_p50_ms"]
                               if v is not None)
              for name, entry in light["targets"].items()
              if len((entry.get("sequential") or {}).get("rounds_p50_ms") or []) > 1}
    if rounds:
        lines.append("One-at-a-time p50 per round (ms): " + "; ".join(
            f"{name}: {values}" for name, values in rounds.items()) + ".")
    return "\n".join(lines)


def _kib(value: float | None) -> str:
    return NA if value is None else f"{value:,.1f} KiB"


def memory_section(doc: Doc) -> str:
    """``### Memory``: the relay's RSS per connection and per pair."""
    found = doc.get("memory")
    if not found:
        return "### Memory\n\nnot run."
    if found.get("skipped"):
        return f"### Memory\n\nskipped: {found['skipped']}"
    lines = ["### Memory (relay pair, VmRSS)", ""]
    conns = found.get("connections")
    if conns:
        lines.append(
            f"* per connection ({conns['answers']} keep-alive connections to relay A held "
            f"open, errors {conns['errors']}): relay A {_kib(conns['a_kib_per_connection'])}, "
            f"relay B {_kib(conns['b_kib_per_connection'])}, pair "
            f"{_kib(conns['pair_kib_per_connection'])}")
    pairs = found.get("pairs")
    if pairs:
        problems = f"; problems: {pairs['problems'][0]}" if pairs.get("problems") else ""
        lines.append(
            f"* per pair ({pairs['created']} of {pairs['pairs']} pairs created at relay B): "
            f"relay B {_kib(pairs['b_kib_per_pair'])}, Redis "
            f"{_kib(pairs['redis_kib_per_pair'])}{problems}")
    lines += ["", f"{found.get('note', '')}"]
    return "\n".join(lines)


def fixed_rate_section(doc: Doc) -> str:
    fixed = doc.get("fixed_rate")
    if not fixed:
        return "### Fixed offered rate\n\nnot run."
    if fixed.get("skipped"):
        return f"### Fixed offered rate\n\nskipped: {fixed['skipped']}"
    lines = [
        f"### Fixed offered rate: {fmt_rps(fixed['target_rps'])} req/s = "
        f"{fixed['fraction']:g} × baseline max {fmt_rps(fixed['baseline_max_rps'])} req/s "
        f"(at c={fixed['baseline_max_at']}), {fixed['connections']} connections, "
        f"{fixed['duration_s']:g} s",
        "",
    ]
    header = ["target", "mean think time ms", "achieved req/s", "p50 ms", "p90 ms", "p99 ms",
              "CPU ms/answer", "errors"]
    rows = []
    targets = target_map(doc)
    names = ["baseline", "relay"]
    if fixed.get("compare_target"):
        names.append(fixed["compare_target"])
    for name in names:
        entry = fixed["targets"].get(name)
        shown = targets.get(name, {}).get("label", name)
        if not entry or not entry.get("result"):
            rows.append([shown, NA, NA, NA, NA, NA, NA, entry.get("note", NA) if entry else NA])
            continue
        run = dict(entry["result"], cpu=entry.get("cpu") or {})
        achieved = float(run["ok_rps"])
        mark = ""
        if entry.get("rate_missed"):
            off = 100.0 * (float(entry.get("steady_rps", achieved)) / fixed["target_rps"] - 1)
            mark = f" ({off:+.0f} % off the offered rate)"
        rows.append([
            shown, f"{entry['delay_ms']:.1f}", fmt_rps(achieved) + mark,
            fmt_ms(percentile_ms(run, "p50")), fmt_ms(percentile_ms(run, "p90")),
            fmt_ms(percentile_ms(run, "p99")),
            fmt_ms(cpu_ms_per_answer(run, targets.get(name, {}))),
            fmt_errors({name: run}, {name: shown}),
        ])
    lines.append(markdown_table(header, rows))
    added = fixed.get("relay_added_p50_ms")
    goal = fixed.get("goal_ms", 2.0)
    rounds = {name: entry.get("rounds_p50_ms") for name, entry in fixed["targets"].items()
              if len(entry.get("rounds_p50_ms") or []) > 1}
    if rounds:
        lines.append("")
        lines.append("Each row is the round with the median p50 of "
                     + "; ".join(f"{name}: " + " / ".join(f"{value:.2f}" for value in values)
                                 + " ms" for name, values in rounds.items()) + ".")
    lines.append("")
    if added is None:
        lines.append("Relay added median vs baseline: n/a")
    else:
        verdict = "met" if added <= goal else "not met"
        lines.append(f"Relay added median vs baseline: {fmt_ms(added, signed=True)} ms "
                     f"(goal ≤ {goal:g} ms: {verdict}); added p90 "
                     f"{fmt_ms(fixed.get('relay_added_p90_ms'), signed=True)} ms, added p99 "
                     f"{fmt_ms(fixed.get('relay_added_p99_ms'), signed=True)} ms")
    if fixed.get("compare_target"):
        name = fixed["compare_target"]
        label = targets.get(name, {}).get("label", name)
        added = fixed.get("compare_added_p50_ms")
        if added is None:
            lines.append(f"{label} added median vs baseline: n/a")
        else:
            verdict = "met" if added <= goal else "not met"
            lines.append(f"{label} added median vs baseline: {fmt_ms(added, signed=True)} ms "
                         f"(goal ≤ {goal:g} ms: {verdict}); added p90 "
                         f"{fmt_ms(fixed.get('compare_added_p90_ms'), signed=True)} ms, "
                         f"added p99 {fmt_ms(fixed.get('compare_added_p99_ms'), signed=True)} ms")
    return "\n".join(lines)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compare_levels(doc: Doc) -> list[dict[str, Any]]:
    """relay (this tree) against relay@REV at every level: the ``--compare`` figures.

    ``throughput_ratio`` is relay's good req/s over relay@REV's (> 1: this
    tree is faster); ``*_diff_ms`` are relay minus relay@REV (< 0: this tree
    answers sooner / spends less CPU per answer).  Empty without ``--compare``.
    """
    other = compare_target(doc)
    if other is None:
        return []
    relay = target_map(doc).get("relay", {})
    out = []
    for level in levels(doc):
        mine = find_run(doc, "relay", level) if relay.get("available") else None
        theirs = find_run(doc, other["name"], level) if other.get("available") else None
        mine_rps, their_rps = good_rps(mine), good_rps(theirs)
        mine_p50, their_p50 = percentile_ms(mine, "p50"), percentile_ms(theirs, "p50")
        mine_cpu, their_cpu = cpu_ms_per_answer(mine, relay), cpu_ms_per_answer(theirs, other)
        out.append({
            "connections": level,
            "relay_ok_rps": mine_rps, "compare_ok_rps": their_rps,
            "throughput_ratio": (mine_rps / their_rps
                                 if mine_rps is not None and their_rps else None),
            "relay_p50_ms": mine_p50, "compare_p50_ms": their_p50,
            "p50_diff_ms": _diff(mine_p50, their_p50),
            "relay_cpu_ms_per_answer": mine_cpu, "compare_cpu_ms_per_answer": their_cpu,
            "cpu_diff_ms": _diff(mine_cpu, their_cpu),
        })
    return out


def compare_fixed_rate(doc: Doc) -> dict[str, Any] | None:
    """relay against relay@REV at the fixed offered rate (None when not run for both)."""
    fixed = doc.get("fixed_rate") or {}
    name = fixed.get("compare_target")
    if not name:
        return None
    mine = (fixed.get("targets", {}).get("relay") or {}).get("result")
    theirs = (fixed.get("targets", {}).get(name) or {}).get("result")
    if not mine or not theirs:
        return None
    return {p: {"relay_ms": percentile_ms(mine, p), "compare_ms": percentile_ms(theirs, p),
                "diff_ms": added_ms(mine, theirs, p)} for p in ("p50", "p90", "p99")}


def _vs(diff: float | None, mine: float | None, theirs: float | None) -> str:
    """``-1.31 ms (21.79 vs 23.10 ms)``, or n/a."""
    if diff is None:
        return NA
    return f"{fmt_ms(diff, signed=True)} ms ({fmt_ms(mine)} vs {fmt_ms(theirs)} ms)"


def compare_section(doc: Doc) -> str:
    """``### relay vs relay @ <short>``: one line per level, and the fixed-rate one."""
    compared = doc.get("compare") or {}
    other = compare_target(doc)
    if other is None:
        return ""
    label = other["label"]
    subject = f" \"{compared['subject']}\"" if compared.get("subject") else ""
    lines = [f"### relay vs {label}", "",
             f"relay = this working tree; {label} = `--compare {compared.get('rev')}` = "
             f"{str(compared.get('commit', ''))[:12]}{subject}, the same relay pair run from a "
             f"worktree of it. Throughput × = relay req/s ÷ {label} req/s (> 1: this tree is "
             f"faster); differences are relay − {label} (< 0: this tree is quicker or "
             "cheaper).", ""]
    if not other.get("available"):
        lines.append(f"* {label}: {NA} — {other.get('note', '')}")
        return "\n".join(lines)
    for entry in compare_levels(doc):
        ratio = entry["throughput_ratio"]
        throughput = (f"{fmt_ratio(ratio)} ({fmt_rps(entry['relay_ok_rps'])} vs "
                      f"{fmt_rps(entry['compare_ok_rps'])} req/s)" if ratio is not None else NA)
        median = _vs(entry["p50_diff_ms"], entry["relay_p50_ms"], entry["compare_p50_ms"])
        cpu = _vs(entry["cpu_diff_ms"], entry["relay_cpu_ms_per_answer"],
                  entry["compare_cpu_ms_per_answer"])
        lines.append(f"* c={entry['connections']}: relay vs {label}: throughput {throughput}, "
                     f"median {median}, CPU per answer {cpu}")
    fixed = compare_fixed_rate(doc)
    if fixed is not None:
        offered = (doc.get("fixed_rate") or {}).get("target_rps")
        median = _vs(fixed["p50"]["diff_ms"], fixed["p50"]["relay_ms"],
                     fixed["p50"]["compare_ms"])
        lines.append(
            f"* fixed rate ({fmt_rps(offered)} req/s offered): relay vs {label}: median "
            f"{median}, p90 {fmt_ms(fixed['p90']['diff_ms'], signed=True)} ms, p99 "
            f"{fmt_ms(fixed['p99']['diff_ms'], signed=True)} ms")
    return "\n".join(lines)


def other_load(doc: Doc) -> tuple[float, float] | None:
    """(mean, max) cores used by processes outside the benchmark during measured runs."""
    values = [run["cpu"]["other_cores"] for run in doc.get("runs", [])
              if run.get("cpu", {}).get("other_cores") is not None]
    if not values:
        return None
    return sum(values) / len(values), max(values)


def notes(doc: Doc) -> list[str]:
    out = ["req/s: answers with status < 400 per second (errors are counted apart); "
           "+pN: that latency percentile minus direct's at the same concurrency."]
    load = other_load(doc)
    if load is not None:
        mean, peak = load
        warning = (" — the machine was busy, numbers are lower and noisier than on an "
                   "idle machine" if peak >= 0.25 else "")
        out.append(f"other processes on the machine used {mean:.2f} cores on average "
                   f"(at most {peak:.2f}) during the measured runs{warning}.")
    repeat = doc["settings"].get("repeat", 1)
    if repeat > 1:
        spread = "; ".join(
            f"c={level}: " + ", ".join(f"{ratio:.2f}" for ratio in
                                      round_ratios(doc, "relay", "baseline", level))
            for level in levels(doc))
        out.append(f"each cell is the median of {repeat} interleaved rounds (their order "
                   f"rotating); relay ÷ baseline req/s round by round: {spread}.")
    for target in doc["targets"]:
        if target.get("note"):
            state = "" if target["available"] else f"{NA}: "
            out.append(f"{target['label']}: {state}{target['note']}")
    return out


def format_report(doc: Doc) -> str:
    """Everything printed to stdout at the end of a run (Markdown)."""
    parts = [title_line(doc), "", sweep_table(doc), ""]
    parts += [f"* {line}" for line in notes(doc)]
    against = baselines_table(doc)
    if against:
        parts += ["", against]
    compared = compare_section(doc)
    if compared:
        parts += ["", compared]
    parts += ["", "### Latency per target", "", latency_table(doc), "",
              "### CPU per answer (the target's own processes; wrk and the upstream excluded)",
              "", cpu_table(doc), "", fixed_rate_section(doc)]
    if "light_load" in doc:
        parts += ["", light_load_section(doc)]
    if "memory" in doc:
        parts += ["", memory_section(doc)]
    profile = doc.get("profile")
    if profile:
        parts.append("")
        if profile.get("skipped"):
            parts.append(f"Profile: skipped: {profile['skipped']}")
        else:
            parts.append("Profile (py-spy, relay at c=50): " + ", ".join(profile.get("files", [])))
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    """``python -m bench.report FILE``: print the table of a saved results file."""
    if len(argv) != 2:
        print("usage: python -m bench.report bench/results/latest.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as handle:
        sys.stdout.write(format_report(json.load(handle)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
