"""service/gcfreeze: start-up objects leave the collector's generations."""

from __future__ import annotations

import gc
import weakref

from twisted.trial import unittest

from mterelay.service.gcfreeze import freeze_now, freeze_when_running


class _Node:
    other: "_Node | None" = None


class FreezeTests(unittest.TestCase):

    def setUp(self) -> None:
        self.addCleanup(gc.unfreeze)

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

        freeze_when_running(Reactor())
        self.assertEqual(calls, [freeze_now])
