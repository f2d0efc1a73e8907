"""A request held in parts, so mutators can damage any one of them, then sent as raw bytes."""

from __future__ import annotations

from dataclasses import dataclass, field


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


@dataclass
class Parts:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: "length" (Content-Length), "none", "chunked", "both" (TE and CL), "twice" (two CLs)
    framing: str = "length"
    #: Content-Length announced when not len(body) (truncated streams, oversize claims)
    length: int | None = None
    #: Send only this many body bytes, then hang up (aborted body).
    cut: int | None = None
    version: bytes = b"HTTP/1.1"

    @classmethod
    def of(cls, method: str, target: str, headers: list[tuple[str, str | bytes]],
           body: bytes = b"") -> "Parts":
        return cls(_b(method), _b(target), [(_b(n), _b(v)) for n, v in headers], body,
                   "length" if body or method in ("POST", "PUT", "PATCH") else "none")

    def set(self, name: bytes, value: bytes | None) -> None:
        """Replace every ``name`` header (None: remove them)."""
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name]
        if value is not None:
            self.headers.append((name, value))

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def raw(self) -> bytes:
        lines = [self.method + b" " + self.target + b" " + self.version, b"Host: 127.0.0.1"]
        lines += [n + b": " + v for n, v in self.headers]
        body = self.body
        announced = len(body) if self.length is None else self.length
        if self.framing in ("length", "both"):
            lines.append(b"Content-Length: %d" % announced)
        if self.framing == "twice":
            lines += [b"Content-Length: %d" % announced, b"Content-Length: %d" % (announced + 1)]
        if self.framing in ("chunked", "both"):
            lines.append(b"Transfer-Encoding: chunked")
            body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
        lines.append(b"Connection: close")
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        if self.cut is not None:
            body = body[:self.cut]
        return head + body


@dataclass
class Case:
    """One input: where it goes, its bytes, how to send them and what it must do."""

    id: str
    entry: str
    kind: str
    port: int
    data: bytes | list[bytes]
    method: str = "GET"
    pause: float = 0.0
    abort: bool = False
    timeout: float = 10.0
    #: A valid request: the answer must be authentic (opens) and reach the upstream once.
    sealed: object | None = None
    #: Sent again after the first answer (a replay): must be refused, upstream once.
    replay_port: int | None = None
    extra: dict = field(default_factory=dict)
