"""Tests for the pure anti-replay window (mterelay.protocol.replay)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.replay import (
    MAX_SEQ, MAX_WIDTH, ReplayWindow, Verdict, validate_seq, validate_width)

A, R, T = Verdict.ACCEPTED, Verdict.REPLAYED, Verdict.TOO_OLD

seqs = st.integers(min_value=0, max_value=MAX_SEQ)
widths = st.sampled_from([1024, 2048, 4096])


class ModelWindow:
    """The obvious (unbounded-memory) definition the bitmap must match."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.seen: set[int] = set()
        self.top: int | None = None

    def accept(self, seq: int) -> Verdict:
        if self.top is not None and seq <= self.top - self.width:
            return T
        if seq in self.seen:
            return R
        self.seen.add(seq)
        self.top = seq if self.top is None else max(self.top, seq)
        return A


class ReplayWindowExamples(SynchronousTestCase):
    def test_starts_empty(self) -> None:
        window = ReplayWindow()
        self.assertEqual(window.width, 1024)
        self.assertIsNone(window.top)
        self.assertEqual(window.check(0), A)
        self.assertEqual(window.check(MAX_SEQ), A)

    def test_basic_verdicts(self) -> None:
        window = ReplayWindow(1024)
        self.assertEqual(window.accept(5), A)
        self.assertEqual(window.accept(5), R)
        self.assertEqual(window.accept(3), A)
        self.assertEqual(window.accept(2000), A)
        self.assertEqual(window.top, 2000)
        self.assertEqual(window.accept(976), T)   # 2000 - 1024
        self.assertEqual(window.accept(977), A)   # oldest number still inside
        self.assertEqual(window.accept(977), R)
        self.assertEqual(window.accept(1999), A)

    def test_check_does_not_mutate(self) -> None:
        window = ReplayWindow()
        window.accept(10)
        before = window.to_bytes()
        for seq in (9, 10, 11, 5000):
            window.check(seq)
        self.assertEqual(window.to_bytes(), before)

    def test_refusal_does_not_mutate(self) -> None:
        window = ReplayWindow()
        window.accept(5000)
        before = window.to_bytes()
        self.assertEqual(window.accept(5000), R)
        self.assertEqual(window.accept(1), T)
        self.assertEqual(window.to_bytes(), before)

    def test_slide_clears_skipped_positions(self) -> None:
        # 1 and 1025 share a ring position: after sliding to 1025, 1 is
        # too old and 1025 - 1 = 1024 .. were never seen.
        window = ReplayWindow(1024)
        for seq in range(0, 1024):
            self.assertEqual(window.accept(seq), A)
        self.assertEqual(window.accept(1500), A)
        for seq in range(1024, 1500):
            self.assertEqual(window.accept(seq), A, seq)
        for seq in range(477, 1024):
            self.assertEqual(window.accept(seq), R, seq)
        self.assertEqual(window.accept(476), T)

    def test_big_jump_resets(self) -> None:
        window = ReplayWindow(1024)
        window.accept(7)
        self.assertEqual(window.accept(10**15), A)
        self.assertEqual(window.accept(10**15 - 1), A)
        self.assertEqual(window.accept(7), T)

    def test_edges_of_sequence_space(self) -> None:
        window = ReplayWindow()
        self.assertEqual(window.accept(MAX_SEQ), A)
        self.assertEqual(window.accept(MAX_SEQ), R)
        self.assertEqual(window.accept(MAX_SEQ - 1023), A)
        self.assertEqual(window.accept(MAX_SEQ - 1024), T)
        self.assertEqual(window.accept(0), T)

    def test_invalid_sequence_numbers(self) -> None:
        window = ReplayWindow()
        for bad in (-1, MAX_SEQ + 1, 1.0, "1", True, None):
            self.assertRaises(ValueError, window.check, bad)
            self.assertRaises(ValueError, window.accept, bad)
        self.assertEqual(validate_seq(0), 0)

    def test_invalid_widths(self) -> None:
        for bad in (0, 512, 1000, 1536, MAX_WIDTH * 2, 1024.0, True):
            self.assertRaises(ValueError, ReplayWindow, bad)
        self.assertEqual(validate_width(MAX_WIDTH), MAX_WIDTH)

    def test_bytes_round_trip(self) -> None:
        window = ReplayWindow(2048)
        self.assertEqual(ReplayWindow.from_bytes(window.to_bytes()), window)
        for seq in (1, 3, 2050, 2049):
            window.accept(seq)
        data = window.to_bytes()
        self.assertEqual(len(data), 13 + 256)
        copy = ReplayWindow.from_bytes(data)
        self.assertEqual(copy, window)
        self.assertEqual(copy.accept(2049), R)
        self.assertEqual(copy.accept(2048), A)

    def test_from_bytes_rejects_garbage(self) -> None:
        window = ReplayWindow()
        window.accept(3)
        good = window.to_bytes()
        cases = [
            b"",
            good[:-1],
            good + b"\x00",
            b"\x02" + good[1:],                          # version
            good[:1] + (1000).to_bytes(4, "big") + good[5:],  # width
            good[:13] + bytes(128),                        # top's bit missing
            good[:13] + b"\xff" + bytes(127),              # bits below zero
            ReplayWindow().to_bytes()[:13] + b"\x01" + bytes(127),  # bits, no top
            good[:5] + (2**53 + 1).to_bytes(8, "big") + good[13:],  # top too big
        ]
        for data in cases:
            self.assertRaises(ValueError, ReplayWindow.from_bytes, data)

    def test_bitmap_layout(self) -> None:
        """Bit seq % width in byte //8, LSB first: the Redis store's layout."""
        window = ReplayWindow()
        window.accept(9)
        self.assertEqual(window.bitmap()[1], 0b10)
        window.accept(1024 + 7)
        bitmap = window.bitmap()
        self.assertEqual(bitmap[0], 0b10000000)
        self.assertEqual(bitmap[1], 0b10)


class ReplayWindowProperties(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(widths, st.lists(seqs, max_size=300))
    def test_never_accepts_twice(self, width: int, numbers: list[int]) -> None:
        window = ReplayWindow(width)
        accepted: set[int] = set()
        for seq in numbers + numbers:
            if window.accept(seq) is A:
                self.assertNotIn(seq, accepted)
                accepted.add(seq)

    @settings(max_examples=200, deadline=None)
    @given(widths, st.lists(seqs, max_size=300), seqs)
    def test_never_accepts_below_window(self, width: int, numbers: list[int],
                                        probe: int) -> None:
        window = ReplayWindow(width)
        for seq in numbers:
            top = window.top
            verdict = window.accept(seq)
            if top is not None and seq <= top - width:
                self.assertEqual(verdict, T)
        if window.top is not None and probe <= window.top - width:
            self.assertEqual(window.check(probe), T)

    @settings(max_examples=40, deadline=None)
    @given(widths, st.integers(0, MAX_SEQ - 5000), st.data())
    def test_accepts_fresh_numbers_in_any_order(self, width: int, base: int,
                                                data: st.DataObject) -> None:
        top = base + width - 1
        order = data.draw(st.permutations(range(base, top + 1)))
        window = ReplayWindow(width)
        window.accept(top)
        for seq in order:
            self.assertEqual(window.accept(seq), R if seq == top else A)
        for seq in order:
            self.assertEqual(window.accept(seq), R)
        self.assertEqual(window.check(base - 1) if base else T, T)

    @settings(max_examples=200, deadline=None)
    @given(widths, st.integers(0, MAX_SEQ - 10_000), st.lists(
        st.one_of(st.integers(0, 3000), st.integers(0, 10_000)), max_size=400))
    def test_matches_the_model(self, width: int, base: int,
                               offsets: list[int]) -> None:
        window, model = ReplayWindow(width), ModelWindow(width)
        for offset in offsets:
            seq = base + offset
            predicted = window.check(seq)
            verdict = window.accept(seq)
            self.assertEqual(predicted, verdict)
            self.assertEqual(verdict, model.accept(seq), seq)
            self.assertEqual(window.top, model.top)
        self.assertEqual(ReplayWindow.from_bytes(window.to_bytes()), window)
