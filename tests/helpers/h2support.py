"""Test helpers for HTTP/2: a self-signed certificate and a blocking h2 client.

The client is the ``h2`` package over a TLS socket (ALPN ``h2``), run in a
thread so the test's reactor keeps serving the real upstream meanwhile.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import time
from typing import Iterable

import attrs
import h2.config
import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_self_signed(directory: str) -> tuple[str, str]:
    """(key path, certificate path) of a fresh self-signed certificate for 127.0.0.1."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(key, hashes.SHA256()))
    os.makedirs(directory, exist_ok=True)
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def ssl_listen(port: int, key_path: str, cert_path: str) -> str:
    return f"ssl:{port}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"


@attrs.define
class H2Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: Seconds from sending the request to the first / last DATA byte.
    first_data: float | None = None
    ended: float | None = None
    reset: bool = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class H2Client:
    """One HTTP/2 connection over TLS (certificate not checked: it is the test's own)."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.alpn = self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**24})
        self.conn.increment_flow_control_window(2**30)
        self._flush()
        self.responses: dict[int, H2Response] = {}
        self.started: dict[int, float] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, method: str, path: str, headers: Iterable[tuple[str, str]] = (),
              end_stream: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        wire = [(":method", method), (":path", path), (":scheme", "https"),
                (":authority", "127.0.0.1")] + list(headers)
        self.conn.send_headers(stream, wire, end_stream=end_stream)
        self.started[stream] = time.monotonic()
        self._flush()
        return stream

    def send_data(self, stream: int, data: bytes, end_stream: bool = False) -> None:
        view = memoryview(data)
        while view:
            size = min(len(view), self.conn.local_settings.max_frame_size,
                       self.conn.local_flow_control_window(stream))
            if size == 0:
                self.pump(0.05)
                continue
            self.conn.send_data(stream, bytes(view[:size]))
            view = view[size:]
            self._flush()
        if end_stream:
            self.conn.end_stream(stream)
            self._flush()

    def pump(self, wait: float) -> None:
        """Read and handle whatever arrives within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, ssl.SSLWantReadError):
            return
        finally:
            self.sock.settimeout(20)
        if not data:
            self.closed = True
            return
        now = time.monotonic()
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                headers = [(k.decode(), v.decode()) for k, v in event.headers]
                status = int(dict(headers)[":status"])
                self.responses[event.stream_id] = H2Response(status, headers, b"")
            elif isinstance(event, h2.events.DataReceived):
                response = self.responses[event.stream_id]
                if response.first_data is None:
                    response.first_data = now - self.started[event.stream_id]
                response.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.responses[event.stream_id].ended = now - self.started[event.stream_id]
            elif isinstance(event, h2.events.StreamReset):
                response = self.responses.setdefault(event.stream_id, H2Response(0, [], b""))
                response.reset = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self._flush()

    def wait(self, stream: int, timeout: float = 20.0) -> H2Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.responses.get(stream)
            if response is not None and (response.ended is not None or response.reset):
                return response
            if self.closed:
                raise ConnectionError(f"connection closed before stream {stream} ended")
            self.pump(0.1)
        raise TimeoutError(f"stream {stream} did not end in {timeout}s")

    def request(self, method: str, path: str, headers: Iterable[tuple[str, str]] = (),
                body: bytes | None = None) -> H2Response:
        stream = self.start(method, path, headers, end_stream=body is None)
        if body is not None:
            self.send_data(stream, body, end_stream=True)
        return self.wait(stream)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:
            pass
        self.sock.close()
