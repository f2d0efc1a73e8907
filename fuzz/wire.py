"""A raw HTTP/1.1 client over blocking sockets: sends exactly the bytes it is given.

The relays must cope with anything, so the harness cannot use a client that
normalizes requests.  :func:`exchange` writes raw bytes (optionally in
pieces with pauses: slow clients; or only part of them, then closes:
aborted bodies), then reads one response with :mod:`http.client`'s parser.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: A response body is read up to this much (the relays' error bodies are small).
READ_LIMIT = 4 * 1024 * 1024


@dataclass
class Reply:
    """What came back: a status (0 when none), headers (lowercase), body; or an outcome."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: "answer", "closed" (no bytes), "timeout", "reset", "aborted" (we hung up), "refused"
    outcome: str = "answer"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def label(self) -> str:
        return str(self.status) if self.outcome == "answer" else self.outcome


def request_bytes(method: str, target: str, headers: Iterable[tuple[str, str | bytes]],
                  body: bytes = b"", *, content_length: bool = True,
                  host: str = "127.0.0.1") -> bytes:
    """A well-formed request (``Connection: close``) the mutators may then damage."""
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1"), b"Host: " + host.encode()]
    for name, value in headers:
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        lines.append(name.encode("latin-1") + b": " + raw)
    if content_length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def connect(port: int, timeout: float = 10.0, source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def exchange(port: int, data: bytes | Sequence[bytes], *, timeout: float = 10.0,
             pause: float = 0.0, abort: bool = False, source: str | None = None,
             method: str = "GET", half_close: bool = False) -> Reply:
    """Send ``data`` (pieces separated by ``pause`` seconds) and read one response.

    ``abort``: close the socket right after sending (no response expected).
    """
    pieces = [data] if isinstance(data, (bytes, bytearray)) else list(data)
    try:
        sock = connect(port, timeout, source)
    except ConnectionRefusedError:
        return Reply(outcome="refused")
    except OSError:
        return Reply(outcome="refused")
    try:
        try:
            for index, piece in enumerate(pieces):
                if index and pause:
                    time.sleep(pause)
                if piece:
                    sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the relay may answer (and close) before reading everything
        except socket.timeout:
            return Reply(outcome="timeout")
        if half_close:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return Reply(outcome="aborted")
        return read_reply(sock, method)
    finally:
        sock.close()


def read_reply(sock: socket.socket, method: str = "GET") -> Reply:
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
        body = response.read(READ_LIMIT) if method != "HEAD" else b""
    except socket.timeout:
        return Reply(outcome="timeout")
    except (http.client.RemoteDisconnected, http.client.IncompleteRead) as error:
        if isinstance(error, http.client.IncompleteRead) and getattr(response, "status", 0):
            return Reply(response.status, _headers(response), bytes(error.partial),
                         outcome="truncated")
        return Reply(outcome="closed")
    except (ConnectionResetError, BrokenPipeError):
        return Reply(outcome="reset")
    except (http.client.HTTPException, ValueError):
        return Reply(outcome="garbled")
    return Reply(response.status, _headers(response), body)


def _headers(response: http.client.HTTPResponse) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in response.getheaders()]
