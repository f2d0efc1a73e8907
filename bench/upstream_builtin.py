"""A minimal asyncio HTTP/1.1 keep-alive server answering every request with a fixed body.

The fallback upstream for machines without nginx.  It exists so that the
upstream is never the bottleneck: no routing, no framework, one pre-built
response, bodies (Content-Length or chunked) read and dropped.  It only
needs to be correct for the well-formed requests that wrk, the baseline
proxies and the relays send.

Run: ``python bench/upstream_builtin.py PORT [BODY_BYTES]``.
"""

from __future__ import annotations

import asyncio
import sys
from email.utils import formatdate

__all__ = ["response_body", "UpstreamProtocol", "main"]


def response_body(size: int = 1024) -> bytes:
    """The fixed JSON answer of exactly ``size`` bytes (the same text nginx serves)."""
    head, tail = b'{"pad":"', b'"}'
    if size < len(head) + len(tail):
        raise ValueError("body too small")
    return head + b"x" * (size - len(head) - len(tail)) + tail


class UpstreamProtocol(asyncio.Protocol):
    """Parses pipelined HTTP/1.1 requests from one connection and answers each."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.body_left = 0           # bytes of a Content-Length body still to drop
        self.chunked = False          # inside a chunked body
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Consume one piece of the buffer; False when more data is needed."""
        if self.body_left:
            taken = min(self.body_left, len(self.buffer))
            self.buffer = self.buffer[taken:]
            self.body_left -= taken
            if self.body_left:
                return False
            self._respond()
            return True
        if self.chunked:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(self.buffer[:line_end].split(b";")[0], 16)
            if size == 0:
                # Last chunk: no trailers are ever sent by our clients.
                if len(self.buffer) < line_end + 4:
                    return False
                self.buffer = self.buffer[line_end + 4:]
                self.chunked = False
                self._respond()
                return True
            if len(self.buffer) < line_end + 2 + size + 2:
                return False
            self.buffer = self.buffer[line_end + 2 + size + 2:]
            return True
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
        lines = head.split(b"\r\n")
        version = lines[0].rsplit(b" ", 1)[-1]
        self.close_after = version == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.body_left = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
            elif name == b"connection":
                lowered = value.strip().lower()
                if lowered == b"close":
                    self.close_after = True
                elif lowered == b"keep-alive":
                    self.close_after = False
        if not self.body_left and not self.chunked:
            self._respond()
        return True

    def _respond(self) -> None:
        assert self.transport is not None
        self.transport.write(self.answer)
        if self.close_after:
            self.transport.close()


def build_answer(body: bytes) -> bytes:
    """Status line, headers and body; the Date is fixed at start (no per-request work)."""
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Server: bench-upstream\r\n"
        b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


async def serve(port: int, size: int) -> None:
    answer = build_answer(response_body(size))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(answer), "127.0.0.1", port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    port = int(argv[1])
    size = int(argv[2]) if len(argv) > 2 else 1024
    try:
        asyncio.run(serve(port, size))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
