"""One RFC 9110 token rule (mterelay.http.headers.is_token) for settings, outbound options and the CLI."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from mterelay.http.headers import is_token
from mterelay.service.config import ConfigError, load_config

BASE = {
    "UPSTREAM": "http://127.0.0.1:9",
    "CLIENT_ID_SECRET": "s" * 40,
}


class TokenTests(SynchronousTestCase):
    def test_tokens(self) -> None:
        for good in ("content-type", "X-Api-Key", "GET", "a!#$%&'*+.^_`|~9"):
            self.assertTrue(is_token(good), good)
        for bad in ("", "a b", "a:b", "a\n", "naïve", "a,b"):
            self.assertFalse(is_token(bad), repr(bad))

    def test_header_name_with_a_trailing_newline_is_refused_at_start_up(self) -> None:
        """``^...$`` with ``match`` let ``"x-a\\n"`` through (``$`` matches before a final
        newline): an invalid header name passed validation and was added to every answer."""
        with self.assertRaises(ConfigError) as raised:
            load_config({**BASE, "HEADERS": json.dumps({"x-a\n": "v"})})
        self.assertIn("HEADERS", str(raised.exception))
