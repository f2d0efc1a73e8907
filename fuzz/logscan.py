"""Reads the relays' JSON logs: critical lines, tracebacks, store mix-ups, leaked queries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

#: Symptoms of a reply delivered to the wrong store command (issue 14, finding 2).
STORE_CONFUSION = re.compile(r"not 'list'|cannot unpack non-iterable|object is not subscriptable"
                             r"|unexpected (?:store|redis) reply|TypeError", re.I)
#: Planted as a query parameter; the README promises no query string in the logs.  Only
#: counted inside a query (after a ``?``): a mutated target that lost its ``?`` carries
#: it in its path, which may be logged.
QUERY_MARKER = re.compile(r"\?[^\s\"]*fuzzsecret=")


@dataclass
class LogLine:
    relay: str
    when: float
    level: str
    text: str
    traceback: bool


@dataclass
class LogFindings:
    critical: list[LogLine] = field(default_factory=list)
    store_confusion: list[LogLine] = field(default_factory=list)
    query_leaks: list[LogLine] = field(default_factory=list)
    lines: int = 0


def _when(value: object) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def read(relay: str, path: Path, offset: int = 0) -> tuple[list[LogLine], int]:
    """Lines of one relay log from byte ``offset``; returns them and the new offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = []
    for raw in data[:end].splitlines():
        text = raw.decode("utf-8", "replace")
        try:
            record = json.loads(text)
        except ValueError:
            # Not one of our JSON lines: twistd's own, or a traceback printed raw.
            lines.append(LogLine(relay, 0.0, "raw", text, "Traceback" in text))
            continue
        if not isinstance(record, dict):
            continue
        message = str(record.get("message", ""))
        error = record.get("error")
        full = message + ("\n" + str(error) if error else "")
        lines.append(LogLine(relay, _when(record.get("time")), str(record.get("level", "")),
                             full, bool(error) or "Traceback" in full))
    return lines, offset + end


def scan(lines: list[LogLine]) -> LogFindings:
    found = LogFindings(lines=len(lines))
    for line in lines:
        if line.level in ("critical", "error") or line.traceback:
            found.critical.append(line)
            if STORE_CONFUSION.search(line.text):
                found.store_confusion.append(line)
        elif line.level == "raw" and STORE_CONFUSION.search(line.text):
            found.store_confusion.append(line)
        if QUERY_MARKER.search(line.text) and line.level != "debug":
            found.query_leaks.append(line)
    return found


def first_line(text: str, limit: int = 240) -> str:
    """A one-line excerpt of a log message (tracebacks: the message and the last line)."""
    parts = [p for p in text.splitlines() if p.strip()]
    if not parts:
        return ""
    excerpt = parts[0] if len(parts) == 1 else f"{parts[0]} … {parts[-1].strip()}"
    return excerpt[:limit]
