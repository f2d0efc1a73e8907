"""Log observers: level filtering and the JSON line format."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.logs import make_observer


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


class RequestIdLineTests(SynchronousTestCase):
    """Text lines of a request end with its id; JSON lines carry it as a field."""

    def text(self, level: str = "info") -> tuple[Logger, io.StringIO]:
        stream = io.StringIO()
        return Logger(namespace="t", observer=make_observer(level, "text", stream)), stream

    def test_text_line_ends_with_the_id(self) -> None:
        log, stream = self.text()
        log.info("GET {path} {status}", path="/x", status=200, request_id="rid-1")
        [line] = stream.getvalue().splitlines()
        self.assertTrue(line.endswith("GET /x 200 [request_id=rid-1]"), line)

    def test_text_line_without_id_unchanged(self) -> None:
        log, stream = self.text()
        log.info("started {what}", what="relay")
        log.info("no id here", request_id=None)
        first, second = stream.getvalue().splitlines()
        self.assertTrue(first.endswith("started relay"), first)
        self.assertTrue(second.endswith("no id here"), second)
        self.assertNotIn("request_id", stream.getvalue())

    def test_id_is_not_a_format_string(self) -> None:
        log, stream = self.text()
        log.info("answered {status}", status=200, request_id="{status}{0}{")
        [line] = stream.getvalue().splitlines()
        self.assertTrue(line.endswith("answered 200 [request_id={status}{0}{]"), line)

    def test_failure_line_carries_the_id(self) -> None:
        log, stream = self.text()
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("request {n} failed", Failure(), n=3, request_id="rid-2")
        output = stream.getvalue()
        self.assertIn("request 3 failed [request_id=rid-2]", output)
        self.assertIn("ZeroDivisionError", output)

    def test_filtered_levels_still_filtered(self) -> None:
        log, stream = self.text("warning")
        log.info("hidden", request_id="rid-3")
        log.warn("shown", request_id="rid-3")
        self.assertNotIn("hidden", stream.getvalue())
        self.assertIn("shown [request_id=rid-3]", stream.getvalue())

    def test_json_field_not_in_message(self) -> None:
        stream = io.StringIO()
        log = Logger(namespace="t", observer=make_observer("info", "json", stream))
        log.info("GET {path}", path="/x", request_id="rid-4")
        log.info("plain")
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        self.assertEqual(first["request_id"], "rid-4")
        self.assertEqual(first["message"], "GET /x")
        self.assertNotIn("request_id", second)

    def test_event_shared_with_other_observers_untouched(self) -> None:
        from mterelay.service.logs import CachedTime, classic_text

        event = {"log_format": "hello {who}", "who": "you", "request_id": "rid-5",
                 "log_time": 0.0}
        line = classic_text(CachedTime())(event)
        self.assertTrue(line.endswith(" hello you [request_id=rid-5]\n"), line)
        self.assertEqual(event["log_format"], "hello {who}")

    def test_events_without_format_or_id(self) -> None:
        from mterelay.service.logs import CachedTime, classic_text

        format_event = classic_text(CachedTime())
        self.assertTrue(format_event({"log_format": "hello", "log_time": 0.0}).endswith(
            " hello\n"))
        self.assertIsNone(format_event({"request_id": "rid-6"}))  # nothing to print

    def test_cached_time_follows_the_clock(self) -> None:
        from twisted.logger import formatTime

        from mterelay.service.logs import CachedTime

        cached = CachedTime()
        for when in (1000.2, 1000.9, 1001.0, 5000.5):
            self.assertEqual(cached(when), formatTime(int(when)))
        self.assertEqual(cached(None), "-")


class PreRenderedTextTests(SynchronousTestCase):
    """Events logged as ``"{mterelay_text}"`` (the access line) skip Twisted's formatter."""

    def event(self, text: str, **extra: object) -> dict:
        from twisted.logger import LogLevel

        from mterelay.service.logs import TEXT

        event = {"log_format": "{" + TEXT + "}", TEXT: text, "log_level": LogLevel.info,
                 "log_namespace": "mterelay.access", "log_time": 1795254549.25}
        event.update(extra)
        return event

    def test_same_line_as_twisteds_classic_format(self) -> None:
        from twisted.logger import formatEventAsClassicLogText

        from mterelay.service.logs import CachedTime, classic_text

        render = classic_text(CachedTime())
        for text in ("POST /x 200 1.5ms", "GET /{a}/{0} 404 0.1ms", "GET /%7B 200 3.0ms"):
            event = self.event(text)
            self.assertEqual(render(event), formatEventAsClassicLogText(event))
            with_id = render(self.event(text, request_id="rid-9"))
            self.assertEqual(with_id, formatEventAsClassicLogText(event)[:-1]
                             + " [request_id=rid-9]\n")

    def test_falls_back_for_failures_newlines_and_other_formats(self) -> None:
        from twisted.logger import formatEventAsClassicLogText

        from mterelay.service.logs import TEXT, CachedTime, classic_text

        render = classic_text(CachedTime())
        event = self.event("two\nlines")
        self.assertEqual(render(event), formatEventAsClassicLogText(event))
        other = self.event("ignored", log_format="shown {x}", x=1)
        self.assertTrue(render(other).endswith("] shown 1\n"))
        self.assertIn(TEXT, other)

    def test_any_observer_renders_it(self) -> None:
        from twisted.logger import formatEvent

        self.assertEqual(formatEvent(self.event("GET /{x} 200 1.0ms")), "GET /{x} 200 1.0ms")

    def test_json_message(self) -> None:
        from mterelay.service.logs import TEXT

        stream = io.StringIO()
        log = Logger(namespace="mterelay.access", observer=make_observer("info", "json", stream))
        log.info("{" + TEXT + "}", mterelay_text="GET /{q} 200 1.0ms", path="/{q}", status=200)
        record = json.loads(stream.getvalue())
        self.assertEqual((record["message"], record["path"], record["status"]),
                         ("GET /{q} 200 1.0ms", "/{q}", 200))
        self.assertNotIn(TEXT, record)


class TurnFlusherTests(SynchronousTestCase):
    """One flush per reactor turn, however many lines the turn wrote."""

    class Stream(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    def test_lines_of_a_turn_share_one_flush(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        stream = self.Stream()
        log = Logger(namespace="t", observer=make_observer("info", "text", stream,
                                                           clock.callLater))
        for n in range(5):
            log.info("line {n}", n=n)
        self.assertEqual(stream.flushes, 0)
        self.assertEqual(len(stream.getvalue().splitlines()), 5)  # written, not yet flushed
        clock.advance(0)
        self.assertEqual(stream.flushes, 1)
        log.warn("next turn")
        clock.advance(0)
        self.assertEqual(stream.flushes, 2)

    def test_without_a_reactor_every_line_is_flushed(self) -> None:
        stream = self.Stream()
        log = Logger(namespace="t", observer=make_observer("info", "json", stream))
        log.info("a")
        log.info("b")
        self.assertEqual(stream.flushes, 2)

    def test_closed_stream_at_flush_time_is_ignored(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        stream = self.Stream()
        log = Logger(namespace="t", observer=make_observer("info", "text", stream,
                                                           clock.callLater))
        log.info("last words")
        stream.close()
        clock.advance(0)  # no exception
