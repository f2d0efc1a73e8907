"""``mterelay-client``: curl for an mterelay - pair, send encrypted, print the answer.

    mterelay-client [-X METHOD] [-H 'Name: value']... [-d DATA | --data-binary @FILE]
                    [-o FILE] [-i] [-N] [--seal-headers all|none|a,b] [--no-seal-url]
                    [--framing MKR|MKE|MTE] [--pairs N] [--timeout S] URL

The body is written to stdout as bytes (or to ``-o FILE``, streamed); ``-i``
prints the status line and the headers first.  ``-N`` (as curl's) flushes
every piece as soon as it is opened, so an SSE or NDJSON stream prints its
events as they come.  Exit status: 0 for any HTTP
answer (4xx/5xx included), 1 with one line on stderr when there is none
(connection refused, a relay error that was not recovered, an answer that
does not authenticate), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

import treq
from twisted.internet import task
from twisted.internet.defer import CancelledError, TimeoutError as DeferredTimeout, ensureDeferred
from twisted.internet.error import ConnectError, DNSLookupError

from mterelay.client import NotARelay, PairingFailed, RelayClient
from mterelay.client.relay import split_url
from mterelay.http.failures import innermost
from mterelay.http.headers import is_token
from mterelay.protocol.errors import RelayError

__all__ = ["main", "run", "build_parser", "describe"]

PROG = "mterelay-client"


def _header(value: str) -> tuple[str, str]:
    name, sep, rest = value.partition(":")
    name = name.strip()
    if not sep or not is_token(name):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value[:60]!r}")
    return name, rest.strip()


def _seal_headers(value: str) -> str | list[str]:
    if value in ("all", "none"):
        return value
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or not all(is_token(name) for name in names):
        raise argparse.ArgumentTypeError("expected all, none or a comma-separated list of names")
    return names


def _response_headers(value: str) -> str | list[str]:
    return "*" if value == "*" else _seal_headers(value)  # type: ignore[return-value]


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def _pairs(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError("must be 1..64")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The curl-like options (exit 2 on misuse, as argparse does)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Send one HTTP request end-to-end encrypted through an mterelay.")
    parser.add_argument("url", metavar="URL", help="the relay URL of the request")
    parser.add_argument("-X", "--request", dest="method", metavar="METHOD",
                        help="HTTP method (default GET, or POST with a body)")
    parser.add_argument("-H", "--header", dest="headers", action="append", default=[],
                        type=_header, metavar="'Name: value'", help="a request header (repeatable)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("-d", "--data", metavar="DATA",
                      help="body: the literal DATA, or @FILE to stream a file (@- for stdin)")
    data.add_argument("--data-binary", metavar="DATA", help="same as -d")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE")
    parser.add_argument("-i", "--include", action="store_true",
                        help="print the status line and headers before the body")
    parser.add_argument("--seal-headers", type=_seal_headers, default="all",
                        metavar="all|none|a,b", help="which request headers are sealed")
    parser.add_argument("--response-headers", type=_response_headers, default="*",
                        metavar="*|a,b", help="which response headers the relay seals")
    parser.add_argument("--no-seal-url", dest="seal_url", action="store_false",
                        help="send the path and query in clear")
    parser.add_argument("-N", "--no-buffer", dest="no_buffer", action="store_true",
                        help="write each piece of the body out as soon as it arrives")
    parser.add_argument("--framing", choices=("MKR", "MKE", "MTE"), default="MKR",
                        help="body framing (default MKR: records, streamed both ways; MKE"
                             " with a relay that has no record framing)")
    parser.add_argument("--pairs", type=_pairs, default=1, metavar="N",
                        help="pairs to make with the relay (default 1)")
    parser.add_argument("--timeout", type=_positive, metavar="S",
                        help="give up after S seconds without an answer")
    return parser


def describe(error: BaseException, timeout: float | None = None) -> str:
    """One line saying why there is no answer (never request data)."""
    error = innermost(error, prefer=RelayError)
    if isinstance(error, RelayError):
        return f"relay error {error.code}: {error}"
    if isinstance(error, (DeferredTimeout, CancelledError)):
        return f"no answer within {timeout:g} s" if timeout else "request cancelled"
    if isinstance(error, DNSLookupError):
        return f"cannot resolve host: {error}"
    if isinstance(error, ConnectError):
        return f"cannot connect: {error}".rstrip(".")
    if isinstance(error, (NotARelay, PairingFailed)):
        return str(error)
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text


def _body(args: argparse.Namespace, stdin: IO[bytes]) -> Any:
    raw = args.data if args.data is not None else args.data_binary
    if raw is None:
        return None
    if raw == "@-":
        return stdin
    if raw.startswith("@"):
        return open(raw[1:], "rb")  # noqa: SIM115 - closed by run()
    return raw.encode("utf-8")


async def run(reactor: Any, args: argparse.Namespace, stdout: IO[bytes], stderr: IO[str],
              stdin: IO[bytes] | None = None, **client_options: Any) -> int:
    """Do the request; returns the exit status.  ``client_options`` go to RelayClient."""
    try:
        split_url(args.url)
    except ValueError as error:
        stderr.write(f"{PROG}: {error}\n")
        return 2
    stdin = stdin if stdin is not None else sys.stdin.buffer
    try:
        body = _body(args, stdin)
    except OSError as error:
        stderr.write(f"{PROG}: cannot read the body: {error.strerror or error}\n")
        return 1
    headers: dict[str, list[str]] = {}
    for name, value in args.headers:
        if value:
            headers.setdefault(name.lower(), []).append(value)
    if body is not None and "content-type" not in headers:
        headers["content-type"] = ["application/x-www-form-urlencoded"]  # as curl does
    method = args.method or ("POST" if body is not None else "GET")
    options = dict(pairs=args.pairs, seal_url=args.seal_url, seal_headers=args.seal_headers,
                   framing=args.framing, response_headers=args.response_headers,
                   timeout=args.timeout)
    options.update(client_options)
    client = RelayClient(reactor, **options)
    output: IO[bytes] | None = None
    try:
        response = await client.request(method, args.url, headers=headers, data=body)
        if args.include:
            stdout.write(b"HTTP/1.1 %d %s\r\n" % (response.code, response.phrase))
            for name, values in response.headers.getAllRawHeaders():
                for value in values:
                    stdout.write(name + b": " + value + b"\r\n")
            stdout.write(b"\r\n")
            stdout.flush()
        if not getattr(response, "sealed", True):
            stderr.write(f"{PROG}: note: {response.code} is a relay-made answer, "
                         "not authenticated\n")
        output = open(args.output, "wb") if args.output else None  # noqa: SIM115
        sink = output or stdout

        def write(data: bytes) -> None:
            sink.write(data)
            if args.no_buffer:
                sink.flush()

        await treq.collect(response, write)
        (output or stdout).flush()
        return 0
    except Exception as error:
        stderr.write(f"{PROG}: {describe(error, args.timeout)}\n")
        return 1
    finally:
        if output is not None:
            output.close()
        if hasattr(body, "close") and body is not stdin:
            body.close()
        await client.close()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: ``mterelay-client = mterelay.cli:main``."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    status: list[int] = []

    def start(reactor: Any) -> Any:
        done = ensureDeferred(run(reactor, args, sys.stdout.buffer, sys.stderr))
        return done.addCallback(status.append)

    try:
        task.react(start)
    except SystemExit:
        pass
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
