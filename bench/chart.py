"""The PNG chart of a results document: throughput, median and p99 latency vs concurrency.

matplotlib is an optional extra (``pip install -e '.[bench]'``); without it
the run still prints its table and writes its JSON, and :func:`write_chart`
returns a message saying how to get the chart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.report import find_run, good_rps, levels, percentile_ms

_STYLE = {"direct": ("black", "o"), "baseline": ("tab:blue", "s"), "relay": ("tab:red", "^"),
          "bare": ("tab:cyan", "P"), "sidecar": ("tab:orange", "X")}


def style(name: str) -> tuple[str, str, str]:
    """(colour, marker, line style) of a target; ``relay@REV`` (--compare) is dashed."""
    if name.startswith("relay@"):
        return "tab:purple", "v", "--"
    color, marker = _STYLE.get(name, ("tab:green", "D"))
    return color, marker, "-"


def series(doc: Mapping[str, Any], name: str, metric: str) -> tuple[list[int], list[float]]:
    """(x, y) points of one target for ``rps`` / ``p50`` / ``p99``; missing runs left out."""
    xs, ys = [], []
    for level in levels(doc):
        run = find_run(doc, name, level)
        value = good_rps(run) if metric == "rps" else percentile_ms(run, metric)
        if value is not None:
            xs.append(level)
            ys.append(value)
    return xs, ys


def write_chart(doc: Mapping[str, Any], path: Path) -> str | None:
    """Write the chart to ``path``; returns None, or why no chart was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return ("matplotlib is not installed, so no chart was written: install the bench "
                "extras (`make bench` does, or `.venv/bin/pip install -e '.[bench]'`), "
                "or pass --no-chart")
    figure, axes = plt.subplots(1, 3, figsize=(16, 5))
    panels = [("rps", "good answers / s", "Throughput"),
              ("p50", "ms", "Median latency"), ("p99", "ms", "p99 latency")]
    for axis, (metric, unit, title) in zip(axes, panels):
        for target in doc["targets"]:
            if not target["available"]:
                continue
            xs, ys = series(doc, target["name"], metric)
            if not xs:
                continue
            color, marker, line = style(target["name"])
            axis.plot(xs, ys, marker=marker, color=color, linestyle=line,
                      label=target["label"])
        axis.set_title(title)
        axis.set_xlabel("concurrent connections (wrk -c)")
        axis.set_ylabel(unit)
        axis.set_xscale("log")
        axis.set_xticks(levels(doc))
        axis.set_xticklabels([str(level) for level in levels(doc)])
        axis.xaxis.set_minor_formatter(NullFormatter())
        # Log y everywhere: direct (nginx) is two orders of magnitude above the proxies.
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    settings = doc["settings"]
    figure.suptitle(f"mterelay bench {doc['timestamp']} — upstream {settings['upstream_label']}, "
                    f"{settings['duration_s']:g} s per point, "
                    f"{doc['machine'].get('cores', '?')} cores shared by wrk and all processes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
