"""service/gctuning: start-up objects frozen, the youngest threshold raised."""

from __future__ import annotations

import gc
import weakref

from twisted.trial import unittest

from mterelay.service.gctuning import YOUNG_THRESHOLD, freeze_now, tune_now, tune_when_running


class _Node:
    other: "_Node | None" = None


class FreezeTests(unittest.TestCase):

    def setUp(self) -> None:
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())

    def test_existing_objects_leave_the_scanned_generations(self) -> None:
        kept = [_Node()]
        self.assertTrue(any(o is kept for o in gc.get_objects()))
        frozen = freeze_now()
        self.assertGreater(frozen, 0)
        self.assertFalse(any(o is kept for o in gc.get_objects()))

    def test_startup_garbage_is_collected_not_frozen(self) -> None:
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle only the collector can free
        gone = weakref.ref(a)
        del a, b
        freeze_now()
        self.assertIsNone(gone())

    def test_objects_made_later_are_still_collected(self) -> None:
        freeze_now()
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        self.assertIsNone(gone())

    def test_freezes_once_the_reactor_runs(self) -> None:
        calls = []

        class Reactor:
            def callWhenRunning(self, f, *args):  # noqa: N802 (Twisted's name)
                calls.append(f)

        tune_when_running(Reactor())
        self.assertEqual(calls, [tune_now])

    def test_threshold_raised_never_lowered(self) -> None:
        gc.set_threshold(700, 10, 10)
        tune_now()
        self.assertEqual(gc.get_threshold(), (YOUNG_THRESHOLD, 10, 10))
        self.assertGreater(gc.get_freeze_count(), 0)
        gc.set_threshold(YOUNG_THRESHOLD * 2, 5, 5)
        tune_now()
        self.assertEqual(gc.get_threshold(), (YOUNG_THRESHOLD * 2, 5, 5))

    def test_disabled_collection_stays_disabled(self) -> None:
        gc.set_threshold(0, 10, 10)
        tune_now()
        self.assertEqual(gc.get_threshold()[0], 0)
