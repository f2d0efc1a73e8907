"""``twistd`` for the benchmark's relays, saying first where ``mterelay`` comes from.

    python bench/relay_launcher.py -n --pidfile= mterelay

does what ``.venv/bin/twistd -n --pidfile= mterelay`` does
(``twisted.scripts.twistd.run``), after printing one line to stdout (the
relay's log file)::

    bench-launcher: {"mterelay": "<dir>/mterelay/__init__.py",
                     "plugin": "<dir>/twisted/plugins/mterelay_plugin.py", ...}

(on one line).  The modules are imported in this process, exactly as twistd then finds them
(``mterelay`` from ``sys.path``, the plugin through ``getPlugins`` as twistd
does), and stay in ``sys.modules``: the files named are the ones this relay
runs.  ``--compare REV`` uses it to prove that the relay of REV really runs
REV's code (bench/compare.py).  Nothing here imports the reactor.
"""

from __future__ import annotations

import json
import os
import sys

MARKER = "bench-launcher:"  # bench.compare.LAUNCHER_MARKER (not imported: keep sys.path clean)


def where() -> dict[str, object]:
    found: dict[str, object] = {
        "pid": os.getpid(), "python": sys.executable, "cwd": os.getcwd(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    try:
        import mterelay

        found["mterelay"] = mterelay.__file__
        found["version"] = getattr(mterelay, "__version__", None)
    except Exception as error:  # reported; twistd then fails with its own message
        found["mterelay_error"] = f"{type(error).__name__}: {error}"
    try:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        found["tapnames"] = sorted({p.tapname for p in getPlugins(IServiceMaker)
                                    if p.tapname == "mterelay"})
        module = sys.modules.get("twisted.plugins.mterelay_plugin")
        found["plugin"] = getattr(module, "__file__", None)
    except Exception as error:
        found["plugin_error"] = f"{type(error).__name__}: {error}"
    return found


#: Bench-only: run the relays on another reactor (issue 18's uvloop question).
#: "asyncio" is ``twistd --reactor=asyncio``; "uvloop" the same with uvloop's
#: event loop policy set first; empty (the default) is twistd's own choice (epoll).
REACTOR_KNOB = "MTERELAY_BENCH_REACTOR"
#: With it set, only relays whose ``mterelay`` is imported from under this
#: directory take that reactor, so one ``--compare`` run sets the same code
#: on both reactors side by side (``relay`` on the knob's, ``relay@REV`` on epoll).
REACTOR_TREE_KNOB = "MTERELAY_BENCH_REACTOR_TREE"


def choose_reactor(choice: str) -> str:
    """Put ``--reactor=asyncio`` on twistd's command line if asked; say which reactor runs."""
    if not choice:
        return "default"
    if choice not in ("asyncio", "uvloop"):
        raise SystemExit(f"{REACTOR_KNOB} must be asyncio or uvloop, not {choice!r}")
    if choice == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())
    sys.argv[1:1] = ["--reactor=asyncio"]
    return choice


def main() -> None:
    # Like the twistd console script, do not let this script's own directory (bench/,
    # with modules such as report.py) shadow anything the relay imports.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]
    found = where()
    choice = os.environ.get(REACTOR_KNOB, "")
    tree = os.environ.get(REACTOR_TREE_KNOB, "")
    if tree and not str(found.get("mterelay", "")).startswith(tree):
        choice = ""  # another target's relay (relay@REV): the default reactor
    found["reactor"] = choose_reactor(choice)
    print(f"{MARKER} {json.dumps(found)}", flush=True)
    sys.argv[0] = "twistd"
    from twisted.scripts.twistd import run

    sys.exit(run())


if __name__ == "__main__":
    main()
