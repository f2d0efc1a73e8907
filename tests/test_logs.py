"""Log observers: level filtering and the JSON line format."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mterelay.logs import make_observer


class ObserverTests(SynchronousTestCase):
    def emit(self, level: str, fmt: str = "text") -> str:
        stream = io.StringIO()
        log = Logger(namespace="t", observer=make_observer(level, fmt, stream))
        log.debug("dbg {x}", x=1)
        log.info("inf {x}", x=2)
        log.warn("wrn {x}", x=3)
        log.error("err {x}", x=4)
        log.critical("crit {x}", x=5)
        return stream.getvalue()

    def test_levels(self) -> None:
        expected = {
            "trace": ["dbg", "inf", "wrn", "err", "crit"],
            "debug": ["dbg", "inf", "wrn", "err", "crit"],
            "info": ["inf", "wrn", "err", "crit"],
            "warning": ["wrn", "err", "crit"],
            "error": ["err", "crit"],
            "panic": ["crit"],
            "off": [],
        }
        for level, words in expected.items():
            out = self.emit(level)
            for word in ("dbg", "inf", "wrn", "err", "crit"):
                if word in words:
                    self.assertIn(word, out, level)
                else:
                    self.assertNotIn(word, out, level)

    def test_json_lines(self) -> None:
        lines = self.emit("info", "json").splitlines()
        self.assertEqual(len(lines), 4)
        record = json.loads(lines[0])
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "t")
        self.assertEqual(record["message"], "inf 2")
        self.assertTrue(record["time"].endswith("Z"))

    def test_json_structured_fields_and_failure(self) -> None:
        stream = io.StringIO()
        log = Logger(namespace="t", observer=make_observer("info", "json", stream))
        log.info("{method} {path}", method="GET", path="/x", status=200, duration_ms=1.5)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("boom", Failure())
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        self.assertEqual((first["method"], first["path"], first["status"]), ("GET", "/x", 200))
        self.assertEqual(first["duration_ms"], 1.5)
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", second["error"])

    def test_pool_chatter_hidden_at_info(self) -> None:
        stream = io.StringIO()
        observer = make_observer("info", "text", stream)
        Logger(namespace="twisted.web.client._HTTP11ClientFactory", observer=observer).info("Starting factory")
        self.assertEqual(stream.getvalue(), "")
        stream = io.StringIO()
        observer = make_observer("debug", "text", stream)
        Logger(namespace="twisted.web.client._HTTP11ClientFactory", observer=observer).info("Starting factory")
        self.assertIn("Starting factory", stream.getvalue())
