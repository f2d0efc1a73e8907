"""The nginx sidecar pair: what users pick instead of mterelay for service-to-service
encryption (issue 18), as one column of the benchmark.

    wrk -> sidecar-out (nginx, plain HTTP in) --TLS 1.3--> sidecar-in (nginx) -> upstream

One worker each, keep-alive on both hops (an upstream keepalive pool,
``proxy_http_version 1.1``, an empty Connection header), TLS 1.3 only, a
throw-away self-signed certificate made at run time with ``cryptography``
and verified by sidecar-out (so the TLS hop is what production would run,
not an unchecked one).  The configuration text is pure; starting the
processes lives in :func:`start_sidecar_pair`.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: The name in the certificate that sidecar-out checks (nginx checks DNS names, not IPs).
SERVER_NAME = "sidecar-in.bench.invalid"
#: Idle upstream connections each nginx keeps (>= the highest wrk -c the bench drives).
KEEPALIVE_POOL = 256


def self_signed(host: str = "127.0.0.1", days: int = 2) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): P-256, for :data:`SERVER_NAME` and ``host``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mterelay-bench-sidecar")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address(host))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def nginx_http_head(directory: Path) -> str:
    """The top of every bench nginx.conf: one worker, files in ``directory``, long keep-alive."""
    d = str(directory)
    return f"""\
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_max_body_size 10m;
"""


def inner_conf(directory: Path, port: int, upstream_port: int, cert: Path, key: Path) -> str:
    """sidecar-in: terminates TLS 1.3 on ``port``, proxies plain HTTP to the upstream."""
    return nginx_http_head(directory) + f"""\
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive {KEEPALIVE_POOL};
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:in:1m;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def outer_conf(directory: Path, port: int, inner_port: int, cert: Path) -> str:
    """sidecar-out: plain HTTP on ``port``, TLS 1.3 (certificate checked) to sidecar-in."""
    return nginx_http_head(directory) + f"""\
    upstream inner {{
        server 127.0.0.1:{inner_port};
        keepalive {KEEPALIVE_POOL};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass https://inner;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_server_name off;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {cert};
            proxy_ssl_name {SERVER_NAME};
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"""


@dataclass
class SidecarFiles:
    """Where one pair's configuration lives (one directory per nginx)."""

    outer_dir: Path
    inner_dir: Path

    @property
    def outer_conf(self) -> Path:
        return self.outer_dir / "nginx.conf"

    @property
    def inner_conf(self) -> Path:
        return self.inner_dir / "nginx.conf"


def write_pair(base: Path, outer_port: int, inner_port: int, upstream_port: int,
               trusted: bytes | None = None) -> SidecarFiles:
    """Certificate, key and both nginx.conf files under ``base``.

    ``trusted`` (tests only): the PEM sidecar-out trusts instead of sidecar-in's
    own certificate, to show that it refuses a certificate it does not trust.
    """
    files = SidecarFiles(base / "sidecar-out", base / "sidecar-in")
    files.outer_dir.mkdir(parents=True)
    files.inner_dir.mkdir(parents=True)
    cert_pem, key_pem = self_signed()
    cert, key = base / "sidecar-cert.pem", base / "sidecar-key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    files.inner_conf.write_text(inner_conf(files.inner_dir, inner_port, upstream_port, cert, key))
    anchor = cert
    if trusted is not None:
        anchor = base / "sidecar-trusted.pem"
        anchor.write_bytes(trusted)
    files.outer_conf.write_text(outer_conf(files.outer_dir, outer_port, inner_port, anchor))
    return files
