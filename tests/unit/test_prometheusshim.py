"""Pins prometheus_client's ``values.ValueClass`` switch (mterelay.http.prometheusshim)."""

from __future__ import annotations

import os
import tempfile

from prometheus_client import CollectorRegistry, Counter, values
from twisted.trial.unittest import TestCase

from mterelay.http.prometheusshim import use_multiprocess_values


class MultiprocessValueTests(TestCase):
    def test_metrics_created_afterwards_write_to_the_directory(self) -> None:
        directory = tempfile.mkdtemp(prefix="mterelay-shim-")
        before = values.ValueClass
        previous = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory

        def restore() -> None:
            values.ValueClass = before
            if previous is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous

        self.addCleanup(restore)
        use_multiprocess_values()
        counter = Counter("shim_pinned_total", "pins ValueClass", registry=CollectorRegistry())
        counter.inc()
        self.assertTrue(any(name.startswith("counter_") for name in os.listdir(directory)),
                        os.listdir(directory))
