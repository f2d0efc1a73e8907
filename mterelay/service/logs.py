"""Log observers honouring LOG_LEVEL and LOG_FORMAT.

twistd installs the observer it finds as the application's ``ILogObserver``
component (see :class:`mterelay.service.tap.RelayService`), so Twisted's own messages
go through the same level filter and format as ours.  Logs go to stdout by
default, the way container platforms (ECS, EKS, systemd's journal) collect
them; twistd's ``--logfile`` and ``--syslog`` choose a file or syslog instead,
as they do for every twistd application (see :func:`log_destination`).
Because the relay hands twistd its own observer, twistd's options would
otherwise be ignored.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from collections.abc import Callable, Mapping
from typing import IO, Any

import attrs
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

from mterelay.http.logfields import TEXT

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

#: An event field holding its message already rendered.  Hot-path events (the
#: access line) log ``"{mterelay_text}"`` with it, so any observer renders them
#: with one trivial format, and ours skip Twisted's formatter entirely.


def message_of(event: dict[str, Any]) -> str:
    """The event's message: its pre-rendered text when it has one."""
    text = event.get(TEXT)
    if text is not None and event.get("log_format") == "{" + TEXT + "}":
        return str(text)
    return formatEvent(event)


class TurnFlusher:
    """Flushes a stream once per reactor turn instead of once per line.

    Under load a relay writes several log lines per turn of the reactor;
    flushing after each costs a write system call per line.  The first line
    of a turn schedules one flush (``call_later(0, ...)``), so a line still
    reaches the stream within the turn that wrote it.  Without a
    ``call_later`` (tests, tools), every line is flushed at once.
    """

    def __init__(self, stream: IO[str], call_later: Callable[..., Any] | None = None) -> None:
        self.stream = stream
        self.call_later = call_later
        self._pending = False

    def wrote(self) -> None:
        if self.call_later is None:
            self.stream.flush()
        elif not self._pending:
            self._pending = True
            self.call_later(0, self.flush)

    def flush(self) -> None:
        self._pending = False
        try:
            self.stream.flush()
        except (OSError, ValueError):  # stdout closed under us (shutdown): nothing to do
            pass


@implementer(ILogObserver)
class DiscardObserver:
    """LOG_LEVEL=off."""

    def __call__(self, event: dict[str, Any]) -> None:
        pass


@implementer(ILogObserver)
class JsonLineObserver:
    """One JSON object per line (CloudWatch, Loki, jq), no record separators."""

    def __init__(self, stream: IO[str], flusher: TurnFlusher | None = None) -> None:
        self.stream = stream
        self.flusher = flusher if flusher is not None else TurnFlusher(stream)
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
            "message": message_of(event),
        }
        for field in FIELDS:
            if field in event:
                record[field] = event[field]
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getTraceback()
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.flusher.wrote()


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
        fast = event.get(TEXT)
        if (fast is not None and event.get("log_format") == "{" + TEXT + "}"
                and "log_failure" not in event and "log_system" not in event
                and "\n" not in fast):
            # Twisted's classic layout, built directly (the access line's path).
            level = event.get("log_level")
            request_id = event.get("request_id")
            tail = "" if request_id is None else f" [request_id={request_id}]"
            return (f"{format_time(event.get('log_time'))} [{event.get('log_namespace', '-')}"
                    f"#{level.name if level is not None else '-'}] {fast}{tail}\n")
        text = formatEventAsClassicLogText(event, formatTime=format_time)
        request_id = event.get("request_id")
        if text is not None and request_id is not None:
            end = text.index("\n")  # on the message line, before any traceback
            text = f"{text[:end]} [request_id={request_id}]{text[end:]}"
        return text

    return format_event


@implementer(ILogObserver)
class TextLineObserver:
    """Twisted's ``FileLogObserver``, flushing through a :class:`TurnFlusher`."""

    def __init__(self, stream: IO[str], format_event: Callable[[dict[str, Any]], str | None],
                 flusher: TurnFlusher) -> None:
        self.stream = stream
        self.format_event = format_event
        self.flusher = flusher

    def __call__(self, event: dict[str, Any]) -> None:
        text = self.format_event(event)
        if text:
            self.stream.write(text)
            self.flusher.wrote()


def _predicate(level: str) -> LogLevelFilterPredicate:
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    # The connection pool announces every new upstream connection at info.
    if level in ("info", "warning"):
        for namespace in QUIET_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return predicate


def make_observer(level: str, log_format: str, stream: IO[str],
                  call_later: Callable[..., Any] | None = None) -> ILogObserver:
    """The observer for a LOG_LEVEL / LOG_FORMAT pair.

    ``call_later`` (the reactor's) batches flushes to one per reactor turn.
    """
    if level == "off":
        return DiscardObserver()
    flusher = TurnFlusher(stream, call_later)
    if log_format == "json":
        inner: ILogObserver = JsonLineObserver(stream, flusher)
    else:
        inner = TextLineObserver(stream, classic_text(CachedTime()), flusher)
    return FilteringLogObserver(inner, [_predicate(level)])


@attrs.frozen
class LogDestination:
    """Where log lines go: ``"stdout"``, ``"file"`` (``path``) or ``"syslog"`` (``prefix``)."""

    kind: str
    path: str | None = None
    prefix: str = ""


class LogDestinationError(ValueError):
    """twistd's logging options ask for something the relay cannot do."""


def log_destination(twistd: Mapping[str, Any] | None) -> LogDestination:
    """Where twistd's own options say to log, decided the way twistd decides.

    ``--syslog`` wins; ``--logfile=-`` or no ``--logfile`` under ``-n`` is
    stdout; a daemon without ``--logfile`` writes ``twistd.log``.  ``twistd``
    is twistd's parsed ServerOptions (None outside twistd: stdout).
    """
    if twistd is None:
        return LogDestination("stdout")
    if twistd.get("syslog"):
        return LogDestination("syslog", prefix=str(twistd.get("prefix") or "mterelay"))
    path = twistd.get("logfile") or ""
    nodaemon = bool(twistd.get("nodaemon"))
    if path == "-":
        if not nodaemon:
            raise LogDestinationError("- (stdout) needs --nodaemon (-n): a daemon has no stdout")
        return LogDestination("stdout")
    if not path:
        return LogDestination("stdout") if nodaemon else LogDestination("file", "twistd.log")
    return LogDestination("file", path)


def syslog_observer(level: str, prefix: str) -> ILogObserver:
    """LOG_LEVEL applied, then twistd's syslog observer (priority from the level).

    LOG_FORMAT does not apply: syslog records have their own envelope.
    """
    if level == "off":
        return DiscardObserver()
    from twisted.python.syslog import SyslogObserver

    return FilteringLogObserver(LegacyLogObserverWrapper(SyslogObserver(prefix).emit),
                                [_predicate(level)])
