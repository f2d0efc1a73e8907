"""The lean client's shortcuts give exactly what the general rules give.

Each fast path is checked against the general code it skips, over inputs
that take the shortcut and inputs that must not.
"""

from __future__ import annotations

from itertools import product

from twisted.trial.unittest import TestCase

from mterelay.http.leanclient import _keep_alive


def _keep_alive_by_tokens(version: str, connection: list[bytes]) -> bool:
    """The general rule, as RFC 9112 9.3 states it (the slow path of _keep_alive)."""
    tokens = {token.strip().lower() for value in connection for token in value.split(b",")}
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


class KeepAliveTests(TestCase):
    VALUES = [b"keep-alive", b"Keep-Alive", b" keep-alive ", b"close", b"CLOSE", b"close ",
              b"keep-alive, close", b"close, keep-alive", b"upgrade", b"te, keep-alive",
              b"", b"keep-alive,", b"x-close", b"closed"]

    def test_same_answer_as_the_token_rule(self) -> None:
        cases = [[]] + [[v] for v in self.VALUES] + [list(p) for p in
                                                      product(self.VALUES[:6], repeat=2)]
        for version in ("1.1", "1.0"):
            for connection in cases:
                self.assertEqual(_keep_alive(version, connection),
                                 _keep_alive_by_tokens(version, connection),
                                 (version, connection))

    def test_common_answers(self) -> None:
        self.assertTrue(_keep_alive("1.1", []))
        self.assertFalse(_keep_alive("1.0", []))
        self.assertTrue(_keep_alive("1.0", [b"keep-alive"]))
        self.assertFalse(_keep_alive("1.1", [b"close"]))
        self.assertFalse(_keep_alive("1.1", [b"keep-alive", b"close"]))
