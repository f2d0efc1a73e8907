"""``python -m fuzz``: the adversarial campaign (``make fuzz``); exit 1 unless clean."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fuzz.attacks import ATTACKS
from fuzz.campaign import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--seed", type=int, default=14, help="mutation seed (default 14)")
    parser.add_argument("--cases", type=int, default=110_000,
                        help="malformed inputs to send (default 110,000)")
    parser.add_argument("--threads", type=int, default=32, help="cases in flight (default 32)")
    parser.add_argument("--out", type=Path, default=Path("fuzz/results/campaign"),
                        help="results file stem: writes STEM.md, STEM.json, STEM-logs/")
    parser.add_argument("--attacks", default="all",
                        help="comma-separated attack names, 'all', 'smoke' or 'none'")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="size of the floods (1.0: issue 14's figures)")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick run: 300 cases, the fast attacks, small floods")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cases, args.scale, args.threads = min(args.cases, 300), 0.02, 16
        if args.attacks == "all":
            args.attacks = "smoke"
    if args.attacks == "all":
        names = list(ATTACKS)
    elif args.attacks == "smoke":
        names = [n for n, (_, quick) in ATTACKS.items() if quick]
    elif args.attacks == "none":
        names = []
    else:
        names = [n.strip() for n in args.attacks.split(",") if n.strip()]
        unknown = [n for n in names if n not in ATTACKS]
        if unknown:
            parser.error(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    slowloris = "slowloris" in names
    names = [n for n in names if n != "slowloris"]  # runs in the background of the cases
    report = run(args.seed, args.cases, names, args.out, args.threads, args.scale, slowloris)
    md, js = report.write(args.out)
    print(report.markdown())
    print(f"fuzz: wrote {md} and {js}", file=sys.stderr)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
