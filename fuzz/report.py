"""The campaign's verdict: per entry point and per attack, as Markdown and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fuzz.attacks import AttackResult
from fuzz.logscan import LogFindings, first_line
from fuzz.runner import EntryStats


@dataclass
class Report:
    seed: int
    cases: int
    seconds: float
    entries: dict[str, EntryStats]
    logs: dict[str, LogFindings]          # per window (entry point, attack, "other")
    attacks: list[AttackResult]
    crashes: list[str]
    revision: str = ""
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        critical = sum(len(f.critical) for f in self.logs.values())
        return {
            "cases": sum(s.cases for s in self.entries.values()),
            "crashes": len(self.crashes),
            "critical_log_lines": critical,
            "refused_reached_upstream": sum(s.refused_reached for s in self.entries.values()),
            "replays_accepted": sum(s.replays_accepted for s in self.entries.values())
            + sum(1 for a in self.attacks if a.name.startswith("replay") and not a.passed),
            "mismatched_store_replies": sum(len(f.store_confusion) for f in self.logs.values())
            + sum(a.data.get("mismatched_answers", 0) for a in self.attacks),
            "valid_requests_failed": sum(s.valid_failed for s in self.entries.values()),
            "query_strings_logged": sum(len(f.query_leaks) for f in self.logs.values()),
            "attacks_failed": sum(1 for a in self.attacks if not a.passed),
        }

    @property
    def clean(self) -> bool:
        return all(v == 0 for k, v in self.totals().items() if k != "cases")

    def markdown(self) -> str:
        t = self.totals()
        out = [f"### Campaign summary (seed {self.seed}, {t['cases']:,} inputs, "
               f"{self.seconds:.0f} s{', ' + self.revision if self.revision else ''})", "",
               "| entry point | cases | statuses seen (count) | crashes | critical / traceback "
               "lines | refused but reached upstream | replays accepted | valid requests failed |",
               "|---|---:|---|---:|---:|---:|---:|---:|"]
        for name in sorted(self.entries):
            s = self.entries[name]
            statuses = ", ".join(f"{k} ×{v}" for k, v in sorted(s.statuses.items(),
                                                                   key=lambda kv: -kv[1])[:10])
            if len(s.statuses) > 10:
                statuses += f", … ({len(s.statuses)} kinds)"
            logs = self.logs.get(name)
            crit = len(logs.critical) if logs else 0
            out.append(f"| {name} | {s.cases:,} | {statuses} | "
                       f"{sum(1 for c in self.crashes if name in c)} | {crit} | "
                       f"{s.refused_reached} | {s.replays_accepted} | {s.valid_failed} |")
        out += ["", f"Totals: " + ", ".join(f"{k.replace('_', ' ')} **{v}**" for k, v in t.items()),
                "", "| attack | result | evidence |", "|---|---|---|"]
        for a in self.attacks:
            out.append(f"| {a.name} ({a.finding}) | {'pass' if a.passed else '**FAIL**'} | "
                       f"{a.evidence.replace('|', '/')} |")
        details = []
        for window, found in sorted(self.logs.items()):
            for line in found.critical[:3]:
                details.append(f"* {window}: {line.relay}: `{first_line(line.text, 200)}`"
                               .replace("|", "/"))
            for line in found.query_leaks[:2]:
                details.append(f"* query string logged ({window}): {line.relay}: "
                               f"`{first_line(line.text, 160)}`")
        for name, s in sorted(self.entries.items()):
            for ex in s.refused_reached_examples[:3]:
                details.append(f"* refused but reached ({name}): {ex}")
            for ex in s.valid_failed_examples[:3]:
                details.append(f"* valid request failed ({name}): {ex}")
        if self.crashes:
            details += [f"* crash: {c}" for c in self.crashes]
        if details:
            out += ["", "Examples:", ""] + details
        out += [f"* {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "seconds": round(self.seconds, 1), "revision": self.revision,
            "totals": self.totals(), "clean": self.clean, "crashes": self.crashes,
            "entries": {n: {"cases": s.cases, "statuses": dict(s.statuses),
                            "kinds": dict(s.kinds), "reached_upstream": s.reached,
                            "refused_reached_upstream": s.refused_reached,
                            "refused_reached_examples": s.refused_reached_examples,
                            "replays_accepted": s.replays_accepted,
                            "valid_failed": s.valid_failed,
                            "valid_failed_examples": s.valid_failed_examples,
                            "server_errors_5xx": s.server_errors}
                        for n, s in self.entries.items()},
            "logs": {w: {"critical": len(f.critical), "store_confusion": len(f.store_confusion),
                         "query_leaks": len(f.query_leaks),
                         "examples": [f"{l.relay}: {first_line(l.text, 300)}"
                                      for l in f.critical[:5]]}
                     for w, f in self.logs.items()},
            "attacks": [asdict(a) for a in self.attacks],
        }

    def write(self, path: Path) -> tuple[Path, Path]:
        path.parent.mkdir(parents=True, exist_ok=True)
        md = path.with_suffix(".md")
        js = path.with_suffix(".json")
        md.write_text(self.markdown(), "utf-8")
        js.write_text(json.dumps(self.as_json(), indent=2, default=str) + "\n", "utf-8")
        return md, js
