"""A real HTTP/1.1 origin on 127.0.0.1 that records every request it gets.

Tests ask it two things: what reached it (so that "blocked requests never
reach the origin" is an observation, not an assumption) and for bytes of a
known shape (so that "allowed bodies pass unchanged" compares hashes).

Paths it serves:
    /bytes/N        N deterministic bytes (see `payload(N)`)
    /chunked/N      N deterministic bytes, chunked (no Content-Length), 4 KiB
                    a chunk, one chunk every 0.2 s: a download that stays open
    /echo           the request body back
    /alt-svc        a small body with `Alt-Svc: h3=":443"; ma=86400`
    /upgrade        `101 Switching Protocols` to whatever the request's
                    `Upgrade` names, then every byte back as it comes
                    (recorded in `relayed`): a raw connection after an upgrade
    anything else   `ok METHOD PATH`

It speaks TLS as well as plain HTTP on the same port (a connection that
starts with a TLS handshake byte gets a self-signed certificate), so that a
tunnel the proxy relays without reading still reaches it: what arrives
through such a relay is recorded like any other request.  Its certificate
names `origin.test` only, except for the server names in
`SHARED_CERTIFICATES`, which get one that names other sites as well, as a
CDN's shared certificate does.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


# SNI -> the names of the certificate the origin shows for it: a server that
# serves these sites too (what a browser may reuse a connection for).
SHARED_CERTIFICATES = {"edge.test": ("edge.test", "facebook.test", "*.facebook.test")}


def payload(size: int) -> bytes:
    """`size` bytes that are not all alike, so truncation and reordering show."""
    block = hashlib.sha256(b"accessgate").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@dataclass(frozen=True)
class Seen:
    """One request as the origin received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    body_sha256: str
    body_length: int

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def header_names(self) -> set[str]:
        return {k for k, _ in self.headers}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def setup(self) -> None:
        # A client whose first byte is a TLS handshake gets TLS; the first
        # byte may arrive alone, which is what some of the tests send.
        try:
            self.request.settimeout(10)
            first = self.request.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if first == b"\x16":
            # A failed handshake raises here and ends the connection (quietly: _Server.handle_error).
            self.request = self.server.tls().wrap_socket(self.request, server_side=True)
        super().setup()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline()
                if not line:  # the body never ended: no request to record
                    raise ConnectionResetError("the client went away in the middle of a chunked body")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        if self.path.startswith("/upgrade"):
            return self._upgrade()
        body = self._body()
        self.server.record(
            Seen(
                method=self.command,
                path=self.path,
                headers=tuple((k.lower(), v) for k, v in self.headers.items()),
                body_sha256=hashlib.sha256(body).hexdigest(),
                body_length=len(body),
            )
        )
        extra: dict[str, str] = {}
        if self.path.startswith("/chunked/"):
            return self._chunked(int(self.path.split("/")[2].split("?")[0]))
        if self.path.startswith("/bytes/"):
            out = payload(int(self.path.split("/")[2].split("?")[0]))
        elif self.path.startswith("/echo"):
            out = body
        elif self.path.startswith("/alt-svc"):
            out = b"alt-svc"
            extra["Alt-Svc"] = 'h3=":443"; ma=86400, h3-29=":443"'
        else:
            out = f"ok {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(out)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def _chunked(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data, sent = payload(size), 0
        try:
            while sent < size:
                chunk = data[sent : sent + 4096]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                self.server.record_sent(len(chunk))
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the proxy closed the download
        self.close_connection = True

    def _upgrade(self) -> None:
        self.server.record(
            Seen(self.command, self.path, tuple((k.lower(), v) for k, v in self.headers.items()),
                 hashlib.sha256(b"").hexdigest(), 0)
        )
        self.send_response(101)
        self.send_header("Upgrade", self.headers.get("Upgrade", "x"))
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        self.connection.settimeout(300)  # longer than any test keeps a relay open
        try:
            while True:
                data = self.rfile.read1(65536)  # bytes sent with the request head are buffered there
                if not data:
                    break
                self.server.record_relayed(data)
                self.wfile.write(data)
        except OSError:
            pass
        self.close_connection = True

    def __getattr__(self, name: str):
        # Every method, including made-up and lower-case ones, is recorded.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[Seen] = []
        self.relayed: list[tuple[float, bytes]] = []  # (monotonic time, bytes) after an upgrade
        self.sent = 0  # body bytes of /chunked/ downloads written so far
        self.lock = threading.Condition()
        self._tls: ssl.SSLContext | None = None

    def record(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)
            self.lock.notify_all()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError is one: a peer that gave up
            super().handle_error(request, client_address)

    def record_relayed(self, data: bytes) -> None:
        with self.lock:
            self.relayed.append((time.monotonic(), data))
            self.lock.notify_all()

    def record_sent(self, size: int) -> None:
        with self.lock:
            self.sent += size

    def tls(self) -> ssl.SSLContext:
        with self.lock:
            if self._tls is None:
                shared = {sni: _self_signed_context(names) for sni, names in SHARED_CERTIFICATES.items()}

                def by_name(sock, server_name, _context) -> None:
                    if server_name in shared:
                        sock.context = shared[server_name]

                self._tls = _self_signed_context()
                self._tls.sni_callback = by_name
            return self._tls


class Origin:
    """Start with `Origin()`, stop with `.stop()` (or use as a context manager)."""

    def __init__(self) -> None:
        self._server = _Server()
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def requests(self) -> list[Seen]:
        with self._server.lock:
            return list(self._server.seen)

    @property
    def relayed(self) -> list[tuple[float, bytes]]:
        """Bytes received after an /upgrade, with when they arrived (time.monotonic())."""
        with self._server.lock:
            return list(self._server.relayed)

    @property
    def sent(self) -> int:
        """Body bytes of /chunked/ downloads written to the proxy so far."""
        with self._server.lock:
            return self._server.sent

    def clear(self) -> None:
        with self._server.lock:
            self._server.seen.clear()
            self._server.relayed.clear()
            self._server.sent = 0

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Seen]:
        """The requests once at least `count` have arrived (or after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._server.lock:
            while len(self._server.seen) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._server.lock.wait(left)
            return list(self._server.seen)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "Origin":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _self_signed_context(names: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate (clients here do not verify it),
    for `names` (subject alternative names) or else CN=origin.test alone."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin.test")])
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
    )  # fmt: skip
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    cert = builder.sign(key, hashes.SHA256())
    with tempfile.TemporaryDirectory(prefix="origin-tls-") as tmp:
        pem = Path(tmp) / "origin.pem"
        pem.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
            + cert.public_bytes(serialization.Encoding.PEM)
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem)
    return context
