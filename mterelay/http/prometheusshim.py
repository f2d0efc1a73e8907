"""The one prometheus_client internal mterelay uses, in one place.

With several worker processes each must write its metric values to files the
scraped process merges (prometheus_client's multiprocess mode).  The library
chooses its value class once, at import, from ``PROMETHEUS_MULTIPROC_DIR``;
the relay decides on workers later (after reading its settings), so it swaps
``values.ValueClass`` itself.  ``tests/unit/test_prometheusshim.py`` pins that a
metric created afterwards writes to the directory.
"""

from __future__ import annotations

__all__ = ["use_multiprocess_values"]


def use_multiprocess_values() -> None:
    """Make metrics created from now on keep their values in the multiprocess files.

    ``PROMETHEUS_MULTIPROC_DIR`` must be set in ``os.environ`` first.
    """
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue()
