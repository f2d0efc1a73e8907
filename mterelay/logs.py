"""Log observers honouring LOG_LEVEL and LOG_FORMAT.

twistd installs the observer it finds as the application's ``ILogObserver``
component (see :class:`mterelay.tap.RelayService`), so Twisted's own messages
go through the same level filter and format as ours.  Logs go to stdout, the
way container platforms (ECS, EKS, systemd's journal) collect them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    FileLogObserver,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

# Twisted has no "trace" or "panic"; they map onto its nearest levels.
LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "panic": LogLevel.critical,
}

QUIET_NAMESPACES = ("twisted.web.client._HTTP11ClientFactory",)

# Structured fields copied into JSON lines when an event carries them.
FIELDS = ("method", "path", "status", "duration_ms", "client", "request_id", "bytes")


@implementer(ILogObserver)
class DiscardObserver:
    """LOG_LEVEL=off."""

    def __call__(self, event: dict[str, Any]) -> None:
        pass


@implementer(ILogObserver)
class JsonLineObserver:
    """One JSON object per line (CloudWatch, Loki, jq), no record separators."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._second: int | None = None
        self._prefix = ""

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:  # the date part once per second
            self._second = second
            stamp = datetime.fromtimestamp(second, tz=timezone.utc)
            self._prefix = stamp.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((when - second) * 1000):03d}Z"

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": self._time(event.get("log_time", 0)),
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for field in FIELDS:
            if field in event:
                record[field] = event[field]
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getTraceback()
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()


class CachedTime:
    """``formatTime`` for log lines, built once per second instead of per line.

    Twisted's own formatter works out the local UTC offset and calls
    strftime for every event; at a few thousand access lines per second
    that is a visible share of a relay's CPU.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second = second
            self._text = formatTime(second)
        return self._text


def classic_text(format_time: Callable[[float | None], str]) -> Callable[[dict[str, Any]], str | None]:
    """Twisted's classic text line, plus `` [request_id=...]`` for a request's events."""

    def format_event(event: dict[str, Any]) -> str | None:
        text = formatEventAsClassicLogText(event, formatTime=format_time)
        request_id = event.get("request_id")
        if text is not None and request_id is not None:
            end = text.index("\n")  # on the message line, before any traceback
            text = f"{text[:end]} [request_id={request_id}]{text[end:]}"
        return text

    return format_event


def make_observer(level: str, log_format: str, stream: IO[str]) -> ILogObserver:
    """The observer for a LOG_LEVEL / LOG_FORMAT pair."""
    if level == "off":
        return DiscardObserver()
    if log_format == "json":
        inner: ILogObserver = JsonLineObserver(stream)
    else:
        inner = FileLogObserver(stream, classic_text(CachedTime()))
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    # The connection pool announces every new upstream connection at info.
    if level in ("info", "warning"):
        for namespace in QUIET_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return FilteringLogObserver(inner, [predicate])
