"""web/paths: the quick answer for plain paths is the full check's answer."""

from __future__ import annotations

import random
from urllib.parse import unquote_to_bytes

from twisted.trial.unittest import SynchronousTestCase

from mterelay.web.paths import path_problem, target_problem


def full_check(path: bytes) -> str | None:
    """path_problem before its quick turn (the reference)."""
    if not path.startswith(b"/"):
        return "path must start with /"
    decoded = unquote_to_bytes(path)
    if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
        return "path must not contain . or .. segments"
    if b"\x00" in decoded or b"\\" in decoded:
        return "path contains a forbidden character"
    return None


class QuickTurnTests(SynchronousTestCase):
    def test_same_answer_as_the_full_check(self) -> None:
        pieces = [b"/", b".", b"..", b"%2e", b"%2E", b"%2f", b"%5c", b"%00", b"%", b"\\",
                  b"\x00", b"a", b"api", b"-_~", b"x.y", b".well-known", b"%41", b"?"]
        rng = random.Random(18)
        for _ in range(20000):
            path = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 7)))
            if rng.random() < 0.8:
                path = b"/" + path
            self.assertEqual(path_problem(path), full_check(path), path)

    def test_plain_paths_pass(self) -> None:
        for path in (b"/", b"/api/x", b"/AbC-_9", b"/a.b/c.d", b"/.well-known/x"):
            self.assertIsNone(path_problem(path), path)
        self.assertIsNone(target_problem(b"/api/x?a=1&b=/../"))

    def test_refusals_still_refused(self) -> None:
        self.assertIsNotNone(path_problem(b"/a/../b"))
        self.assertIsNotNone(path_problem(b"/a/%2e%2E/b"))
        self.assertIsNotNone(path_problem(b"/a/."))
        self.assertIsNotNone(path_problem(b"/a\\b"))
        self.assertIsNotNone(path_problem(b"/a%00"))
        self.assertIsNotNone(path_problem(b"a"))
