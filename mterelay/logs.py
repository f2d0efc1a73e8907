"""Log observers honouring LOG_LEVEL and LOG_FORMAT.

twistd installs the observer it finds as the application's ``ILogObserver``
component (see :class:`mterelay.tap.RelayService`), so Twisted's own messages
go through the same level filter and format as ours.  Logs go to stdout, the
way container platforms (ECS, EKS, systemd's journal) collect them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
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

    def __call__(self, event: dict[str, Any]) -> None:
        stamp = datetime.fromtimestamp(event.get("log_time", 0), tz=timezone.utc)
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
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


@implementer(ILogObserver)
class RequestIdText:
    """Text lines end with ``[request_id=...]`` when the event belongs to a request.

    JSON lines carry it as a field; in text it is appended so that grepping
    one id finds every line of that request.
    """

    def __init__(self, inner: ILogObserver) -> None:
        self.inner = inner

    def __call__(self, event: dict[str, Any]) -> None:
        request_id = event.get("request_id")
        if request_id is not None and "log_format" in event:
            event = dict(event)
            event["log_format"] = (event["log_format"] or "") + " [request_id={request_id}]"
        self.inner(event)


def make_observer(level: str, log_format: str, stream: IO[str]) -> ILogObserver:
    """The observer for a LOG_LEVEL / LOG_FORMAT pair."""
    if level == "off":
        return DiscardObserver()
    if log_format == "json":
        inner: ILogObserver = JsonLineObserver(stream)
    else:
        inner = RequestIdText(textFileLogObserver(stream))
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    # The connection pool announces every new upstream connection at info.
    if level in ("info", "warning"):
        for namespace in QUIET_NAMESPACES:
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return FilteringLogObserver(inner, [predicate])
