"""Driving wrk and reading its results.

The pure half (command line, parsing) is separate from :func:`run_wrk`, the
only function here that starts a process, so the parsing can be tested
against captured output.  wrk's results are read from the JSON line that
``post.lua``'s ``done()`` prints (exact counts, percentiles in µs); the
human ``--latency`` report is parsed as a fallback and cross-check.

Errors are kept apart from throughput: ``non2xx`` is wrk's ``errors.status``
(answers with a status >= 400; the upstream only ever answers 200, so these
are the proxies' and relays' own error answers) and socket errors are
connect/read/write/timeout.  :attr:`WrkResult.ok_rps` counts only good answers.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"
JSON_PREFIX = "WRKJSON "
#: wrk's own per-request timeout; a slower answer counts as a socket timeout error.
DEFAULT_TIMEOUT_S = 10

#: wrk prints an empty histogram's minimum as INT64_MIN.
_EMPTY_MIN = -(2 ** 63)


class WrkError(RuntimeError):
    """wrk failed or printed nothing we can read."""


@dataclass
class WrkResult:
    """One wrk run: counts, duration and latency percentiles (µs)."""

    requests: int
    duration_s: float
    bytes_read: int = 0
    non2xx: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    latency_us: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """All answers per second (what wrk calls Requests/sec)."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def ok_rps(self) -> float:
        """Good (non-error) answers per second: an error answer is not throughput."""
        good = max(self.requests - self.non2xx, 0)
        return good / self.duration_s if self.duration_s > 0 else 0.0

    def p(self, name: str) -> float | None:
        """A latency percentile in µs (``"p50"``), None when not measured."""
        return self.latency_us.get(name)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(rps=round(self.rps, 2), ok_rps=round(self.ok_rps, 2),
                    socket_errors=self.socket_errors, errors=self.errors)
        return data


# ---------------------------------------------------------------- pure: command line


def wrk_command(wrk: str, url: str, connections: int, duration_s: float, threads: int = 1,
                body_bytes: int = 1024, headers: dict[str, str] | None = None,
                delay_ms: float = 0.0, timeout_s: float = DEFAULT_TIMEOUT_S,
                latency: bool = True) -> list[str]:
    """The wrk argv: POST ``body_bytes``, extra ``headers``, optional mean think time.

    wrk takes whole seconds only (``-d``, ``--timeout``), so fractions are
    rounded up, to at least one second.
    """
    threads = max(1, min(threads, connections))
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{_duration_arg(duration_s)}",
            f"--timeout={_duration_arg(timeout_s)}", "-s", str(LUA_SCRIPT)]
    if latency:
        argv.append("--latency")
    argv += [url, "--", f"body={body_bytes}"]
    for name, value in (headers or {}).items():
        argv.append(f"header={name}: {value}")
    if delay_ms > 0:
        argv.append(f"delay={delay_ms:.3f}")
    return argv


def _duration_arg(seconds: float) -> str:
    return f"{whole_seconds(seconds)}s"


def whole_seconds(seconds: float) -> int:
    """What wrk will actually run for: ``seconds`` rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))


# ---------------------------------------------------------------- pure: parsing


def parse_json_line(output: str) -> WrkResult | None:
    """The result from post.lua's ``WRKJSON {...}`` line, None when there is none."""
    for line in output.splitlines():
        if line.startswith(JSON_PREFIX):
            data = json.loads(line[len(JSON_PREFIX):])
            errors = data.get("errors", {})
            latency = {k: float(v) for k, v in data.get("latency_us", {}).items()}
            if data.get("requests", 0) == 0 or latency.get("min") == _EMPTY_MIN:
                latency = {}  # nothing was measured: no made-up percentiles
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=int(data["duration_us"]) / 1e6,
                bytes_read=int(data.get("bytes", 0)),
                non2xx=int(errors.get("status", 0)),
                connect_errors=int(errors.get("connect", 0)),
                read_errors=int(errors.get("read", 0)),
                write_errors=int(errors.get("write", 0)),
                timeouts=int(errors.get("timeout", 0)),
                latency_us=latency,
            )
    return None


_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
_DURATION = re.compile(r"^\s*([\d.]+)(us|ms|s|m|h)\s*$")
_SUMMARY = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)(B|KB|MB|GB|TB) read")
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+(?:us|ms|s|m|h))\s*$")
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_LAT_STATS = re.compile(
    r"^\s*Latency\s+([\d.]+(?:us|ms|s|m|h))\s+([\d.]+(?:us|ms|s|m|h))\s+([\d.]+(?:us|ms|s|m|h))")


def duration_to_us(text: str) -> float:
    """wrk's ``1.23ms`` / ``850.00us`` / ``2.00s`` as microseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_US[match.group(2)]


def parse_text(output: str) -> WrkResult:
    """wrk's human report (run with ``--latency``): the fallback to the JSON line.

    Percentiles there are rounded to 2 decimals of their unit, the byte count
    to 2 decimals of its unit, so the JSON line is preferred whenever present.
    """
    summary = None
    latency: dict[str, float] = {}
    socket = (0, 0, 0, 0)
    non2xx = 0
    for line in output.splitlines():
        if (match := _SUMMARY.match(line)):
            summary = match
        elif (match := _PERCENTILE.match(line)):
            latency["p" + _percent_name(match.group(1))] = duration_to_us(match.group(2))
        elif (match := _SOCKET.search(line)):
            socket = tuple(int(g) for g in match.groups())  # type: ignore[assignment]
        elif (match := _NON2XX.search(line)):
            non2xx = int(match.group(1))
        elif (match := _LAT_STATS.match(line)):
            latency["mean"] = duration_to_us(match.group(1))
            latency["stdev"] = duration_to_us(match.group(2))
            latency["max"] = duration_to_us(match.group(3))
    if summary is None:
        raise WrkError("no 'N requests in T' line in wrk's output")
    requests = int(summary.group(1))
    duration_s = float(summary.group(2)) * _UNITS_US[summary.group(3)] / 1e6
    bytes_read = int(float(summary.group(4)) * _SIZE[summary.group(5)])
    if requests == 0:
        latency = {}
    return WrkResult(requests, duration_s, bytes_read, non2xx, *socket, latency_us=latency)


def _percent_name(text: str) -> str:
    value = float(text)
    return str(int(value)) if value.is_integer() else str(value)


def parse_output(output: str) -> WrkResult:
    """The JSON line when post.lua printed one, else the ``--latency`` report."""
    result = parse_json_line(output)
    return result if result is not None else parse_text(output)


# ---------------------------------------------------------------- the one process


def run_wrk(argv: list[str], duration_s: float) -> tuple[WrkResult, str]:
    """Run wrk to completion; returns the parsed result and its raw output."""
    try:
        completed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=duration_s + 60, start_new_session=True)
    except subprocess.TimeoutExpired as expired:
        raise WrkError(f"wrk did not finish: {' '.join(argv)}") from expired
    output = completed.stdout.decode("utf-8", "replace")
    if completed.returncode != 0:
        raise WrkError(f"wrk exited with {completed.returncode}: {output[-500:]}")
    try:
        return parse_output(output), output
    except (WrkError, ValueError, KeyError) as error:
        raise WrkError(f"cannot read wrk's output ({error}):\n{output[-800:]}") from error
